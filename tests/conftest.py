"""Shared fixtures and helpers: the golden files (numbers from the official PyTorch model, copied from shared/golden),
the command-line runs that many tests share, and one persistent XLA compilation cache for the whole test run.

The cache: every program the run compiles (in this process, in pytest-xdist's workers and in every
``train.py``/``eval.py`` subprocess, which all inherit the environment) is kept in one temporary directory, so that the
same tiny training step is compiled once per test run rather than once per process. Set ``JAX_COMPILATION_CACHE_DIR``
to keep one across runs.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:        # before jax is imported: jax reads these at import
    _CACHE = tempfile.mkdtemp(prefix="sresformer-test-xla-cache-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)   # by the process that made it (xdist's controller)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# The suite runs on the CPU (set JAX_PLATFORMS to test another backend); this also keeps an installed libtpu, which the
# TPU compile test uses in a subprocess, from being initialised (and locked) by the test process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# The suite's programs are small: XLA:CPU's backend optimisations and its newer fusion emitters cost more compile time
# than they save in run time (the fusion emitters off take a tiny model's jitted grad from about 3.5 s of compile to
# 2.4 s).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("XLA_FLAGS", FAST_COMPILE)

import functools  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden"
GOLDEN_FILES = ("imagenet_style_lif_t4.npz", "cifar_style_lif_t4.npz", "dvs_style_plif_t8.npz")
# Files whose float32 forward is stable (golden README): cifar_style is chaotic in float32.
FLOAT32_STABLE = ("imagenet_style_lif_t4.npz", "dvs_style_plif_t8.npz")


def load_golden(name: str) -> dict:
    """The golden npz as a dict: config (parsed), NHWC input, labels and the official tensors."""
    d = np.load(GOLDEN / name)
    x = d["x"]
    x = x.transpose(0, 2, 3, 1) if x.ndim == 4 else x.transpose(0, 1, 3, 4, 2)  # → NHWC / [B,T,H,W,C]
    out = {"config": json.loads(str(d["config"])), "x": x, "y": d["y"],
           "spike_rates": json.loads(str(d["spike_rates"]))}
    for k in d.files:
        if k not in out:
            out[k] = d[k]
    for prefix in ("init", "grad", "after_train"):
        out[prefix] = {k[len(prefix) + 1:]: d[k] for k in d.files if k.startswith(prefix + "/")}
    return out


@pytest.fixture
def x64():
    """Enables float64 for one test only."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def event_kernels():
    """Builds and loads the compiled CPU kernels; skips only when no C++ compiler exists to build them (their
    build and fallback are tested in test_kernels.py)."""
    from sresformer_jax.ops import kernels

    try:
        return kernels.load()
    except kernels.KernelBuildError as err:
        if "no C++ compiler" in str(err):
            pytest.skip(str(err))
        raise


# ----------------------------------------------------------------------------- train.py / eval.py as a user runs them
# The quickstart at test size (batch 16, a few steps); TINY also has one block per stage.
QUICKSTART = ["--config.batch_size=16", "--config.eval_batch_size=64", "--config.log_every_steps=2",
              "--config.checkpoint_every_steps=2", "--config.progress_bar=false", "--config.optim.epochs=2"]
TINY = ["--config.model.blocks=(1,1,1)", *QUICKSTART]
STEPS = 12                            # long enough to be interrupted between its first and last step
# The runs compared across process counts keep the quickstart's own depth (blocks 1/2/3): float32 training is chaotic
# after a few steps (one spike more or less in a DSSA head with a firing rate near 0 rescales its output), and at one
# block per stage the one- and two-process runs (equal to 1e-6 in loss over 8 steps) part at step 9. Exactness
# across device counts is proven in float64 (test_data_parallel); these runs show the same training to 1e-3.
LONG = [f"--config.total_steps={STEPS}", *QUICKSTART, "--config.log_every_steps=1", "--config.checkpoint_every_steps=1000"]


def cli_env(devices: int = 1, **extra) -> dict:
    """The environment of a command-line subprocess: CPU, ``devices`` host devices, the fast-compile flag."""
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}", **extra)


def run(args, devices=1, env=None, check=True, timeout=600):
    """``python *args`` from the checkout (train.py, eval.py, -m ...), to completion."""
    e = cli_env(devices)
    e.update(env or {})
    p = subprocess.run([sys.executable, *args], cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


def popen_train(args, env=None, **kw) -> subprocess.Popen:
    """``python train.py *args`` started in the background."""
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env or cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def final_params(workdir: Path) -> tuple[dict, int]:
    """Variables of the newest checkpoint in ``workdir`` (flat name → array), and its step."""
    from sresformer_jax import checkpoint
    step_dir = checkpoint.find_train_checkpoint(workdir, "latest")
    _, variables = checkpoint.load_variables(step_dir)
    flat = jax.tree_util.tree_flatten_with_path(variables)[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}, int(step_dir.name)


def assert_same_params(a_dir: Path, b_dir: Path) -> None:
    """The newest checkpoints of two workdirs are of the same step and bitwise equal."""
    a, sa = final_params(a_dir)
    b, sb = final_params(b_dir)
    assert sa == sb
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def checkpoint_steps(workdir: Path) -> list[int]:
    d = workdir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shared_run(tmp_path_factory, name: str, make) -> tuple[Path, list]:
    """The workdir ``name`` made once per test run by ``make(workdir) -> outputs`` (JSON-able), shared by every
    pytest-xdist worker: the first worker to ask makes it under a file lock, the others wait and read it."""
    import fcntl
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent                                   # the run's directory, above each worker's own
    wd, done = root / f"shared-{name}", root / f"shared-{name}.json"
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(wd, ignore_errors=True)           # what a failed attempt of another worker left
            wd.mkdir()
            done.write_text(json.dumps(make(wd)))
    return wd, json.loads(done.read_text())


@pytest.fixture(scope="session")
def straight(tmp_path_factory):
    """4 uninterrupted quickstart steps on one device (checkpoints at 2 and 4), shared read-only by every test that
    compares against it or starts from it; a test that changes a run copies it first. → (workdir, (stdout, stderr))"""
    def make(wd):
        p = run(["train.py", f"--workdir={wd}", "--config.total_steps=4", *TINY])
        return [p.stdout, p.stderr]
    return _shared_run(tmp_path_factory, "straight", make)


@pytest.fixture(scope="session")
def straight_long(tmp_path_factory):
    """12 uninterrupted steps (``LONG``): the reference of the runs that are interrupted and resumed."""
    def make(wd):
        run(["train.py", f"--workdir={wd}", *LONG])
        return []
    return _shared_run(tmp_path_factory, "straight_long", make)[0]


@pytest.fixture(scope="session")
def two_processes_long(tmp_path_factory):
    """The 12-step run of ``straight_long`` as two processes of two devices each, through jax.distributed.
    → (workdir, [(stdout, stderr) of each process])"""
    def make(wd):
        port = free_port()
        procs = [popen_train([f"--workdir={wd}", *LONG, "--distributed", f"--coordinator_address=127.0.0.1:{port}",
                              "--num_processes=2", f"--process_id={i}"], env=cli_env(2)) for i in range(2)]
        outs = [p.communicate(timeout=600) for p in procs]
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0, err[-6000:]
        return outs
    return _shared_run(tmp_path_factory, "two_processes_long", make)


# ----------------------------------------------------------------------------- the golden models, compiled once
# Exactness is checked on the results (float64 to 1e-8, integer spike counts), so these programs are compiled with
# cheap LLVM optimisation.
GOLDEN_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@functools.lru_cache(maxsize=None)
def golden_model(name: str, conv_impl: str = "auto"):
    """float64: a golden file, our model of its config with the official initial variables, and the two programs the
    golden, energy and deploy tests run on it, jitted once per file and lowering: ``train(params, state, x, y)`` →
    (loss, logits, grads, new state, spike counts), the same without the gradients ``forward``, and
    ``evaluate(variables, x)`` → (logits, spike counts)."""
    from sresformer_jax import interop
    from sresformer_jax.model import STATE_COLLECTIONS
    from sresformer_jax.neurons import SPIKE_COUNTS
    with jax.enable_x64(True):
        g = load_golden(name)
        model, variables = interop.from_official(g["config"], g["init"], dtype=jax.numpy.float64, conv_impl=conv_impl)

    def loss_fn(params, state, x, y):
        logits, new = model.apply({"params": params, **state}, x, train=True, mutable=[*STATE_COLLECTIONS, SPIKE_COUNTS])
        return optax.softmax_cross_entropy_with_integer_labels(logits.mean(0), y).mean(), (logits, new)

    def train(params, state, x, y):
        (loss, (logits, new)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x, y)
        counts = new.pop(SPIKE_COUNTS)
        return loss, logits, grads, new, counts

    def forward(params, state, x, y):
        loss, (logits, new) = loss_fn(params, state, x, y)
        counts = new.pop(SPIKE_COUNTS)
        return loss, logits, None, new, counts

    def evaluate(variables, x):
        logits, st = model.apply(variables, x, train=False, mutable=[SPIKE_COUNTS])
        return logits, st[SPIKE_COUNTS]

    jit = functools.partial(jax.jit, compiler_options=GOLDEN_COMPILE)
    return g, model, variables, {"train": jit(train), "forward": jit(forward), "evaluate": jit(evaluate)}


@functools.lru_cache(maxsize=None)
def golden_step(name: str, conv_impl: str = "auto", grads: bool = True) -> dict:
    """float64: the official training step of a golden file through our model (from the official initial state;
    without ``grads``, only its forward), then the evaluation from the state it leaves; host arrays."""
    from sresformer_jax.model import STATE_COLLECTIONS
    g, model, variables, programs = golden_model(name, conv_impl)
    with jax.enable_x64(True):
        x, y = jax.numpy.asarray(g["x"], jax.numpy.float64), jax.numpy.asarray(g["y"])
        step = programs["train" if grads else "forward"]
        loss, logits, grads, new, counts = step(variables["params"], {c: variables[c] for c in STATE_COLLECTIONS},
                                                x, y)
        eval_logits, eval_counts = programs["evaluate"]({"params": variables["params"], **new}, x)
        return jax.device_get({"loss": float(loss), "train_logits": logits, "grads": grads, "new_state": new,
                               "train_counts": counts, "eval_logits": eval_logits, "eval_counts": eval_counts})
