"""The official PyTorch SpikingResformer's training and evaluation step, timed the way ``bench.py`` times ours.

Run by ``bench.py`` with the interpreter that has torch and SpikingJelly (``--official-python``), in its own
process, with the official checkout on ``PYTHONPATH`` and the host-allocator environment the benchmark names:

    PYTHONPATH=/path/to/SpikingResformer python benchmarks/official_step.py '{"model": "spikingresformer_cifar", ...}'

It builds ``models.spikingresformer.<model>`` from the checkout, switches every SpikingJelly neuron to the
``torch`` backend (the official code hard-codes ``cupy``; same math; on CUDA the cupy backend is kept when CuPy
imports), and times AdamW + cross-entropy (label smoothing 0.1) on ``output.mean(0)`` with
``functional.reset_net`` after each step, and evaluation under ``torch.no_grad`` in ``eval()`` mode. ``amp``:
fp16 autocast with a GradScaler on CUDA (the official recipe), bf16 autocast on the CPU. Prints one line,
``BENCH_JSON:{...}``.
"""
import json
import statistics
import sys
import types

from timing import BENCH_JSON_PREFIX, peak_rss_bytes, timed     # benchmarks/timing.py (standard library only)


def _import_timm(allow_stub: bool) -> str:
    """The official model file imports timm's ``register_model``; stub it when timm cannot be imported."""
    try:
        import timm
        import timm.models.registry  # noqa: F401
        return "timm " + timm.__version__
    except Exception as e:  # noqa: BLE001 - timm missing or broken (e.g. a torchvision that does not match torch)
        if not allow_stub:
            raise
        for name in ("timm", "timm.models", "timm.models.registry"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules["timm.models.registry"].register_model = lambda f: f
        return f"stub register_model (timm import failed: {type(e).__name__}: {e})"


def _build(cfg: dict):
    from spikingjelly.activation_based import base as sj_base
    # The official neurons are built with backend='cupy', whose construction checks that CuPy imports: let that
    # check pass while building; every module's backend is set below.
    check = sj_base.check_backend_library
    sj_base.check_backend_library = lambda backend: None
    try:
        import models.spikingresformer as official
        return getattr(official, cfg["model"])(num_classes=cfg["num_classes"], img_size=cfg["img_size"], T=cfg["T"])
    finally:
        sj_base.check_backend_library = check


def main(cfg: dict) -> dict:
    timm_note = _import_timm(cfg.get("allow_timm_stub", True))
    import torch
    from spikingjelly.activation_based import functional

    model = _build(cfg)
    device = cfg.get("device", "cpu")
    backend = "torch"
    if device == "cuda":
        try:
            import cupy  # noqa: F401  (the official GPU runs use SpikingJelly's cupy neurons)
            backend = "cupy"
        except ImportError:
            pass
    switched = 0
    for m in model.modules():
        if hasattr(m, "backend"):
            m.backend = backend
            switched += 1
    model = model.to(device)
    torch.manual_seed(0)
    batch, size = cfg["batch"], cfg["img_size"]
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.arange(batch, device=device) % cfg["num_classes"]
    amp = bool(cfg.get("amp"))
    amp_dtype = torch.float16 if device == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=amp) if device == "cuda" else None
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def train():
        model.train()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=amp_dtype, enabled=amp):
            loss = crit(model(x).mean(0), y)
        if scaler is not None and amp:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        functional.reset_net(model)
        return float(loss)

    def evaluate():
        model.eval()
        with torch.no_grad(), torch.autocast(device_type=device, dtype=amp_dtype, enabled=amp):
            out = model(x)
        functional.reset_net(model)
        sync()
        return out

    rss_before = peak_rss_bytes()
    warm_train, train_times = timed(train, cfg["warmup"]), timed(train, cfg["steps"])
    warm_eval, eval_times = timed(evaluate, cfg["warmup"]), timed(evaluate, cfg["steps"])
    x = x[:1]                                              # batch-1 latency of the same evaluation
    timed(evaluate, 1)
    latency = statistics.median(timed(evaluate, 10))

    def summary(times, warm):
        med = statistics.median(times)
        return {"step_s_median": med, "step_s_all": times, "warmup_s": warm, "images_per_s": batch / med}

    return {"torch": torch.__version__, "num_threads": torch.get_num_threads(), "timm": timm_note,
            "neurons_switched_to_torch_backend": switched if backend == "torch" else 0, "device": device,
            "neuron_backend": backend, "amp": amp,
            "device_peak_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
            "num_params": sum(p.numel() for p in model.parameters()),
            "train": summary(train_times, warm_train), "eval": summary(eval_times, warm_eval),
            "batch1_latency_s": {"eval": latency},
            "peak_rss_bytes": peak_rss_bytes(), "rss_before_steps_bytes": rss_before}


if __name__ == "__main__":
    print(BENCH_JSON_PREFIX + json.dumps(main(json.loads(sys.argv[1]))), flush=True)
