"""Data parallelism that divides the work: on a 4-device CPU mesh each device computes only its shard.

One subprocess with 4 host devices lowers the training loop's own steps (``training.lower_steps``) on one device
and on four at the same per-device batch, for every lowering, and checks the compiled programs: the per-device
FLOPs do not grow with the device count, no collective moves activations, and the all-reduces move the gradients
and the channel-sized statistics only. The same process runs the real train step on both meshes in float64 and
checks that four devices compute what one computes over the same global batch: global BatchNorm and firing-rate
statistics exactly, and BatchNorm groups within each device.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow          # one 4-device subprocess that compiles 16 programs

LOWERINGS = ("xla", "slices", "events")

SCRIPT = textwrap.dedent(r"""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    jax.config.update("jax_enable_x64", True)
    from sresformer_jax.configs import quickstart
    from sresformer_jax.training import lower_steps
    from sresformer_jax.training.aot import census, input_shape
    from sresformer_jax.training.state import create_train_state
    from sresformer_jax.training.steps import global_batch, jit_train_step, make_mesh, shardings
    from sresformer_jax.model import build_model

    assert jax.device_count() == 4
    meshes = {1: make_mesh(jax.devices()[:1]), 4: make_mesh()}

    def tiny(conv_impl, bn_group_size=None):
        c = quickstart.get_config()
        c.model.update(blocks=(1, 1, 1), planes=(8, 16, 32), num_heads=(1, 2, 4), group_size=8, img_size=16, T=2,
                       conv_impl=conv_impl, bn_group_size=bn_group_size)
        c.dataset.img_size = 16
        return c

    def nbytes(tree):
        return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)))

    import time
    t0 = time.time()
    out = {"census": {}, "values": {}, "seconds": {}}
    for impl in sys.argv[1].split(","):                                  # the compiled programs
        for n, mesh in meshes.items():
            train, evaluate = lower_steps(tiny(impl), mesh, batch_per_device=4, count_spikes=True)
            ct, ce = train.compile(), evaluate.compile()
            state = jax.tree.map(lambda a: a._aval, train.args_info[0][0])
            sizes = {k: nbytes(getattr(state, k)) for k in ("params", "batch_stats", "firing_rates")}
            model = build_model(tiny(impl).model.to_dict())
            counts = jax.eval_shape(lambda v, x: model.apply(v, x, mutable=["spike_counts"])[1], state.variables(),
                                    jax.ShapeDtypeStruct((4, *input_shape(model)), jnp.float32))
            sizes["spike_counts"] = nbytes(counts)
            out["census"][f"{impl}/{n}"] = {
                "train_flops": ct.cost_analysis()["flops"], "eval_flops": ce.cost_analysis()["flops"],
                "train": census(ct), "eval": census(ce), "sizes": sizes}
            out["seconds"][f"{impl}/{n}"] = time.time() - t0
    for impl, group in [tuple(s.split(":")) for s in sys.argv[2].split(",")]:   # the values, float64
        group = int(group) or None
        config = tiny(impl, group)
        model = build_model(config.model.to_dict(), conv_impl=impl).clone(param_dtype=jnp.float64)
        from sresformer_jax.training.optim import make_optimizer
        tx, schedule = make_optimizer(config.optim, 10)
        shape = input_shape(model)
        rng = np.random.default_rng(0)
        batches = [{"image": rng.normal(size=(8, *shape)) * 2, "label": rng.integers(0, 10, 8).astype(np.int32)}
                   for _ in range(2)]
        results = {}
        for n, mesh in meshes.items():
            replicated, data = shardings(mesh)
            state = jax.jit(lambda r: create_train_state(model, tx, r, shape, param_dtype=jnp.float64),
                            out_shardings=replicated)(jax.random.PRNGKey(0))
            step = jit_train_step(model, tx, schedule, config, mesh)
            losses = []
            for b in batches:
                state, metrics = step(state, global_batch(b, data))
                losses.append(float(metrics["loss"]))
            results[n] = (jax.device_get(state), losses)
        (s1, l1), (s4, l4) = results[1], results[4]
        worst = {}
        for k in ("params", "batch_stats", "firing_rates", "opt_state"):
            a, b = jax.tree.leaves(getattr(s1, k)), jax.tree.leaves(getattr(s4, k))
            worst[k] = max(float(np.abs(np.asarray(x) - np.asarray(y)).max() / (np.abs(np.asarray(x)).max() + 1e-30))
                           for x, y in zip(a, b))
        out["values"][f"{impl}:{group or 0}"] = {"worst": worst, "losses": [l1, l4]}
        out["seconds"][f"{impl}:{group or 0}"] = time.time() - t0
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def four_devices():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    p = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(LOWERINGS), "xla:0,xla:2,events:0"], env=env,
                       capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-6000:]
    return json.loads(p.stdout.split("RESULT", 1)[1])


@pytest.mark.parametrize("impl", LOWERINGS)
@pytest.mark.parametrize("step", ["train", "eval"])
def test_each_device_computes_only_its_shard(four_devices, impl, step):
    one, four = four_devices["census"][f"{impl}/1"], four_devices["census"][f"{impl}/4"]
    assert four[f"{step}_flops"] <= 1.05 * one[f"{step}_flops"], (four[f"{step}_flops"], one[f"{step}_flops"])
    moved = {op: c for op, c in four[step].items() if op != "all-reduce"}
    assert not moved, f"collectives that move activations: {moved}"


@pytest.mark.parametrize("impl", LOWERINGS)
def test_all_reduces_move_gradients_and_statistics_only(four_devices, impl):
    four = four_devices["census"][f"{impl}/4"]
    sizes = four["sizes"]
    # gradients (parameter-sized) + BatchNorm's μ, σ² forward and its four channel sums backward + the rates
    budget = sizes["params"] + 3 * sizes["batch_stats"] + 2 * sizes["firing_rates"] + 64
    moved = four["train"]["all-reduce"]["bytes"]
    assert sizes["params"] <= moved <= 1.1 * budget, (moved, sizes)
    assert four["eval"]["all-reduce"]["bytes"] <= sizes["spike_counts"] + 64   # the spike counts and four sums


@pytest.mark.parametrize("case", ["xla:0", "xla:2", "events:0"], ids=["global-bn", "bn-groups", "events"])
def test_four_devices_compute_what_one_computes(four_devices, case):
    """float64, two steps over the same global batch of 8: parameters, optimizer state, BatchNorm statistics and
    firing rates equal (global statistics through the collectives; with groups, each group within a device)."""
    r = four_devices["values"][case]
    np_l1, np_l4 = r["losses"]
    assert max(abs(a - b) for a, b in zip(np_l1, np_l4)) < 1e-10, r["losses"]
    assert all(v < 1e-9 for v in r["worst"].values()), r["worst"]
