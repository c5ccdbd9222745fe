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
    g_remat = jax.jit(jax.grad(jax.checkpoint(loss)))(variables["params"], x)      # jax.checkpoint around apply
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


def test_the_neuron_is_part_of_the_model_config(x64, tmp_path):
    """τ, the threshold and the surrogate are fields of the model and of its stored config; the spikes and membranes
    probes see them, the deploy form honours them (float64, exact), and the official export refuses them."""
    from sresformer_jax import architecture, deploy, interop
    from sresformer_jax.checkpoint import load_model, save_model
    from sresformer_jax.model import by_path

    model, _, fresh, x = _setup("xla", dtype=jnp.float64, param_dtype=jnp.float64)
    official = model.apply(calibrate(model, fresh, x), x, train=False)
    for other in (model.clone(tau=3.0, v_threshold=0.6, surrogate="sigmoid", surrogate_alpha=3.0, v_reset=-0.2),
                  model.clone(v_reset=None, detach_reset=False)):                    # a soft reset
        variables = calibrate(other, fresh, x)
        logits, probes = other.apply(variables, x, train=False, mutable=["spikes", "membranes"])
        spikes, potentials = by_path(probes["spikes"]), by_path(probes["membranes"])
        assert list(spikes) == list(potentials) == [n.path for n in architecture.neurons(other)]   # forward order
        for path in spikes:
            np.testing.assert_array_equal(spikes[path], (potentials[path] >= other.v_threshold).astype(float))
        assert not np.allclose(logits, official)
        np.testing.assert_allclose(deploy.fold(other, variables)(x), logits, rtol=1e-9, atol=1e-9)
    other = model.clone(tau=3.0, v_threshold=0.6, surrogate="sigmoid", surrogate_alpha=3.0)
    assert other.config()["tau"] == 3.0 and model.config()["tau"] == 2.0

    save_model(tmp_path / "m", calibrate(other, fresh, x), other.config())
    loaded, _ = load_model(tmp_path / "m", conv_impl="xla")
    assert loaded.neuron_spec() == other.neuron_spec()
    interop.check_official_neuron(model.config())
    with pytest.raises(ValueError, match="cannot express tau=3.0, v_threshold=0.6, surrogate='sigmoid'"):
        interop.check_official_neuron(other.config())
    with pytest.raises(ValueError, match="cannot express v_reset=None, detach_reset=False"):
        interop.check_official_neuron(model.clone(v_reset=None, detach_reset=False).config())
    with pytest.raises(ValueError, match="v_threshold must be a positive number"):
        _model("xla").clone(v_threshold=0.0).validate()


def test_a_neuron_of_ones_own_trains_and_is_counted():
    """A user's neuron (soft reset here), a pure function with lif's signature and a custom VJP through ``spike``:
    the model trains with it, and the spike counts, firing rates and SOPs see its spikes."""
    from sresformer_jax import deploy, energy
    from sresformer_jax.neurons import spike

    def soft_reset_lif(x_seq, tau, v_threshold, surrogate, alpha):
        def step(v, x):
            h = v + (x - v) / tau
            s = spike(h - v_threshold, surrogate, alpha)
            return h - jax.lax.stop_gradient(s) * v_threshold, s
        return jax.lax.scan(step, jnp.zeros_like(x_seq[0]), x_seq)[1]

    model, _, variables, x = _setup("xla")
    own = model.clone(neuron_fn=soft_reset_lif)
    variables = calibrate(own, variables, x)
    out, counts = own.apply(variables, x, train=True, mutable=["spike_counts", "batch_stats", "firing_rates"])
    rates = energy.firing_rates(counts["spike_counts"], keys="path")                # a training step fires
    assert len(rates) == 20 and 0 < sum(rates.values()) and energy.energy_report(
        own, counts["spike_counts"], x.shape[0])["sops_per_image"] > 0
    plain, _ = model.apply(variables, x, train=True, mutable=["batch_stats", "firing_rates"])
    assert not np.allclose(out, plain)

    def loss(p):
        o, _ = own.apply({**variables, "params": p}, x, train=True, mutable=["batch_stats", "firing_rates"])
        return jnp.mean(o ** 2)
    chex.assert_tree_all_finite(jax.jit(jax.grad(loss))(variables["params"]))
    with pytest.raises(ValueError, match="neuron of its own"):
        deploy.fold(own, variables)
