"""Data parallelism that divides the work: on a multi-device CPU mesh each device computes only its shard.

One subprocess with 4 host devices compiles the training loop's own steps (``training.aot.division_of_work``:
``lower_steps`` on one device and on four at the same per-device batch) for every lowering and checks the compiled
programs: the per-device FLOPs do not grow with the device count, no collective moves activations, and the
all-reduces move the gradients and the channel-sized statistics only. The same process runs the real train step on
both meshes in float64 and checks that four devices compute what one computes over the same global batch: global
BatchNorm and firing-rate statistics exactly, and BatchNorm groups within each device. Two processes of two devices
each (``jax.distributed``) compile the same steps and are checked the same way.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import FAST_COMPILE, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900),   # subprocesses that compile a dozen programs
              pytest.mark.xdist_group("data_parallel")]      # one worker computes the module fixture

LOWERINGS = ("xla", "slices", "events")
CASES = (*LOWERINGS, "xla+chunk4")     # and the attention map a chunk of rows at a time (attention_chunk)

TINY = textwrap.dedent(r"""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from sresformer_jax.configs import quickstart

    def tiny(case, bn_group_size=None):
        # case: a lowering, with "+chunk4" the attention map 4 of its 16 rows at a time (xla+chunk4)
        conv_impl, _, chunk = case.partition("+chunk")
        c = quickstart.get_config()
        c.model.update(blocks=(1, 1, 1), planes=(8, 16, 32), num_heads=(1, 2, 4), group_size=8, img_size=16, T=2,
                       conv_impl=conv_impl, bn_group_size=bn_group_size, attention_chunk=int(chunk) if chunk else None)
        c.dataset.img_size = 16
        return c
""")

FOUR_DEVICES = TINY + textwrap.dedent(r"""
    jax.config.update("jax_enable_x64", True)
    from sresformer_jax.model import build_model
    from sresformer_jax.training.aot import division_of_work, input_shape
    from sresformer_jax.training.optim import make_optimizer
    from sresformer_jax.training.state import create_train_state
    from sresformer_jax.training.steps import global_batch, jit_train_step, make_mesh, shardings

    assert jax.device_count() == 4
    out = {"census": {}, "values": {}}
    for impl in sys.argv[1].split(","):                                  # the compiled programs
        out["census"][impl] = division_of_work(tiny(impl), jax.devices(), batch_per_device=4)

    meshes = {1: make_mesh(jax.devices()[:1]), 4: make_mesh()}
    for impl, group in [tuple(s.split(":")) for s in sys.argv[2].split(",")]:   # the values, float64
        group = int(group) or None
        config = tiny(impl, group)
        model = build_model(config.model.to_dict()).clone(param_dtype=jnp.float64)
        tx, schedule = make_optimizer(config.optim, 10)
        shape = input_shape(model)
        rng = np.random.default_rng(0)
        batches = [{"image": rng.normal(size=(8, *shape)) * 2, "label": rng.integers(0, 10, 8).astype(np.int32)}
                   for _ in range(2)]
        results = {}
        start = jax.device_get(jax.jit(lambda r: create_train_state(model, tx, r, shape, param_dtype=jnp.float64))(
            jax.random.PRNGKey(0)))               # one initial state for both meshes, on the host (the step donates)
        for n, mesh in meshes.items():
            replicated, data = shardings(mesh)
            state = jax.device_put(start, replicated)
            step = jit_train_step(model, tx, schedule, config, mesh)
            losses = []
            for b in batches:
                state, metrics = step(state, global_batch(b, data))
                losses.append(float(metrics["loss"]))
            results[n] = (jax.device_get(state), losses)
        (s1, l1), (s4, l4) = results[1], results[4]
        worst = {}
        for k in ("params", "batch_stats", "firing_rates", "opt_state"):
            worst[k] = max(float(np.abs(np.asarray(x) - np.asarray(y)).max() / (np.abs(np.asarray(x)).max() + 1e-30))
                           for x, y in zip(jax.tree.leaves(getattr(s1, k)), jax.tree.leaves(getattr(s4, k))))
        out["values"][f"{impl}:{group or 0}"] = {"worst": worst, "losses": [l1, l4]}
    print("RESULT" + json.dumps(out))
""")

TWO_PROCESSES = TINY + textwrap.dedent(r"""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    from sresformer_jax.training import lower_steps
    from sresformer_jax.training.aot import census, collectives
    from sresformer_jax.training.steps import make_mesh

    assert jax.device_count() == 4 and jax.local_device_count() == 2
    out = {}
    train, evaluate = lower_steps(tiny(sys.argv[3]), make_mesh(), 4, count_spikes=True)
    for step, lowered in (("train", train), ("eval", evaluate)):
        compiled = lowered.compile()
        out[step] = {"flops_all": float(compiled.cost_analysis()["flops"]), "census": census(compiled),
                     "other_collectives": [c.op for c in collectives(compiled) if c.op != "all-reduce"]}
    print("RESULT" + json.dumps(out))
""")


def _result(stdout: str) -> dict:
    return json.loads(stdout.split("RESULT", 1)[1])


@pytest.fixture(scope="module")
def four_devices():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count=4 {FAST_COMPILE}")
    p = subprocess.run([sys.executable, "-c", FOUR_DEVICES, ",".join(CASES), "xla:0,xla:2,events:0,xla+chunk4:0"],
                       env=env, capture_output=True, text=True, timeout=1200, check=False)
    assert p.returncode == 0, p.stderr[-6000:]
    return _result(p.stdout)


@pytest.mark.parametrize("impl", CASES)
@pytest.mark.parametrize("step", ["train", "eval"])
def test_each_device_computes_only_its_shard(four_devices, impl, step):
    r = four_devices["census"][impl][step]
    assert r["flops_ratio"] <= 1.05, (r["flops_all"], r["flops_one"])
    assert not r["other_collectives"], f"collectives that move activations: {r['other_collectives']}"


@pytest.mark.parametrize("impl", CASES)
def test_all_reduces_move_gradients_and_statistics_only(four_devices, impl):
    r = four_devices["census"][impl]
    sizes = r["bytes"]
    # gradients (parameter-sized) + BatchNorm's μ, σ² forward and its four channel sums backward + the rates
    budget = sizes["params"] + 3 * sizes["batch_stats"] + 2 * sizes["firing_rates"] + 64
    moved = r["train"]["census"]["all-reduce"]["bytes"]
    assert sizes["params"] <= moved <= 1.1 * budget, (moved, sizes)
    assert r["eval"]["census"]["all-reduce"]["bytes"] <= sizes["spike_counts"] + 64   # spike counts and 4 sums


@pytest.mark.parametrize("case", ["xla:0", "xla:2", "events:0", "xla+chunk4:0"],
                         ids=["global-bn", "bn-groups", "events", "map-chunks"])
def test_four_devices_compute_what_one_computes(four_devices, case):
    """float64, two steps over the same global batch of 8: parameters, optimizer state, BatchNorm statistics and
    firing rates equal (global statistics through the collectives; with groups, each group within a device)."""
    r = four_devices["values"][case]
    l1, l4 = r["losses"]
    assert max(abs(a - b) for a, b in zip(l1, l4)) < 1e-10, r["losses"]
    assert all(v < 1e-9 for v in r["worst"].values()), r["worst"]


def test_two_processes_divide_the_work_as_one_process_does(four_devices):
    """2 processes × 2 devices through jax.distributed: each device's program is the one-device program's size and
    its collectives are the same all-reduces (CPU's default lowering, the compiled kernels on local shards)."""
    impl = "events"
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count=2 {FAST_COMPILE}")
    procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESSES, f"127.0.0.1:{port}", str(i), impl], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-6000:]
    one = four_devices["census"][impl]
    for stdout, _ in outs:
        r = _result(stdout)
        for step in ("train", "eval"):
            assert r[step]["flops_all"] <= 1.05 * one[step]["flops_one"], (step, r[step], one[step])
            assert not r[step]["other_collectives"], r[step]["other_collectives"]
        assert r["train"]["census"]["all-reduce"]["bytes"] == one["train"]["census"]["all-reduce"]["bytes"]
        assert r["eval"]["census"]["all-reduce"]["bytes"] <= one["bytes"]["spike_counts"] + 64
