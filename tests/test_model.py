"""Model structure, variants, interop and input checks."""
from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sresformer_jax import interop
from sresformer_jax.model import (VARIANTS, FiringRatesNotSetError, SpikingResformer, calibrate,
                                  check_calibrated, config_for, count_params, create_model, init_variables)

from conftest import GOLDEN, load_golden

MANIFEST = json.loads((GOLDEN / "official_state_dict_manifest.json").read_text())
TINY = load_golden("imagenet_style_lif_t4.npz")["config"]  # planes 16/32/64, 64×64 ImageNet stem


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_names_shapes_and_counts_equal_official(name):
    entry = MANIFEST[name]
    model = create_model(name, **entry["constructor_kwargs"])
    table = interop.name_table(model)
    official = {k: tuple(v) for k, v in entry["state_dict"].items() if not k.endswith("num_batches_tracked")}
    assert set(table) == set(official)
    for k, (_, shape) in table.items():
        assert shape == official[k], k
    params = {k for k, (path, _) in table.items() if path[0] == "params"}
    assert params == set(entry["params"])
    n = sum(int(np.prod(official[k])) for k in params)
    assert n == entry["num_params"]
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(
        (1, model.T, 64, 64, 3) if model.dvs else (1, 64, 64, 3)), train=False))
    assert count_params(abstract["params"]) == entry["num_params"]


def test_paper_parameter_counts():
    # The paper's Ti 11.14 M and M 35.52 M exclude BN γ/β; all parameters: 11.18 M / 35.60 M.
    for name, paper in (("spikingresformer_ti", 11.14e6), ("spikingresformer_m", 35.52e6)):
        model = create_model(name)
        params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)),
                                                   train=False))["params"]
        assert round(count_params(params, include_bn=False) / 1e4) == round(paper / 1e4)


def test_interop_round_trip_exact():
    g = load_golden("dvs_style_plif_t8.npz")
    model, variables = interop.from_official(g["config"], g["init"])
    back = interop.to_official(variables)
    assert set(back) == set(g["init"])
    for k, v in g["init"].items():
        np.testing.assert_array_equal(back[k], v.astype(back[k].dtype), err_msg=k)
    # a subset of collections, e.g. gradients, maps to official names too
    grads_only = interop.to_official({"params": variables["params"]})
    assert set(grads_only) == set(MANIFEST["spikingresformer_dvsg"]["params"]) or all(
        k in g["init"] for k in grads_only)
    assert all(not k.endswith(("running_mean", "firing_rate_x")) for k in grads_only)


def test_interop_lists_bad_keys():
    g = load_golden("cifar_style_lif_t4.npz")
    sd = dict(g["init"])
    del sd["layers.0.0.W.weight"]
    sd["layers.9.extra"] = np.zeros(3)
    sd["classifier.weight"] = np.zeros((7, 64))
    with pytest.raises(ValueError) as e:
        interop.from_official(g["config"], sd)
    msg = str(e.value)
    assert "layers.0.0.W.weight" in msg and "layers.9.extra" in msg and "classifier.weight" in msg
    assert "missing" in msg and "unexpected" in msg and "mis-shaped" in msg


def test_float64_requires_x64():
    g = load_golden("cifar_style_lif_t4.npz")
    with pytest.raises(ValueError, match="jax_enable_x64"):
        interop.from_official(g["config"], g["init"], dtype=jnp.float64)


@pytest.fixture(scope="module")
def tiny():
    model = SpikingResformer.from_config(TINY)
    variables = init_variables(model, jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 64, 64, 3))
    return model, variables, x


@pytest.fixture(scope="module")
def calibrated(tiny):
    model, variables, x = tiny
    return calibrate(model, variables, x)


@pytest.mark.xdist_group("model_tiny")                # one worker builds the tiny fixtures
def test_output_shape_and_uncalibrated_eval_is_refused(tiny, calibrated):
    model, variables, x = tiny
    with pytest.raises(FiringRatesNotSetError, match="calibrate"):
        model.apply(variables, x, train=False)
    with pytest.raises(FiringRatesNotSetError):
        check_calibrated(variables)
    check_calibrated(calibrated)
    assert float(calibrated["firing_rates"]["stage1_dssa1"]["firing_rate_x"][0]) > 0
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(calibrated, x)
    chex.assert_shape(logits, (model.T, 2, model.num_classes))
    assert jnp.all(jnp.isfinite(logits))


@pytest.mark.slow
@pytest.mark.xdist_group("model_tiny")                # one worker builds the tiny fixtures
def test_other_resolution_without_rebuilding(tiny, calibrated):
    model, _, _ = tiny
    big = jnp.zeros((1, 128, 128, 3))  # N' grows from 4 to 16 in every stage
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(calibrated, big)
    chex.assert_shape(out, (model.T, 1, model.num_classes))
    # L at 288: 72/36/18 feature maps, N' = 324 in every stage
    L = create_model("spikingresformer_l", img_size=288)
    assert L.stage_sizes(288) == [(72, 72), (36, 36), (18, 18)]


@pytest.mark.xdist_group("model_tiny")                # one worker builds the tiny fixtures
def test_bad_input_is_a_clear_error(tiny):
    model, variables, x = tiny
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        model.apply(variables, x[0], train=False)
    with pytest.raises(ValueError, match="5-D input is event frames: build the model with dvs=True"):
        model.apply(variables, x[:, None], train=False)
    with pytest.raises(ValueError, match="input channels"):
        model.apply(variables, jnp.zeros((2, 3, 64, 64)), train=False)
    with pytest.raises(ValueError, match="patch size"):
        model.apply(variables, jnp.zeros((2, 40, 40, 3)), train=False)
    dvs = SpikingResformer.from_config(dict(TINY, prologue="conv3x3", img_size=32, dvs=True))
    with pytest.raises(ValueError, match="time axis"):
        dvs.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
    with pytest.raises(ValueError, match=f"built for T = {dvs.T} time steps.*has {dvs.T + 1}"):
        dvs.init(jax.random.PRNGKey(0), jnp.zeros((1, dvs.T + 1, 32, 32, 3)), train=False)


@pytest.mark.parametrize("field,value,match", [
    ("num_heads", [1, 3, 4], "num_heads 3 does not divide planes 32"),
    ("group_size", 24, "group_size 24 does not divide"),
    ("T", 0, "T must be >= 1"),
    ("img_size", 40, "patch size"),
    ("activation", "IF", "activation"),
    ("bogus", 1, "unknown model config keys"),
])
def test_bad_config_names_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        SpikingResformer.from_config(dict(TINY, **{field: value}))


def test_config_for_and_registry():
    cfg = config_for("spikingresformer_cifar", num_classes=10, img_size=32)
    assert cfg["prologue"] == "conv3x3" and cfg["num_classes"] == 10
    assert SpikingResformer.from_config(cfg).config() == dict(cfg, dvs=False)
    with pytest.raises(ValueError, match="unknown variant"):
        config_for("spikingresformer_xl")


@pytest.mark.slow
def test_bfloat16_compute_with_float32_params():
    cfg = dict(TINY, planes=[8, 16, 32], num_heads=[1, 2, 4], group_size=8, img_size=32)
    model = SpikingResformer.from_config(cfg, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    variables = init_variables(model, jax.random.PRNGKey(1), x)
    assert jax.tree.leaves(variables["params"])[0].dtype == jnp.float32

    def loss(p):
        out, _ = model.apply({**variables, "params": p}, x, train=True, mutable=["batch_stats", "firing_rates"])
        return jnp.mean(out.astype(jnp.float32) ** 2), out

    (value, out), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    assert out.dtype == jnp.bfloat16 and bool(jnp.isfinite(value))
    assert all(v.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(g))


@pytest.mark.slow
def test_bfloat16_training_step_of_the_real_cifar_model_runs():
    """All of ``spikingresformer_cifar``'s bf16 × bf16 → f32 products (ops.dot) are ones the backend runs:
    XLA:CPU rejects some dot layouts for that type pair at run time ("Unsupported element type for
    DotThunk"), so the real widths and head counts are exercised, forward and backward."""
    model = create_model("spikingresformer_cifar", dtype=jnp.bfloat16, num_classes=10, img_size=32)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    variables = init_variables(model, jax.random.PRNGKey(1), x)

    def loss(p):
        out, _ = model.apply({**variables, "params": p}, x, train=True, mutable=["batch_stats", "firing_rates"])
        return jnp.mean(out.astype(jnp.float32) ** 2)

    value, g = jax.jit(jax.value_and_grad(loss))(variables["params"])
    assert bool(jnp.isfinite(value)) and all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(g))


@pytest.mark.slow
@pytest.mark.parametrize("conv_impl", ["xla", "auto"])
def test_remat_policies_give_the_same_loss_gradients_and_statistics(conv_impl):
    """Every remat policy (jax.checkpoint per DSSA/GWFFN block, ``model.REMAT_POLICIES``) recomputes what it
    does not keep; loss, gradients and statistics are unchanged."""
    import optax
    from sresformer_jax.model import SpikingResformer
    cfg = dict(blocks=(1, 1, 1), planes=(8, 16, 32), num_heads=(1, 2, 4), patch_sizes=(4, 2, 1), img_size=16,
               T=2, in_channels=3, num_classes=5, prologue="conv3x3", group_size=8, activation="LIF", dvs=False)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
    y = jnp.arange(4) % 5
    out = []
    v = init_variables(SpikingResformer.from_config(cfg, conv_impl=conv_impl), jax.random.PRNGKey(0), x)
    for remat in ("none", "block", "convs"):                   # the same variables: remat changes no parameter
        model = SpikingResformer.from_config(cfg, remat=remat, conv_impl=conv_impl)

        def loss(p, v=v, model=model):
            logits, st = model.apply({**v, "params": p}, x, train=True, mutable=["batch_stats", "firing_rates"])
            return optax.softmax_cross_entropy_with_integer_labels(logits.mean(0), y).mean(), st

        (l, st), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(v["params"])
        out.append((l, g, st))
    (l0, g0, s0) = out[0]
    for l1, g1, s1 in out[1:]:
        np.testing.assert_allclose(l0, l1, rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), (g0, s0), (g1, s1))
    assert float(optax.global_norm(g0)) > 0
