"""Spiking neurons as pure functions (docs/model.md, "Spiking neuron").

The spike is a Heaviside step with a surrogate derivative (``jax.custom_vjp``); LIF and PLIF are
multi-step neurons written as a ``lax.scan`` over the leading time axis. The membrane starts at
zero on every call: there is no hidden state and nothing to reset between batches. JAX only (no Flax):
``layers.Neuron`` is the layer that holds a PLIF's parameter and counts spikes.

Per neuron and time step t (SpikingJelly ``LIFNode``/``ParametricLIFNode``, v_reset = 0,
``decay_input=True``, ``detach_reset=True``):

    H[t] = V[t-1] + (X[t] - V[t-1]) / tau        (PLIF: 1/tau = sigmoid(w))
    S[t] = Θ(H[t] - V_th)                         (Θ(x) = 1 if x >= 0)
    V[t] = H[t] · (1 - sg(S[t]))                  (hard reset to 0, reset detached from the gradient)
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from .ops.scan import buffer_slice, buffer_write, scan_buffer

SURROGATES = ("atan", "sigmoid")
SPIKE_COUNTS = "spike_counts"  # optional collection: per-layer spike counts, for firing rates and SOPs
SPIKES = "spikes"              # optional collection: every neuron layer's spikes [T, ...], for analysis
MEMBRANES = "membranes"        # optional collection: every neuron layer's membrane potentials H [T, ...]
DEFAULT_ALPHA = {"atan": 2.0, "sigmoid": 4.0}


def _check_surrogate(surrogate: str) -> None:
    if surrogate not in SURROGATES:
        raise ValueError(f"unknown surrogate {surrogate!r}; choose one of {SURROGATES}")


def surrogate_grad(x: jax.Array, surrogate: str = "atan", alpha: float | None = None) -> jax.Array:
    """Derivative of the smooth stand-in for Θ at ``x``.

    atan:    g'(x) = (α/2) / (1 + (π/2·α·x)²)      (α = 2 → 1 / (1 + (πx)²); SpikingJelly ``ATan``)
    sigmoid: g'(x) = α·σ(αx)·(1 − σ(αx))           (α = 4; SpikingJelly ``Sigmoid``)
    """
    _check_surrogate(surrogate)
    alpha = DEFAULT_ALPHA[surrogate] if alpha is None else alpha
    if surrogate == "atan":
        return alpha / 2 / (1 + jnp.square(math.pi / 2 * alpha * x))
    s = jax.nn.sigmoid(alpha * x)                                                    # "sigmoid"
    return alpha * s * (1 - s)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def spike(x: jax.Array, surrogate: str = "atan", alpha: float | None = None) -> jax.Array:
    """Heaviside step Θ(x) = [x >= 0] in ``x``'s dtype; backward pass uses the surrogate derivative."""
    _check_surrogate(surrogate)
    x = jnp.asarray(x)
    return (x >= 0).astype(x.dtype)


def _spike_fwd(x, surrogate, alpha):
    return spike(x, surrogate, alpha), x


def _spike_bwd(surrogate, alpha, x, g):
    return (surrogate_grad(x, surrogate, alpha) * g,)


spike.defvjp(_spike_fwd, _spike_bwd)


def _charge(v, x, k, tau):
    """H = V + (X − V)/τ (LIF, ``tau`` given) or V + (X − V)·k (PLIF, k = sigmoid(w))."""
    return v + (x - v) / tau if tau is not None else v + (x - v) * k


OFFICIAL_RESET = (0.0, True)   # (v_reset, detach_reset): hard reset to 0, detached from the gradient


def _reset(h, s, v_threshold, reset):
    """V from H and the spikes S (as numbers): a hard reset to v_reset, or (v_reset None) a soft one, V = H − V_th·S."""
    v_reset = reset[0]
    if v_reset is None:
        return h - v_threshold * s
    if v_reset == 0:
        return (1.0 - s) * h
    return (1.0 - s) * h + v_reset * s


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _multistep(x_seq, k, tau, v_threshold, surrogate, alpha, unroll, reset=OFFICIAL_RESET):
    """Scans charge → fire → hard reset over the leading time axis of ``x_seq`` → spikes [T, ...].

    The scan carries the membrane potentials H [T, ...] themselves and writes one H[t] per step, computed from
    X[t] and V[t−1] = H[t−1]·(1 − S[t−1]); the spikes S = Θ(H − V_th) follow in one pass after the scan. (One
    write per element and step: a scan that also emitted S[t] and carried V[t] wrote three.)

    Custom VJP: the forward keeps only H (and X for PLIF). The backward scan runs in reverse and carries the
    adjoints dH [T, ...] the same way:

        dH[t] = dS[t]·Θ'(H[t] − V_th) + dV[t]·(1 − S[t]),   dV[t] = (1 − k)·dH[t+1]   (reset detached; dV[T−1] = 0)
        dX = k·dH,   dk = Σ_t dH[t]·(X[t] − V[t−1])                                   (k = 1/τ or sigmoid(w))

    (equal to autodiff through the scan; it stores one [T, ...] array instead of autodiff's several).
    """
    return _multistep_fwd(x_seq, k, tau, v_threshold, surrogate, alpha, unroll, reset)[0]


def _v_init(reset) -> float:
    """V[−1]: the reset value (SpikingJelly starts the membrane there), 0 for a soft reset."""
    return 0.0 if reset[0] is None else reset[0]


def _multistep_fwd(x_seq, k, tau, v_threshold, surrogate, alpha, unroll, reset=OFFICIAL_RESET):
    dtype = x_seq.dtype
    v_init = _v_init(reset)

    def step(h_buf, inp):
        x, t = inp
        h_prev = buffer_slice(h_buf, jnp.maximum(t - 1, 0), dtype)           # H[t−1]; zeros at t = 0
        v = _reset(h_prev, spike(h_prev - v_threshold, surrogate, alpha), v_threshold, reset)   # V[t−1]
        if v_init != 0:
            v = jnp.where(t == 0, jnp.asarray(v_init, dtype), v)
        return buffer_write(h_buf, t, _charge(v, x, k, tau)), None

    h_seq = scan_buffer(step, x_seq, (x_seq,), reverse=False, unroll=unroll)
    res = (checkpoint_name(h_seq, "membrane"), checkpoint_name(x_seq, "neuron_input") if tau is None else None, k)
    return spike(h_seq - v_threshold, surrogate, alpha), res


def _multistep_bwd(tau, v_threshold, surrogate, alpha, unroll, reset, res, ds_seq):
    h_seq, x_seq, k = res
    dtype, last = h_seq.dtype, h_seq.shape[0] - 1
    kk = jnp.asarray(1.0 / tau if tau is not None else k, dtype)
    v_reset, detach = reset
    not_fired = lambda h: 1 - spike(h - v_threshold, surrogate, alpha)                 # noqa: E731  1 − S

    def step(dh_buf, inp):
        h, ds, t = inp
        dv = (1 - kk) * buffer_slice(dh_buf, jnp.minimum(t + 1, last), dtype)  # dV[t]; zeros at t = T − 1
        g = surrogate_grad(h - v_threshold, surrogate, alpha)
        dh = ds * g + (dv * not_fired(h) if v_reset is not None else dv)       # ∂V/∂H: 1 − S (hard), 1 (soft)
        if not detach:                                                         # the reset's own gradient, ∂V/∂S·Θ'
            dh = dh + dv * g * ((v_reset - h) if v_reset is not None else -v_threshold)
        return buffer_write(dh_buf, t, dh), None

    dh_seq = scan_buffer(step, h_seq, (h_seq, ds_seq), reverse=True, unroll=unroll)
    if x_seq is None:                                                          # LIF: τ is a constant
        return kk * dh_seq, jnp.zeros_like(k)
    h_prev = h_seq[:-1]
    v_prev = jnp.concatenate([jnp.full_like(h_seq[:1], _v_init(reset)),
                              _reset(h_prev, spike(h_prev - v_threshold, surrogate, alpha), v_threshold, reset)])
    dk = jnp.sum(dh_seq * (x_seq - v_prev), dtype=jnp.promote_types(dtype, jnp.float32))
    return kk * dh_seq, dk.astype(k.dtype)


_multistep.defvjp(_multistep_fwd, _multistep_bwd)


class Rebuild(NamedTuple):
    """A neuron's input as an elementwise function of arrays that other layers keep for their own backward pass
    anyway: X = ``fn(*operands)`` (e.g. a BatchNorm's output from its input and batch statistics). A neuron given
    one keeps those operands instead of its membranes, and its backward recomputes X and then H (elementwise
    work, no matmul): the values are the same, the membranes' memory is saved."""

    fn: Callable
    operands: tuple

    def plus(self, other: "Rebuild") -> "Rebuild":
        """X + X′ (in X's dtype, as the model adds them)."""
        return Rebuild(functools.partial(_sum_of, self.fn, other.fn, len(self.operands)),
                       self.operands + other.operands)


def _sum_of(fa, fb, n, *operands):
    return fa(*operands[:n]) + fb(*operands[n:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3, 4, 5, 6, 7, 8))
def _multistep_rebuilt(fn, operands, k, tau, v_threshold, surrogate, alpha, unroll, reset):
    """``_multistep(fn(*operands), ...)`` whose backward keeps ``operands`` and recomputes X and H from them."""
    return _multistep(fn(*operands), k, tau, v_threshold, surrogate, alpha, unroll, reset)


def _multistep_rebuilt_fwd(fn, operands, k, tau, v_threshold, surrogate, alpha, unroll, reset):
    s, _ = _multistep_fwd(fn(*operands), k, tau, v_threshold, surrogate, alpha, unroll, reset)
    return s, (operands, k)


def _multistep_rebuilt_bwd(fn, tau, v_threshold, surrogate, alpha, unroll, reset, res, ds_seq):
    operands, k = res
    x_seq, x_vjp = jax.vjp(fn, *operands)
    _, kept = _multistep_fwd(x_seq, k, tau, v_threshold, surrogate, alpha, unroll, reset)
    dx, dk = _multistep_bwd(tau, v_threshold, surrogate, alpha, unroll, reset, kept, ds_seq)
    return x_vjp(dx), dk


_multistep_rebuilt.defvjp(_multistep_rebuilt_fwd, _multistep_rebuilt_bwd)


def _run(x_seq, k, tau, v_threshold, surrogate, alpha, unroll, rebuild, reset):
    reset = (None if reset[0] is None else float(reset[0]), bool(reset[1]))
    if rebuild is None:
        return _multistep(x_seq, k, tau, v_threshold, surrogate, alpha, unroll, reset)
    return _multistep_rebuilt(rebuild.fn, tuple(rebuild.operands), k, tau, v_threshold, surrogate, alpha, unroll,
                              reset)


def lif(x_seq: jax.Array, tau: float = 2.0, v_threshold: float = 1.0, surrogate: str = "atan",
        alpha: float | None = None, unroll: int | bool = 1, rebuild: Rebuild | None = None, *,
        v_reset: float | None = 0.0, detach_reset: bool = True) -> jax.Array:
    """Multi-step LIF: ``x_seq`` [T, ...] real input → spikes [T, ...]. H = V + (X − V)/τ.
    ``rebuild``: how ``x_seq`` is computed from kept arrays (``Rebuild``); then the membranes are not kept.
    ``v_reset``: the hard reset's value (the membrane also starts there), or None for a soft reset V = H − V_th·S;
    ``detach_reset=False`` lets the gradient flow through the reset as well."""
    _check_surrogate(surrogate)
    return _run(x_seq, jnp.zeros((), x_seq.dtype), float(tau), v_threshold, surrogate, alpha, unroll, rebuild,
                (v_reset, detach_reset))


def plif(x_seq: jax.Array, w: jax.Array, v_threshold: float = 1.0, surrogate: str = "atan",
         alpha: float | None = None, unroll: int | bool = 1, rebuild: Rebuild | None = None, *,
         v_reset: float | None = 0.0, detach_reset: bool = True) -> jax.Array:
    """Multi-step parametric LIF: H = V + (X − V)·sigmoid(w), one learnable scalar ``w`` per layer (``lif``'s
    ``v_reset`` and ``detach_reset``)."""
    _check_surrogate(surrogate)
    k = jax.nn.sigmoid(w).astype(x_seq.dtype)
    return _run(x_seq, k, None, v_threshold, surrogate, alpha, unroll, rebuild, (v_reset, detach_reset))


def _forward_scan(x_seq, v_threshold, tau, k, v_reset, unroll):
    """(spikes as bool, H) [T, ...]: charge by ``_charge``, fire at H ≥ V_th (which equals Θ(H − V_th)), then a
    hard reset to ``v_reset`` (where the membrane also starts) or, for None, a soft one; the arithmetic of
    ``lif``/``plif`` bit for bit. ``v_threshold`` and ``v_reset`` may be arrays that broadcast against one step."""
    kk = None if k is None else jnp.asarray(k, x_seq.dtype)
    t = None if k is not None else float(tau)

    def step(v, x):
        h = _charge(v, x, kk, t)
        s = h >= v_threshold
        if v_reset is None:
            v = jnp.where(s, h - v_threshold, h)
        else:
            v = jnp.where(s, jnp.zeros_like(h) + v_reset, h)
        return v, (s, h)

    v0 = jnp.zeros_like(x_seq[0]) + (0.0 if v_reset is None else v_reset)
    return jax.lax.scan(step, v0.astype(x_seq.dtype), x_seq, unroll=unroll)[1]


def fire(x_seq: jax.Array, v_threshold: float | jax.Array = 1.0, *, tau: float = 2.0, k: jax.Array | None = None,
         v_reset: float | jax.Array | None = 0.0, unroll: int | bool = 1) -> jax.Array:
    """The forward of ``lif`` (``tau``) or, given ``k`` = sigmoid(w), of ``plif``, for inference: spikes [T, ...] as
    ``bool``, bit for bit (``v_reset``: as ``lif``'s). ``v_threshold`` (and ``v_reset``) may be arrays that
    broadcast against one time step (a threshold per head or channel, as the deploy form uses). Not
    differentiable."""
    return _forward_scan(x_seq, v_threshold, tau, k, v_reset, unroll)[0]


def membranes(x_seq: jax.Array, v_threshold: float | jax.Array = 1.0, *, tau: float = 2.0, k: jax.Array | None = None,
              v_reset: float | jax.Array | None = 0.0, unroll: int | bool = 1) -> jax.Array:
    """The membrane potentials H[t] of ``lif`` (``tau``) or, given ``k`` = sigmoid(w), of ``plif`` on ``x_seq``:
    [T, ...], charged and before firing and reset (the spikes are H ≥ V_th). For analysis: ``fire``'s arithmetic,
    not differentiated through."""
    return _forward_scan(jax.lax.stop_gradient(x_seq), v_threshold, tau, k, v_reset, unroll)[1]
