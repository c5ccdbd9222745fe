"""Evaluation with the paper's energy report: accuracy, per-layer firing rates, SOPs, energy, MACs.

Every test image is counted exactly once: the last, shorter batch is run unpadded (padding rows would
add spikes that belong to no image).
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp

from ..energy import SOPCounter
from ..model import SpikingResformer, check_calibrated
from .losses import topk_correct
from ..ops.collectives import sum_over_devices
from .steps import EvalStep, global_batch, jit_eval, jit_eval_step, shardings


def evaluate(step: EvalStep, variables: dict, batches, mesh, counter: SOPCounter | None = None) -> dict:
    """Held-out loss, top-1 and top-5 over ``batches`` (masked padding rows excluded), by a jitted eval step
    (``steps.jit_eval_step``); with a ``counter``, ``step`` also returns the spike counts and they are accumulated."""
    replicated, data_sharding = shardings(mesh)
    sums = None
    for local in batches:
        if len(local["label"]) * jax.process_count() % mesh.size == 0:
            out = step.sharded(variables, global_batch(local, data_sharding))
        else:                                   # a shorter, unpadded last batch (single process)
            out = step.whole(variables, jax.device_put(local, replicated))
        if counter is not None:
            out, counts = out
            counter.update(jax.device_get(counts), int(out["count"]))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    n = max(float(sums["count"]), 1.0)
    return {**{k: float(v) / n for k, v in sums.items() if k != "count"}, "count": int(sums["count"])}


def evaluate_with_energy(model: SpikingResformer, variables: dict, data, mesh) -> dict:
    """Top-1/top-5/loss over the test set and the SOP/energy report (keys of ``energy.SOPCounter.report``)."""
    check_calibrated(variables)
    step = jit_eval_step(model, mesh, count_spikes=True)
    counter = SOPCounter(model)
    metrics = evaluate(step, variables, data.eval_batches(pad=jax.process_count() > 1), mesh, counter)
    report = counter.report(img_size=tuple(data.input_shape[-3:-1]))
    return {"top1": metrics["top1"], "top5": metrics["top5"], "loss": metrics["loss"],
            "num_images": metrics["count"], **report}


def evaluate_deploy_form(fn, model: SpikingResformer, variables: dict, data, mesh) -> dict:
    """The deploy form ``fn`` (``deploy.fold``) on the test set: top-1/top-5/loss, its own spikes' SOP/energy report,
    and ``predictions_differ``, the fraction of images whose prediction differs from the training form's."""
    from ..neurons import SPIKE_COUNTS

    def step(both, batch, axis_name):
        variables, weights = both
        logits, counts = fn.apply(weights, batch["image"], count_spikes=True)
        reference = model.apply(variables, batch["image"], train=False)
        mask, labels = batch["mask"], batch["label"]
        z = logits.astype(jnp.float32).mean(0)
        loss = jnp.sum(-jnp.take_along_axis(jax.nn.log_softmax(z), labels[:, None], 1)[:, 0] * mask)
        correct = topk_correct(logits, labels, (1, 5))
        differ = jnp.argmax(z, -1) != jnp.argmax(reference.astype(jnp.float32).mean(0), -1)
        return sum_over_devices(({"loss": loss, "top1": jnp.sum(correct["top1"] * mask),
                                  "top5": jnp.sum(correct["top5"] * mask), "predictions_differ": jnp.sum(differ * mask),
                                  "count": jnp.sum(mask)}, counts[SPIKE_COUNTS]), axis_name)

    counter = SOPCounter(model)
    metrics = evaluate(jit_eval(step, mesh), (variables, fn.weights), data.eval_batches(pad=jax.process_count() > 1),
                       mesh, counter)
    report = counter.report(img_size=tuple(data.input_shape[-3:-1]))
    return {"top1": metrics["top1"], "top5": metrics["top5"], "loss": metrics["loss"],
            "predictions_differ": metrics["predictions_differ"], "num_images": metrics["count"], **report}


def plot_firing_rates(rates: dict[str, float], out: str | Path, title: str = "") -> Path:
    """Bar chart of firing rate per spiking layer (official names) → PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, values = list(rates), [100 * v for v in rates.values()]
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(names)), 4))
    ax.bar(range(len(names)), values, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_ylabel("firing rate (%)")
    ax.set_title(title or "firing rate per spiking layer")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def write_report(report: dict, workdir: str | Path, title: str = "") -> tuple[Path, Path]:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "eval.json"
    path.write_text(json.dumps(report, indent=1, default=float))
    png = plot_firing_rates(report["firing_rates"], workdir / "firing_rates.png", title)
    return path, png


def evaluate_checkpoint(workdir: str | Path, checkpoint_path: str | Path | None = None, config=None,
                        which: str = "best", conv_impl: str | None = None, deploy: bool = False) -> dict:
    """Evaluates a training run's ``best`` (or ``latest``) checkpoint, or the model checkpoint at
    ``checkpoint_path``, on the held-out set of its training config (or ``config``); writes
    ``workdir/eval.json`` and ``workdir/firing_rates.png`` and returns the report (``evaluate_with_energy``'s
    keys plus ``checkpoint``, ``conv_impl``, ``report_path`` and ``plot_path``). ``conv_impl``: the lowering
    (default the config's, else "auto"). ``deploy``: also the folded deploy form's report under ``"deploy"``
    (``evaluate_deploy_form``). Raises FileNotFoundError / ValueError with what to do."""
    import ml_collections

    from .. import checkpoint
    from ..data import get_dataset
    from ..model import build_model
    from .config import check_data_fits
    from .steps import make_mesh

    workdir = Path(workdir).absolute()
    for attempt in range(3):     # a run that is training may delete an old checkpoint while it is being read
        step_dir = None if checkpoint_path else checkpoint.find_train_checkpoint(workdir, which)
        if not checkpoint_path and step_dir is None:
            raise FileNotFoundError(f"no checkpoint in {workdir} (expected {workdir}/best/<step> or "
                                    f"{workdir}/checkpoints/<step>); train first (python train.py "
                                    f"--workdir={workdir}) or pass --checkpoint=PATH with --config=...")
        try:
            model_cfg, variables = checkpoint.load_variables(step_dir or checkpoint_path)
            break
        except Exception:  # noqa: BLE001 - orbax/tensorstore errors of a directory removed mid-read
            if checkpoint_path or step_dir.exists() or attempt == 2:
                raise
    if config is None:
        stored = checkpoint.load_train_meta(step_dir).get("config") if step_dir else None
        if stored is None:
            raise ValueError("this checkpoint stores no training config; pass --config=configs/<dataset>.py")
        config = ml_collections.ConfigDict(stored)
    if conv_impl is None:
        conv_impl = config.model.get("conv_impl", "auto") if "model" in config else "auto"
    model = build_model(model_cfg, config.get("precision", "float32"), conv_impl=conv_impl)
    data = get_dataset(config)
    check_data_fits(data, config)
    report = evaluate_with_energy(model, variables, data, make_mesh())
    if deploy:
        from .. import deploy as deploy_form
        report["deploy"] = evaluate_deploy_form(deploy_form.fold(model, variables), model, variables, data,
                                                make_mesh())
    report["checkpoint"] = str(step_dir or checkpoint_path)
    report["conv_impl"] = model.conv_impl
    path, png = write_report(report, workdir, title=f"{config.get('model_name', '')} firing rates")
    return {**report, "report_path": str(path), "plot_path": str(png)}
