"""Every JAX idiom a researcher reaches for works on every lowering: jit closing over the variables and with them
as arguments, jit(grad) with respect to the parameters and to the input, vmap over images and over stacked
variables, jax.checkpoint around apply, float64 and bfloat16; and an uncalibrated model never gives meaningless
numbers (it raises where the firing rates are concrete, and gives NaN where they are traced)."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sresformer_jax import FiringRatesNotSetError, calibrate, create_model, init_variables

pytestmark = pytest.mark.slow

SMALL = dict(blocks=(1, 1, 1), planes=(8, 16, 32), num_heads=(1, 2, 4), group_size=8, img_size=16, T=2,
             num_classes=5)


def _model(conv_impl, dtype=None, param_dtype=jnp.float32):
    return create_model("spikingresformer_cifar", conv_impl=conv_impl, dtype=dtype, param_dtype=param_dtype, **SMALL)


def _setup(conv_impl, dtype=None, param_dtype=jnp.float32):
    model = _model(conv_impl, dtype, param_dtype)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3), param_dtype)
    fresh = init_variables(model, jax.random.PRNGKey(0))
    return model, fresh, calibrate(model, fresh, x), x


@pytest.mark.parametrize("conv_impl", ["xla", "slices", "events"])
def test_jit_grad_vmap_and_checkpoint(conv_impl, event_kernels):
    model, fresh, variables, x = _setup(conv_impl)
    passed = jax.jit(lambda v, x: model.apply(v, x, train=False))                     # takes them as an argument
    reference = passed(variables, x)
    closed = jax.jit(lambda x: model.apply(variables, x, train=False))                # closes over the variables
    chex.assert_trees_all_close(closed(x), reference, atol=1e-5)

    # uncalibrated: concrete rates raise (un-jitted and closed over), traced ones give NaN logits
    with pytest.raises(FiringRatesNotSetError):
        model.apply(fresh, x, train=False)
    with pytest.raises(FiringRatesNotSetError):
        jax.jit(lambda x: model.apply(fresh, x, train=False))(x)
    assert bool(jnp.all(jnp.isnan(passed(fresh, x))))

    # saliency: d(logit of class 0)/d(input), closing over the variables
    saliency = jax.jit(jax.grad(lambda x: model.apply(variables, x, train=False).mean(0)[:, 0].sum()))(x)
    chex.assert_shape(saliency, x.shape)
    assert bool(jnp.all(jnp.isfinite(saliency))) and float(jnp.abs(saliency).sum()) > 0

    def loss(params, x):
        out, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats", "firing_rates"])
        return jnp.mean(out ** 2)

    grad = jax.jit(jax.grad(loss))
    g = grad(variables["params"], x)
    chex.assert_tree_all_finite(g)
    # constant images normalise to zero, so no DSSA head spikes (rate 0): the scale 1/√(r·n) must not turn the
    # zero product into 0·∞ = NaN
    chex.assert_tree_all_finite(grad(variables["params"], jnp.zeros_like(x)))
    if conv_impl == "xla":                                                             # jax.checkpoint around apply
        g_remat = jax.jit(jax.grad(jax.checkpoint(loss)))(variables["params"], x)
        chex.assert_trees_all_close(g, g_remat, atol=1e-6)

    per_image = jax.vmap(lambda img: passed(variables, img[None])[:, 0])(x)          # [B, T, classes]
    chex.assert_trees_all_close(jnp.moveaxis(per_image, 0, 1), reference, atol=1e-5)
    ensemble = jax.tree.map(lambda a, b: jnp.stack([a, b]), variables, variables)    # stacked variables
    both = jax.vmap(passed, in_axes=(0, None))(ensemble, x)
    chex.assert_trees_all_close(both[0], both[1])
    chex.assert_trees_all_close(both[0], reference, atol=1e-5)


def test_float64_and_bfloat16(x64):
    model, _, variables, x = _setup("xla", dtype=jnp.float64, param_dtype=jnp.float64)
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert out.dtype == jnp.float64 and bool(jnp.all(jnp.isfinite(out)))

    half = _model("xla", dtype=jnp.bfloat16)
    v32 = jax.tree.map(lambda a: a.astype(jnp.float32), variables)
    out16 = jax.jit(lambda v, x: half.apply(v, x, train=False))(v32, x.astype(jnp.float32))
    assert bool(jnp.all(jnp.isfinite(out16)))
    np.testing.assert_allclose(np.asarray(out16, np.float64).mean(0), np.asarray(out).mean(0), atol=0.5)
