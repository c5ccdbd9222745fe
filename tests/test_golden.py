"""Golden parity: the official PyTorch SpikingResformer (float64) vs this implementation.

Each golden file holds a small real SpikingResformer's initial state dict, an input batch, and what the
official code computed: training-mode logits and loss, every gradient, the buffers after that forward
(BN running stats, DSSA firing-rate EMAs) and evaluation-mode logits.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sresformer_jax import interop
from sresformer_jax.model import STATE_COLLECTIONS

from conftest import FLOAT32_STABLE, GOLDEN_FILES, golden_step, load_golden

pytestmark = pytest.mark.xdist_group("golden")   # one worker compiles the golden programs (conftest.golden_model)


def run_official_step(g: dict, dtype, with_grad: bool = True, conv_impl: str = "auto") -> dict:
    """Training-mode forward + CE loss on T-averaged logits (+ gradients), then an eval forward."""
    model, variables = interop.from_official(g["config"], g["init"], dtype=dtype, conv_impl=conv_impl)
    params = variables["params"]
    state = {c: variables[c] for c in STATE_COLLECTIONS}
    x, y = jnp.asarray(g["x"], dtype), jnp.asarray(g["y"])

    def loss_fn(p):
        logits, new_state = model.apply({"params": p, **state}, x, train=True,
                                        mutable=list(STATE_COLLECTIONS))
        loss = optax.softmax_cross_entropy_with_integer_labels(logits.mean(0), y).mean()
        return loss, (logits, new_state)

    if with_grad:
        (loss, (logits, new_state)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    else:
        (loss, (logits, new_state)), grads = jax.jit(loss_fn)(params), params
    eval_logits = jax.jit(functools.partial(model.apply, train=False))({"params": params, **new_state}, x)
    return {"loss": float(loss), "train_logits": np.asarray(logits), "eval_logits": np.asarray(eval_logits),
            "grad": interop.to_official({"params": grads}),
            "after_train": interop.to_official(new_state, num_batches_tracked=1)}


@pytest.fixture(scope="module", params=GOLDEN_FILES)
def result64(request):
    """float64: the official training step of each golden file, and the evaluation after it (the programs are
    compiled once per file for the golden, energy and deploy tests: ``conftest.golden_step``)."""
    name = request.param
    r = golden_step(name)
    return load_golden(name), {**r, "grad": interop.to_official({"params": r["grads"]}),
                               "after_train": interop.to_official(r["new_state"], num_batches_tracked=1)}


def test_train_logits_and_loss_float64(result64):
    g, r = result64
    np.testing.assert_allclose(r["train_logits"], g["train_logits"], rtol=0, atol=1e-8)
    assert abs(r["loss"] - float(g["loss"])) <= 1e-8


def test_every_gradient_float64(result64):
    g, r = result64
    assert set(r["grad"]) == set(g["grad"]), "gradient names differ from the official parameters"
    for name, ref in g["grad"].items():
        scale = np.abs(ref).max()
        err = np.abs(r["grad"][name] - ref).max()
        assert err <= 1e-6 * scale, f"{name}: max error {err:.3g} vs largest magnitude {scale:.3g}"


def test_buffers_after_train_step_float64(result64):
    g, r = result64
    assert set(r["after_train"]) == set(g["after_train"])
    for name, ref in g["after_train"].items():
        np.testing.assert_allclose(r["after_train"][name], ref, rtol=0, atol=1e-8, err_msg=name)


def test_eval_logits_float64(result64):
    g, r = result64
    np.testing.assert_allclose(r["eval_logits"], g["eval_logits"], rtol=0, atol=1e-8)


# (file, lowering). dvs_style_plif_t8 holds a membrane within float32 rounding of its threshold: with the
# matmul lowering one spike flips, as it also does under XLA's convolution when the weights move by one ulp, or
# when BatchNorm's statistics are summed in another order (the compiled CPU statistics kernels); it is checked
# with XLA's convolution and reductions, the GPU/TPU path, and the other file with every lowering.
FLOAT32_CASES = [(name, impl) for name in FLOAT32_STABLE for impl in ("xla", "slices", "events")
                 if name != "dvs_style_plif_t8.npz" or impl == "xla"]


@pytest.mark.slow
@pytest.mark.parametrize("name,impl", FLOAT32_CASES)
def test_float32_path_is_the_same_computation(name, impl):
    """The float32 forward (train and eval mode) is the same computation as the official one."""
    if impl == "events" and jax.default_backend() != "cpu":
        pytest.skip("the event kernels run on the CPU")
    g = load_golden(name)
    r = run_official_step(g, jnp.float32, with_grad=False, conv_impl=impl)
    np.testing.assert_allclose(r["train_logits"], g["train_logits"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(r["eval_logits"], g["eval_logits"], rtol=0, atol=1e-4)
    assert abs(r["loss"] - float(g["loss"])) <= 1e-4
    for name_, ref in g["after_train"].items():
        np.testing.assert_allclose(r["after_train"][name_], ref, rtol=1e-4, atol=1e-5, err_msg=name_)
