"""Neuron dynamics: hand-computed LIF sequences, surrogate gradients, PLIF gradient."""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sresformer_jax.layers import Neuron
from sresformer_jax.neurons import lif, membranes, plif, spike, surrogate_grad


def test_lif_constant_input_one_never_fires():
    # H = 0.5, 0.75, 0.875, 0.9375 < 1: no spike
    s = lif(jnp.ones((4, 1)))
    np.testing.assert_array_equal(s[:, 0], [0, 0, 0, 0])


def test_lif_input_two_fires_every_step_after_hard_reset():
    # H[1] = 0.5·0 + 0.5·2 = 1.0 ≥ 1 fires (equality fires), resets to 0, and again every step
    s = lif(jnp.full((4, 1), 2.0))
    np.testing.assert_array_equal(s[:, 0], [1, 1, 1, 1])


def test_lif_hand_computed_sequence():
    x = jnp.array([1.5, 0.8, 1.2, 0.0, 3.0])
    # H: 0.75 → 0.775 → 0.9875 → 0.49375 → 1.746875 (fires)
    np.testing.assert_array_equal(lif(x), [0, 0, 0, 0, 1])
    x = jnp.array([1.2, 1.6, 0.4, 2.0])
    # H: 0.6 → 1.1 (fire, V=0) → 0.2 → 1.1 (fire)
    np.testing.assert_array_equal(lif(x), [0, 1, 0, 1])


def test_spike_returns_input_dtype_and_heaviside():
    for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
        s = spike(jnp.array([-0.5, 0.0, 0.5], dtype))
        assert s.dtype == dtype
        np.testing.assert_array_equal(np.asarray(s, np.float32), [0, 1, 1])


def test_surrogate_gradient_at_threshold_is_one():
    assert float(jax.grad(lambda x: spike(x))(0.0)) == pytest.approx(1.0)
    x = 0.3
    assert float(jax.grad(lambda x: spike(x))(x)) == pytest.approx(1 / (1 + (math.pi * x) ** 2))
    # sigmoid option: α σ(αx)(1 − σ(αx)) = α/4 at 0
    assert float(jax.grad(lambda x: spike(x, "sigmoid", 4.0))(0.0)) == pytest.approx(1.0)


def test_lif_gradient_matches_hand_bptt():
    """gH[t] = gS[t]σ'(H−1) + gV[t](1−S[t]);  gX[t] = gH[t]/τ;  gV[t−1] = gH[t](1 − 1/τ)."""
    x = jnp.array([1.2, 1.6, 0.4, 2.0, 0.9])
    c = jnp.array([0.3, -1.0, 2.0, 0.5, 1.5])
    g = jax.grad(lambda x: jnp.sum(c * lif(x)))(x)
    h, v, hs, ss = 0.0, 0.0, [], []
    for xt in np.asarray(x):
        h = v + (xt - v) / 2
        s = float(h >= 1)
        v = h * (1 - s)
        hs.append(h), ss.append(s)
    gv, gx = 0.0, np.zeros(5)
    for t in reversed(range(5)):
        gh = float(c[t]) * float(surrogate_grad(hs[t] - 1.0)) + gv * (1 - ss[t])
        gx[t] = gh / 2
        gv = gh * (1 - 1 / 2)
    np.testing.assert_allclose(g, gx, rtol=1e-6)


def _plif_standin(x, w, mask):
    """Smooth stand-in with the same derivative as the surrogate PLIF: Θ → g(x) = arctan(πx)/π + ½,
    detached reset → reset by the (constant) spike mask of the spiking run."""
    k, v, out = 1 / (1 + np.exp(-w)), 0.0, []
    for xt, m in zip(x, mask):
        h = v + (xt - v) * k
        out.append(np.arctan(np.pi * (h - 1.0)) / np.pi + 0.5)
        v = h * (1 - m)
    return np.array(out)


def test_plif_gradient_into_w_matches_finite_differences(x64):
    x = jnp.array([[1.4, 0.3], [1.9, 2.5], [0.2, 0.8], [2.2, 1.1], [0.7, 1.6]], jnp.float64)  # [T, N]
    c = jnp.array([[0.7, -0.4], [1.1, 0.5], [-0.9, 0.8], [0.6, -1.2], [1.3, 0.2]], jnp.float64)
    w0 = 0.3
    mask = np.asarray(plif(x, jnp.float64(w0)))
    assert 0 < mask.mean() < 1, "the sequence should contain spikes and silences"
    g = float(jax.grad(lambda w: jnp.sum(c * plif(x, w)))(jnp.float64(w0)))
    F = lambda w: sum(float(np.sum(np.asarray(c[:, n]) * _plif_standin(np.asarray(x[:, n]), w, mask[:, n])))
                      for n in range(2))
    eps = 1e-6
    fd = (F(w0 + eps) - F(w0 - eps)) / (2 * eps)
    assert g == pytest.approx(fd, rel=1e-6)
    # the stand-in's forward trajectory equals the spiking run's (same membranes), so it is a fair check
    np.testing.assert_array_equal(np.asarray(plif(x, jnp.float64(w0 + 1e-9))), mask)


def test_plif_layer_param_and_init():
    m = Neuron("PLIF")
    v = m.init(jax.random.PRNGKey(0), jnp.ones((4, 3)))
    chex.assert_shape(v["params"]["w"], ())
    assert float(v["params"]["w"]) == 0.0  # 1/τ = sigmoid(0) = 0.5
    np.testing.assert_array_equal(m.apply(v, jnp.full((4, 3), 2.0)), lif(jnp.full((4, 3), 2.0)))
    assert Neuron("LIF").init(jax.random.PRNGKey(0), jnp.ones((4, 3))) == {}


def test_membrane_starts_at_zero_every_call_no_hidden_state():
    x = jnp.array([1.2, 1.6, 0.4, 2.0])
    a, b = lif(x), lif(x)
    np.testing.assert_array_equal(a, b)


def test_neurons_jit_vmap_grad():
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 5, 7)) + 1.0
    chex.assert_trees_all_close(jax.jit(lif)(x), lif(x))
    chex.assert_trees_all_close(jax.vmap(lif, in_axes=1, out_axes=1)(x), lif(x))
    g = jax.grad(lambda x: lif(x).sum())(x)
    assert jnp.all(jnp.isfinite(g)) and jnp.any(g != 0)


def test_unknown_kinds_are_refused():
    with pytest.raises(ValueError, match="surrogate"):
        jax.grad(lambda x: spike(x, "relu"))(0.0)
    with pytest.raises(ValueError, match="neuron kind"):
        Neuron("IF").init(jax.random.PRNGKey(0), jnp.ones((2, 2)))


def _autodiff_reference(x_seq, k, tau, v_th=1.0, surrogate="atan", alpha=None, v_reset=0.0, detach=True):
    """The neuron as plain autodiff through a scan (SpikingJelly's formulation: the membrane starts at v_reset)."""
    def step(v, x):
        h = v + (x - v) / tau if tau is not None else v + (x - v) * k
        s = spike(h - v_th, surrogate, alpha)
        r = jax.lax.stop_gradient(s) if detach else s
        return ((1.0 - r) * h + r * v_reset if v_reset is not None else h - r * v_th), s
    v0 = jnp.zeros_like(x_seq[0]) + (0.0 if v_reset is None else v_reset)
    return jax.lax.scan(step, v0, x_seq)[1]


@pytest.mark.parametrize("kind", ["LIF", "PLIF"])
@pytest.mark.parametrize("tau,v_th,surrogate,alpha,v_reset,detach", [
    (2.0, 1.0, "atan", None, 0.0, True), (3.0, 0.6, "sigmoid", 3.0, 0.0, True), (1.5, 1.4, "atan", 4.0, -0.3, True),
    (2.0, 1.0, "atan", None, None, True), (2.5, 0.8, "atan", None, 0.2, False), (2.0, 1.0, "sigmoid", None, None, False)],
    ids=["official", "other1", "reset-0.3", "soft", "reset0.2-attached", "soft-attached"])
def test_neuron_custom_vjp_equals_autodiff_through_the_scan(x64, kind, tau, v_th, surrogate, alpha, v_reset, detach):
    """The custom VJP (keeps only H, recomputes S and V[t−1]) gives autodiff's gradients in float64, for x and
    for PLIF's w, including steps that fire and hard-reset; with the official neuron and with other time
    constants, thresholds and surrogates. ``membranes`` gives the potentials whose crossings are the spikes."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 3, (6, 5, 7)))                   # many spikes and resets
    ct = jnp.asarray(rng.standard_normal((6, 5, 7)))
    w = jnp.asarray(0.3)
    if kind == "LIF":
        ours = lambda x, w: lif(x, tau, v_th, surrogate, alpha, v_reset=v_reset, detach_reset=detach)  # noqa: E731
        ref = lambda x, w: _autodiff_reference(x, None, tau, v_th, surrogate, alpha, v_reset, detach)  # noqa: E731
        h = membranes(x, v_th, tau=tau, v_reset=v_reset)
    else:
        ours = lambda x, w: plif(x, w, v_th, surrogate, alpha, v_reset=v_reset, detach_reset=detach)  # noqa: E731
        ref = lambda x, w: _autodiff_reference(x, jax.nn.sigmoid(w), None, v_th, surrogate, alpha,  # noqa: E731
                                               v_reset, detach)
        h = membranes(x, v_th, k=jax.nn.sigmoid(w), v_reset=v_reset)
    np.testing.assert_array_equal(ours(x, w), (h >= v_th).astype(x.dtype))
    s1, vjp1 = jax.vjp(ours, x, w)
    s2, vjp2 = jax.vjp(ref, x, w)
    np.testing.assert_array_equal(s1, s2)
    assert 0.1 < float(jnp.mean(s1)) < 0.9
    for a, b in zip(vjp1(ct), vjp2(ct)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    if kind == "PLIF":
        assert abs(float(vjp1(ct)[1])) > 0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_fire_is_the_neurons_forward_bit_for_bit(dtype):
    """``fire`` (the deploy form's inference scan: it carries V and emits bool spikes) gives exactly the spikes of
    ``lif``/``plif``; a threshold array broadcasts per channel (all ones: the scalar threshold's spikes)."""
    from sresformer_jax.neurons import fire
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 3, 5, 4)) * 1.5 + 0.6, dtype)
    np.testing.assert_array_equal(fire(x), lif(x) > 0)
    w = jnp.asarray(0.3, jnp.float32)
    np.testing.assert_array_equal(fire(x, k=jax.nn.sigmoid(w).astype(dtype)), plif(x, w) > 0)
    np.testing.assert_array_equal(fire(x, jnp.ones((4,), dtype)), fire(x))
    assert fire(x).dtype == jnp.bool_


@pytest.mark.parametrize("kind", ["LIF", "PLIF"])
def test_a_neuron_that_rebuilds_its_input_equals_the_plain_neuron(x64, kind):
    """A neuron given ``Rebuild(fn, operands)`` keeps the operands instead of its membranes and recomputes both in
    its backward: the same spikes and the same gradients for the operands (and PLIF's w) in float64; its
    backward keeps no [T, ...] membrane."""
    from jax._src.ad_checkpoint import saved_residuals
    from sresformer_jax.neurons import Rebuild
    rng = np.random.default_rng(1)
    a, b = (jnp.asarray(rng.uniform(-1, 3, (6, 5, 7))) for _ in range(2))
    scale = jnp.asarray(rng.uniform(0.5, 1.5, (7,)))
    ct = jnp.asarray(rng.standard_normal((6, 5, 7)))
    fn = lambda a, scale: jnp.tanh(a) * scale + 0.5                   # noqa: E731
    half = lambda b: 0.5 * b                                          # noqa: E731
    neuron = (lambda x, w, rebuild=None: lif(x, rebuild=rebuild)) if kind == "LIF" else (  # noqa: E731
        lambda x, w, rebuild=None: plif(x, w, rebuild=rebuild))

    def plain(a, scale, b, w):
        return neuron(fn(a, scale) + half(b), w)

    def rebuilt(a, scale, b, w):
        src = Rebuild(fn, (a, scale)).plus(Rebuild(half, (b,)))
        return neuron(src.fn(*src.operands), w, src)

    w = jnp.asarray(0.3)
    s1, vjp1 = jax.vjp(plain, a, scale, b, w)
    s2, vjp2 = jax.vjp(rebuilt, a, scale, b, w)
    np.testing.assert_array_equal(s1, s2)
    assert 0.1 < float(jnp.mean(s1)) < 0.9
    for g1, g2 in zip(vjp1(ct), vjp2(ct)):
        np.testing.assert_allclose(g1, g2, rtol=1e-12, atol=1e-12)
    kept = [d for _, d in saved_residuals(lambda a: jnp.sum(rebuilt(a, scale, b, w) * ct), a)]
    assert not any("membrane" in d for d in kept), kept
