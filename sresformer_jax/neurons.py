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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _multistep(x_seq, k, tau, v_threshold, surrogate, alpha, unroll):
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
    return _multistep_fwd(x_seq, k, tau, v_threshold, surrogate, alpha, unroll)[0]


def _multistep_fwd(x_seq, k, tau, v_threshold, surrogate, alpha, unroll):
    dtype = x_seq.dtype

    def step(h_buf, inp):
        x, t = inp
        h_prev = buffer_slice(h_buf, jnp.maximum(t - 1, 0), dtype)           # H[t−1]; zeros at t = 0
        v = (1.0 - spike(h_prev - v_threshold, surrogate, alpha)) * h_prev   # V[t−1]
        return buffer_write(h_buf, t, _charge(v, x, k, tau)), None

    h_seq = scan_buffer(step, x_seq, (x_seq,), reverse=False, unroll=unroll)
    res = (checkpoint_name(h_seq, "membrane"), checkpoint_name(x_seq, "neuron_input") if tau is None else None, k)
    return spike(h_seq - v_threshold, surrogate, alpha), res


def _multistep_bwd(tau, v_threshold, surrogate, alpha, unroll, res, ds_seq):
    h_seq, x_seq, k = res
    dtype, last = h_seq.dtype, h_seq.shape[0] - 1
    kk = jnp.asarray(1.0 / tau if tau is not None else k, dtype)
    not_fired = lambda h: 1 - spike(h - v_threshold, surrogate, alpha)                 # noqa: E731  1 − S

    def step(dh_buf, inp):
        h, ds, t = inp
        dv = (1 - kk) * buffer_slice(dh_buf, jnp.minimum(t + 1, last), dtype)  # dV[t]; zeros at t = T − 1
        dh = ds * surrogate_grad(h - v_threshold, surrogate, alpha) + dv * not_fired(h)
        return buffer_write(dh_buf, t, dh), None

    dh_seq = scan_buffer(step, h_seq, (h_seq, ds_seq), reverse=True, unroll=unroll)
    if x_seq is None:                                                          # LIF: τ is a constant
        return kk * dh_seq, jnp.zeros_like(k)
    v_prev = jnp.concatenate([jnp.zeros_like(h_seq[:1]), h_seq[:-1] * not_fired(h_seq[:-1])])   # V[t−1]
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3, 4, 5, 6, 7))
def _multistep_rebuilt(fn, operands, k, tau, v_threshold, surrogate, alpha, unroll):
    """``_multistep(fn(*operands), ...)`` whose backward keeps ``operands`` and recomputes X and H from them."""
    return _multistep(fn(*operands), k, tau, v_threshold, surrogate, alpha, unroll)


def _multistep_rebuilt_fwd(fn, operands, k, tau, v_threshold, surrogate, alpha, unroll):
    s, _ = _multistep_fwd(fn(*operands), k, tau, v_threshold, surrogate, alpha, unroll)
    return s, (operands, k)


def _multistep_rebuilt_bwd(fn, tau, v_threshold, surrogate, alpha, unroll, res, ds_seq):
    operands, k = res
    x_seq, x_vjp = jax.vjp(fn, *operands)
    _, kept = _multistep_fwd(x_seq, k, tau, v_threshold, surrogate, alpha, unroll)
    dx, dk = _multistep_bwd(tau, v_threshold, surrogate, alpha, unroll, kept, ds_seq)
    return x_vjp(dx), dk


_multistep_rebuilt.defvjp(_multistep_rebuilt_fwd, _multistep_rebuilt_bwd)


def _run(x_seq, k, tau, v_threshold, surrogate, alpha, unroll, rebuild):
    if rebuild is None:
        return _multistep(x_seq, k, tau, v_threshold, surrogate, alpha, unroll)
    return _multistep_rebuilt(rebuild.fn, tuple(rebuild.operands), k, tau, v_threshold, surrogate, alpha, unroll)


def lif(x_seq: jax.Array, tau: float = 2.0, v_threshold: float = 1.0, surrogate: str = "atan",
        alpha: float | None = None, unroll: int | bool = 1, rebuild: Rebuild | None = None) -> jax.Array:
    """Multi-step LIF: ``x_seq`` [T, ...] real input → spikes [T, ...]. H = V + (X − V)/τ.
    ``rebuild``: how ``x_seq`` is computed from kept arrays (``Rebuild``); then the membranes are not kept."""
    _check_surrogate(surrogate)
    return _run(x_seq, jnp.zeros((), x_seq.dtype), float(tau), v_threshold, surrogate, alpha, unroll, rebuild)


def plif(x_seq: jax.Array, w: jax.Array, v_threshold: float = 1.0, surrogate: str = "atan",
         alpha: float | None = None, unroll: int | bool = 1, rebuild: Rebuild | None = None) -> jax.Array:
    """Multi-step parametric LIF: H = V + (X − V)·sigmoid(w), one learnable scalar ``w`` per layer."""
    _check_surrogate(surrogate)
    k = jax.nn.sigmoid(w).astype(x_seq.dtype)
    return _run(x_seq, k, None, v_threshold, surrogate, alpha, unroll, rebuild)


def fire(x_seq: jax.Array, v_threshold: float | jax.Array = 1.0, *, tau: float = 2.0, k: jax.Array | None = None,
         unroll: int | bool = 1) -> jax.Array:
    """The forward of ``lif`` (``tau``) or, given ``k`` = sigmoid(w), of ``plif``, for inference: spikes [T, ...] as
    ``bool``. The same arithmetic as ``lif``/``plif`` (bit for bit: charge by ``_charge``, fire at H ≥ V_th, which
    equals Θ(H − V_th), reset to 0), as a scan that carries V and emits the spikes of each step, so that no
    membrane buffer is written. ``v_threshold`` may be an array that broadcasts against one time step (a
    threshold per head or channel, as the deploy form uses). Not differentiable."""
    kk = None if k is None else jnp.asarray(k, x_seq.dtype)
    t = None if k is not None else float(tau)

    def step(v, x):
        h = _charge(v, x, kk, t)
        s = h >= v_threshold
        return jnp.where(s, jnp.zeros_like(h), h), s

    return jax.lax.scan(step, jnp.zeros_like(x_seq[0]), x_seq, unroll=unroll)[1]


def membranes(x_seq: jax.Array, v_threshold: float | jax.Array = 1.0, *, tau: float = 2.0, k: jax.Array | None = None,
              unroll: int | bool = 1) -> jax.Array:
    """The membrane potentials H[t] of ``lif`` (``tau``) or, given ``k`` = sigmoid(w), of ``plif`` on ``x_seq``:
    [T, ...], charged and before firing and reset (the spikes are H ≥ V_th). For analysis: the arithmetic of
    ``fire``, not differentiated through."""
    kk = None if k is None else jnp.asarray(k, x_seq.dtype)
    t = None if k is not None else float(tau)

    def step(v, x):
        h = _charge(v, x, kk, t)
        return jnp.where(h >= v_threshold, jnp.zeros_like(h), h), h

    return jax.lax.scan(step, jnp.zeros_like(x_seq[0]), jax.lax.stop_gradient(x_seq), unroll=unroll)[1]
