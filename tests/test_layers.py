"""The lowerings (ops/): the matmul ("slices") and event ("events") convolutions equal lax.conv_general_dilated in
value and in both gradients, for every conv shape class of the model; BatchNorm's custom VJP, the mixed-precision
matmul and the bit-pattern scans; and the lowering is a field of the model, resolved once, per backend."""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sresformer_jax import create_model, layers
from sresformer_jax.ops import batch_norm_train, conv2d, dot, kernels, resolve_conv_impl
from sresformer_jax.ops.scan import buffer_slice, buffer_write, scan_bits, scan_buffer

# (x shape [..., H, W, Cin], k, stride, padding, groups, Cout)
CASES = {
    "7x7_s2_p3_odd_even": ((2, 11, 10, 3), 7, 2, 3, 1, 8),          # ImageNet stem; ceil(H/2) outputs
    "3x3_s1_p1_small_c": ((2, 6, 5, 3), 3, 1, 1, 1, 8),             # CIFAR stem (concatenated taps)
    "3x3_s1_p1_sum": ((1, 5, 6, 40), 3, 1, 1, 1, 16),               # one matmul per tap
    "3x3_s2_p1_odd": ((2, 7, 5, 4), 3, 2, 1, 1, 6),                 # downsample, odd sizes
    "3x3_s2_p1_even": ((1, 8, 6, 48), 3, 2, 1, 1, 8),               # downsample, even sizes
    "1x1": ((2, 5, 6, 7), 1, 1, 0, 1, 9),
    "1x1_s2_p1": ((1, 5, 6, 4), 1, 2, 1, 1, 3),
    "patch_p1": ((2, 4, 4, 6), 1, 1, 0, 1, 10),
    "patch_p2": ((2, 8, 6, 6), 2, 2, 0, 1, 10),
    "patch_p4": ((2, 8, 8, 6), 4, 4, 0, 1, 12),
    "patch_p4_floor": ((1, 9, 10, 5), 4, 4, 0, 1, 4),               # PyTorch drops the remainder
    "grouped_g2": ((2, 6, 7, 8), 3, 1, 1, 2, 4),
    "grouped_g4": ((2, 5, 6, 16), 3, 1, 1, 4, 16),
    "grouped_g8": ((1, 6, 6, 16), 3, 1, 1, 8, 24),
    "grouped_g2_sum": ((1, 5, 5, 64), 3, 1, 1, 2, 64),              # 32 channels per group: per-tap matmuls
    "grouped_g4_s2": ((1, 7, 8, 8), 3, 2, 1, 4, 8),
    "grouped_1x1_g2": ((2, 4, 5, 6), 1, 1, 0, 2, 4),
    "folded_TB": ((3, 2, 6, 5, 8), 3, 1, 1, 2, 8),                  # [T, B, H, W, C]
    "folded_TB_patch": ((3, 2, 8, 8, 4), 2, 2, 0, 1, 6),
}
# float32 on a few cases only (each case compiles two programs, which dominates this file's run time); the same
# cases stand for every shape class in the fast subset (pytest -m "not slow"), the others are marked slow
F32_CASES = ("3x3_s1_p1_sum", "3x3_s2_p1_odd", "1x1", "patch_p4", "grouped_g4", "folded_TB")
ALL_CASES = [c if c in F32_CASES else pytest.param(c, marks=pytest.mark.slow) for c in sorted(CASES)]


def _normal(shape, dtype, seed=0):
    # numpy, not jax.random: compiling jax.random.normal for every new shape costs seconds on CPU
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def reference(x, kernel, stride, padding, groups):
    lead, (h, w, c) = x.shape[:-3], x.shape[-3:]
    y = jax.lax.conv_general_dilated(
        x.reshape((-1, h, w, c)), kernel, (stride, stride), ((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
        precision=jax.lax.Precision.HIGHEST)
    return y.reshape(lead + y.shape[1:])


@functools.cache
def _bound(fn, **kwargs):
    """One ``functools.partial`` per function and arguments, so that the jitted programs below are cached (a new
    partial is a new static argument, and a new compile)."""
    return functools.partial(fn, **kwargs)


@jax.jit(static_argnums=0)
def _value_and_grads(fn, x, kernel, cotangent):
    """(y, ∂⟨y, cotangent⟩/∂x, ∂⟨y, cotangent⟩/∂kernel), one compiled program."""
    y, vjp = jax.vjp(fn, x, kernel)
    return (y,) + vjp(cotangent)


def _compare(case, dtype, tol, impl="slices", spikes=False, binary=False):
    shape, k, s, p, g, cout = CASES[case]
    x = _normal(shape, dtype)
    if spikes:                                                   # ~20 % ones, the rest exact zeros
        x = (x > 0.85).astype(dtype)
    kernel = _normal((k, k, shape[-1] // g, cout), dtype, seed=1)
    y_ref = reference(x, kernel, s, p, g)
    h, w = shape[-3:-1]
    assert y_ref.shape[-3:-1] == ((h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
    ct = _normal(y_ref.shape, dtype, seed=2)
    want = _value_and_grads(_bound(reference, stride=s, padding=p, groups=g), x, kernel, ct)
    got = _value_and_grads(_bound(conv2d, stride=s, padding=p, groups=g, impl=impl, binary=binary), x, kernel, ct)
    for name, a, b in zip(("y", "dx", "dkernel"), got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        a, b = np.asarray(a), np.asarray(b)                          # compare on the host: no compiles
        err = np.max(np.abs(a - b)) / np.max(np.abs(b))
        assert err <= tol, f"{case} {name}: relative error {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("case", ALL_CASES)
def test_slices_equals_xla_float64(case, x64):
    _compare(case, jnp.float64, 1e-12)


@pytest.mark.parametrize("case", F32_CASES)
def test_slices_equals_xla_float32(case):
    _compare(case, jnp.float32, 1e-5)


@pytest.mark.parametrize("case", ALL_CASES)
def test_xla_conv_of_spikes_keeps_bits_and_equals_autodiff_float64(case, x64):
    """``binary`` on XLA's lowering: the backward keeps the spikes packed as bits (or bytes) and its gradients
    equal autodiff of the plain convolution."""
    _compare(case, jnp.float64, 1e-12, impl="xla", spikes=True, binary=True)


def test_spike_bits_round_trip():
    from sresformer_jax.ops.bits import pack_bits, unpack_bits
    s = (_normal((2, 3, 3, 24), jnp.float32) > 0.5).astype(jnp.float32)
    packed = pack_bits(s)
    assert packed.dtype == jnp.uint8 and packed.shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(unpack_bits(packed, jnp.float32), s)
    s = s[..., :21]                                                   # not a multiple of 8: zero-padded
    assert pack_bits(s).shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(unpack_bits(pack_bits(s), jnp.float32, 21), s)


@pytest.mark.parametrize("spikes", [True, False], ids=["spikes", "dense"])
@pytest.mark.parametrize("case", ALL_CASES)
def test_events_equals_xla_float64(case, spikes, x64, event_kernels):
    """The event kernels (forward and dK) with XLA's dx equal XLA's convolution in value and gradients, for
    spikes (read as bytes, ``binary``, as the model's convolutions do) and for dense real inputs (zeros are
    skipped, nothing else)."""
    _compare(case, jnp.float64, 1e-12, impl="events", spikes=spikes, binary=spikes)


@pytest.mark.parametrize("binary", [True, False], ids=["bytes", "float"])
@pytest.mark.parametrize("case", F32_CASES)
def test_events_equals_xla_float32(case, binary, event_kernels):
    _compare(case, jnp.float32, 1e-5, impl="events", spikes=True, binary=binary)


def test_xla_impl_is_lax_conv():
    shape, k, s, p, g, cout = CASES["grouped_g4_s2"]
    x, kernel = _normal(shape, jnp.float32), _normal((k, k, shape[-1] // g, cout), jnp.float32, seed=1)
    np.testing.assert_array_equal(conv2d(x, kernel, s, p, g, impl="xla"), reference(x, kernel, s, p, g))


def _hlo(impl):
    x, kernel = jnp.zeros((2, 6, 6, 8)), jnp.zeros((3, 3, 4, 8))
    return jax.jit(lambda x, w: conv2d(x, w, 1, 1, 2, impl=impl)).lower(x, kernel).as_text()


def test_lowerings_differ_in_hlo():
    assert "convolution" in _hlo("xla")
    assert "convolution" not in _hlo("slices") and "dot_general" in _hlo("slices")


def test_auto_follows_backend(event_kernels):
    want = "events" if jax.default_backend() == "cpu" else "xla"
    assert resolve_conv_impl("auto") == want
    assert resolve_conv_impl("auto", jnp.float16) == ("slices" if want == "events" else "xla")
    for impl in ("xla", "slices"):
        assert resolve_conv_impl(impl) == impl


def test_unknown_impl_raises():
    with pytest.raises(ValueError, match="cudnn"):
        resolve_conv_impl("cudnn")
    with pytest.raises(ValueError, match="cudnn"):
        conv2d(jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 1, 2, 3)), impl="cudnn")
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        create_model("spikingresformer_cifar", num_classes=10, img_size=32, conv_impl="fast")
    if jax.default_backend() == "cpu":
        with pytest.raises(ValueError, match="float32, float64 or bfloat16"):
            create_model("spikingresformer_cifar", num_classes=10, img_size=32, conv_impl="events",
                         dtype=jnp.float16)


def test_two_models_in_one_process_lower_to_different_programs(event_kernels):
    """The lowering is a field of the model, resolved when it is built: "auto" becomes a concrete name, and two
    models of different ``conv_impl`` compile to different programs in the same process (nothing global)."""
    kw = dict(num_classes=10, img_size=16, T=1, blocks=(1, 1, 1), planes=(16, 32, 64), num_heads=(1, 1, 2),
              group_size=16)
    models = {impl: create_model("spikingresformer_cifar", conv_impl=impl, **kw) for impl in ("xla", "slices")}
    if jax.default_backend() == "cpu":
        models["events"] = create_model("spikingresformer_cifar", conv_impl="events", **kw)
        assert create_model("spikingresformer_cifar", **kw).conv_impl == "events"
    x = jnp.zeros((2, 16, 16, 3))
    shapes = jax.eval_shape(lambda: models["xla"].init(jax.random.PRNGKey(0), x, train=False))
    hlo = {}
    for impl, m in models.items():
        assert m.conv_impl == impl
        step = lambda v, x, m=m: m.apply(v, x, train=True, mutable=["batch_stats", "firing_rates"])  # noqa: E731
        hlo[impl] = jax.jit(step).lower(shapes, x).as_text()
    assert "convolution" in hlo["xla"] and "sresformer_" not in hlo["xla"]
    assert "convolution" not in hlo["slices"] and "sresformer_" not in hlo["slices"]
    if "events" in hlo:
        assert "sresformer_EventConvFwdU8F32" in hlo["events"] and "sresformer_BatchNormStatsF32" in hlo["events"]
        assert "convolution" not in hlo["events"]


def test_convbn_same_under_both_impls():
    x = _normal((2, 3, 8, 8, 16), jnp.float32)                        # [T, B, H, W, C]
    r = _normal((2, 3, 8, 8, 16), jnp.float32, seed=1)
    shapes = jax.eval_shape(lambda: layers.ConvBN(16, 3, padding=1, groups=4).init(jax.random.PRNGKey(0), x,
                                                                                     train=False))
    v = jax.tree.map(lambda s: _normal(s.shape, s.dtype, seed=s.size), shapes)   # no RNG compiles
    out = {}
    for impl in ("xla", "slices"):
        m = layers.ConvBN(16, 3, padding=1, groups=4, conv_impl=impl)
        loss = lambda p, m=m: jnp.sum(r * m.apply({**v, "params": p}, x, train=True,  # noqa: E731
                                                  mutable=["batch_stats"])[0])
        out[impl] = jax.jit(jax.value_and_grad(loss))(v["params"])
    for a, b in zip(jax.tree.leaves(out["slices"]), jax.tree.leaves(out["xla"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("cin,cout,groups,k,p,h,n", [
    (256, 256, 4, 3, 1, 8, 2), (16, 32, 1, 3, 1, 7, 2), (64, 64, 2, 5, 2, 9, 2), (3, 8, 1, 7, 3, 12, 2),
    (64, 64, 2, 3, 1, 10, 6),     # dK scan over 3 chunks of 2 images (100 pixels each)
    (32, 16, 1, 3, 0, 14, 5),     # no padding, 5 images: 5 chunks of one
])
@pytest.mark.slow
def test_stride1_conv_custom_vjp_matches_xla_gradients(x64, cin, cout, groups, k, p, h, n):
    """The slices lowering's custom backward (dx as a forward conv with the flipped kernel, dK accumulated
    over chunks of images) equals XLA's convolution gradients in float64."""
    ho = h + 2 * p - k + 1
    x = jax.random.normal(jax.random.PRNGKey(0), (n, h, h, cin), jnp.float64)
    kernel = jax.random.normal(jax.random.PRNGKey(1), (k, k, cin // groups, cout), jnp.float64)
    dy = jax.random.normal(jax.random.PRNGKey(2), (n, ho, ho, cout), jnp.float64)
    ref = jax.vjp(lambda x, w: conv2d(x, w, 1, p, groups, impl="xla"), x, kernel)
    got = jax.vjp(lambda x, w: conv2d(x, w, 1, p, groups, impl="slices"), x, kernel)
    np.testing.assert_allclose(got[0], ref[0], atol=1e-11)
    for a, b in zip(got[1](dy), ref[1](dy)):
        np.testing.assert_allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("use_kernels", [True, False], ids=["stats_kernels", "jnp"])
def test_batch_norm_train_custom_vjp_matches_autodiff(use_kernels, x64, request):
    """``batch_norm_train``'s analytic backward (only x, μ and 1/σ kept) equals autodiff of the plain formula,
    including the cotangents of the returned batch statistics: with the statistics from the compiled CPU
    kernels ("events") and from jnp reductions."""
    if use_kernels:
        if jax.default_backend() != "cpu":
            pytest.skip("compiled CPU kernels")
        request.getfixturevalue("event_kernels")

    def plain(x, s, b, eps=1e-5):
        axes = tuple(range(x.ndim - 1))
        m = x.mean(axes)
        v = ((x - m) ** 2).mean(axes)
        return (x - m) * jax.lax.rsqrt(v + eps) * s + b, m, v

    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 4, 6), jnp.float64) * 3 + 1
    s, b = (jax.random.normal(jax.random.PRNGKey(i), (6,), jnp.float64) for i in (1, 2))
    ref = jax.vjp(plain, x, s, b)
    got = jax.vjp(lambda x, s, b: batch_norm_train(x, s, b, 1e-5, use_kernels), x, s, b)
    cts = tuple(jax.random.normal(jax.random.PRNGKey(3 + i), a.shape, jnp.float64) for i, a in enumerate(ref[0]))
    for a, c in zip(ref[0] + ref[1](cts), got[0] + got[1](cts)):
        np.testing.assert_allclose(c, a, atol=1e-12)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="compiled CPU kernels")
def test_batch_norm_stats_kernels_float32_against_float64(event_kernels):
    """The float32 statistics kernels on a large, offset activation (257 chunks of rows; mean ≫ std) agree with
    float64 numpy to float32 rounding, and repeat bit for bit."""
    rng = np.random.default_rng(0)
    x64_ = rng.standard_normal((4, 257, 64, 24)) * 0.5 + 30.0
    dy64 = rng.standard_normal(x64_.shape)
    x, dy = jnp.asarray(x64_, jnp.float32), jnp.asarray(dy64, jnp.float32)
    mean, var = jax.jit(kernels.batch_norm_stats)(x)
    xr, dyr = np.asarray(x, np.float64).reshape(-1, 24), np.asarray(dy, np.float64).reshape(-1, 24)
    np.testing.assert_allclose(mean, xr.mean(0), rtol=1e-6)
    np.testing.assert_allclose(var, ((xr - xr.mean(0)) ** 2).mean(0), rtol=1e-5)
    sdy, sdyx = jax.jit(kernels.batch_norm_grad_stats)(x, dy, mean)
    np.testing.assert_allclose(sdy, dyr.sum(0), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(sdyx, (dyr * (xr - np.asarray(mean, np.float64))).sum(0), rtol=1e-5, atol=1e-3)
    again = jax.jit(kernels.batch_norm_stats)(x)
    np.testing.assert_array_equal(np.asarray(again[1]), np.asarray(var))


@pytest.mark.parametrize("spec, sa, sb", [("pc,co->po", (40, 16), (16, 8)),
                                          ("tbhnd,tbhmd->tbhnm", (2, 3, 2, 5, 4), (2, 3, 2, 6, 4))])
def test_dot_low_precision_accumulates_in_float32_and_its_vjp_stays_bf16(spec, sa, sb):
    """bf16 operands: float32 result equal to the float32 product of the same (exact) bf16 values; the VJP
    returns bf16 cotangents equal to float32 products of the bf16-rounded cotangent."""
    a = _normal(sa, jnp.bfloat16, seed=3)
    b = _normal(sb, jnp.bfloat16, seed=4)
    y, vjp = jax.vjp(functools.partial(dot, spec), a, b)
    ref = jnp.einsum(spec, a.astype(jnp.float32), b.astype(jnp.float32), precision="highest")
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)
    g = _normal(y.shape, jnp.float32, seed=5)
    da, db = vjp(g)
    assert da.dtype == db.dtype == jnp.bfloat16
    g16 = g.astype(jnp.bfloat16).astype(jnp.float32)
    _, ref_vjp = jax.vjp(lambda a, b: jnp.einsum(spec, a, b, precision="highest"),
                         a.astype(jnp.float32), b.astype(jnp.float32))
    for got, want in zip((da, db), ref_vjp(g16)):
        np.testing.assert_allclose(got.astype(jnp.float32), want.astype(jnp.bfloat16).astype(jnp.float32),
                                   rtol=1e-2, atol=1e-2)
    f = _normal(sa, jnp.float32)
    assert dot(spec, f, _normal(sb, jnp.float32)).dtype == jnp.float32   # float32: a plain einsum


def test_stride1_conv_keeps_one_shifted_slice_alive():
    """The CPU lowering scans over the k² taps (forward and dx) and over image chunks (dK), so XLA's temporary
    buffers of a group-wise 3×3 conv's value-and-gradient stay a few activations large; a Python loop over the
    taps let XLA keep all nine shifted copies alive at once (docs/performance.md: batch-32 train buffers
    15 → 8.4 GiB)."""
    x = _normal((8, 16, 16, 128), jnp.float32)
    kernel = _normal((3, 3, 64, 128), jnp.float32, seed=1)

    def loss(x, w):
        return jnp.sum(jnp.square(conv2d(x, w, 1, 1, 2, impl="slices")))

    temp = jax.jit(jax.grad(loss, (0, 1))).lower(x, kernel).compile().memory_analysis().temp_size_in_bytes
    # 7.2× now (the residual is the group-major padded input, 1.3× x, instead of x itself); 20.8× with the
    # taps in a Python loop
    assert temp < 8 * x.nbytes, f"{temp / x.nbytes:.1f}× the input in temporaries"


def test_scan_bits_equals_scan_and_keeps_bf16_inputs_out_of_float32():
    """``scan_bits`` slices bf16 inputs as uint16 bit patterns: the same values as ``lax.scan``, and the
    compiled loop carries no float32 copy of the scanned array (XLA:CPU's conversion of a sliced bf16 array,
    docs/performance.md)."""
    xs = (_normal((6, 32, 64), jnp.float32).astype(jnp.bfloat16), _normal((6, 64), jnp.float32))
    w = _normal((64, 16), jnp.float32).astype(jnp.bfloat16)

    def step(c, x):
        a, b = x
        return c + dot("pc,co->po", a, w), jnp.sum(b) * a[0, 0]

    want = jax.lax.scan(step, jnp.zeros((32, 16)), xs)
    run = jax.jit(lambda xs: scan_bits(step, jnp.zeros((32, 16)), xs))
    chex.assert_trees_all_equal(run(xs), want)
    loops = [line for line in run.lower(xs).compile().as_text().splitlines() if " while(" in line]
    assert loops and all("f32[6,32,64]" not in line.split(" while(")[0] for line in loops), loops


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_scan_buffer_equals_a_scan_with_outputs(dtype):
    """``scan_buffer`` (a scan that carries its [T, ...] result and writes one slice per step, reading
    the previous one): the same values as the plain scan with a carry and per-step outputs, and in bf16 a
    loop that carries the 16-bit buffer, not a float32 copy."""
    xs = _normal((5, 8, 96), jnp.float32).astype(dtype)

    def plain(c, x):
        y = 0.5 * c + x
        return y, y

    def step(buf, inp):
        x, t = inp
        prev = buffer_slice(buf, jnp.maximum(t - 1, 0), dtype)
        return buffer_write(buf, t, 0.5 * prev + x), None

    run = jax.jit(lambda xs: scan_buffer(step, xs, (xs,)))
    chex.assert_trees_all_equal(run(xs), jax.lax.scan(plain, jnp.zeros_like(xs[0]), xs)[1])
    loops = [line for line in run.lower(xs).compile().as_text().splitlines() if " while(" in line]
    assert loops and all("f32[5,8,96]" not in line.split(" while(")[0] for line in loops
                         if dtype == jnp.bfloat16), loops


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.bfloat16])
@pytest.mark.parametrize("spec,which", [("tbhnd,tbhmd->tbhnm", 1), ("tbhnm,tbhnd->tbhmd", 0)])
def test_dot_of_spikes_keeps_bits_and_equals_dot(spec, which, dtype, x64):
    """``dot(binary=...)``: the spike operand is kept as bits (along its last axis, 4 or 21: not multiples of 8);
    the values and both gradients equal ``dot``'s."""
    from jax._src.ad_checkpoint import saved_residuals
    from sresformer_jax.ops import dot
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    shapes = {"tbhnd,tbhmd->tbhnm": ((2, 1, 3, 5, 4), (2, 1, 3, 21, 4)),
              "tbhnm,tbhnd->tbhmd": ((2, 1, 3, 5, 21), (2, 1, 3, 5, 4))}[spec]
    ops = [jax.random.normal(k[i], s).astype(dtype) for i, s in enumerate(shapes)]
    ops[which] = (ops[which] > 0).astype(dtype)
    ct = jax.random.normal(k[2], jnp.einsum(spec, *ops).shape).astype(
        jnp.float32 if dtype == jnp.bfloat16 else dtype)
    y1, vjp1 = jax.vjp(lambda a, b: dot(spec, a, b), *ops)
    y2, vjp2 = jax.vjp(lambda a, b: dot(spec, a, b, binary=which), *ops)
    np.testing.assert_array_equal(y1, y2)
    for g1, g2 in zip(vjp1(ct), vjp2(ct)):
        np.testing.assert_array_equal(g1, g2)
    kept = saved_residuals(lambda a, b: jnp.sum(dot(spec, a, b, binary=which) * ct), *ops)
    spikes = ops[which].shape
    kept = [(a.shape, a.dtype) for a, _ in kept]
    assert (spikes[:-1] + (-(-spikes[-1] // 8),), jnp.uint8) in kept           # ⌈n/8⌉ bytes
    assert (spikes, jnp.dtype(dtype)) not in kept and (ops[1 - which].shape, jnp.dtype(dtype)) in kept


def test_together_is_the_identity_and_its_backward_ties_the_gradients():
    from sresformer_jax.ops.grads import together
    x, w = jnp.arange(6.0).reshape(2, 3), jnp.asarray(0.5)
    loss = lambda x, w: jnp.sum(jnp.sin(x) * w)
    tied = lambda x, w: loss(*together((x, w)))
    chex.assert_trees_all_equal(tied(x, w), loss(x, w))
    chex.assert_trees_all_equal(jax.grad(tied, (0, 1))(x, w), jax.grad(loss, (0, 1))(x, w))
    assert "optimization_barrier" in str(jax.make_jaxpr(jax.grad(tied, (0, 1)))(x, w))
    x = jnp.zeros((2, 16, 16, 3))

    def barriers(remat):                # a model's layers tie their weight gradients in remat regions only
        model = create_model("spikingresformer_cifar", num_classes=2, img_size=16, conv_impl="xla", remat=remat,
                             blocks=(1, 1, 1), planes=(8, 16, 32), num_heads=(1, 2, 4), group_size=8, T=2)
        v = model.init(jax.random.PRNGKey(0), x)
        grad = jax.grad(lambda p: model.apply({**v, "params": p}, x, train=True,
                                              mutable=["batch_stats", "firing_rates"])[0].sum())
        return str(jax.make_jaxpr(grad)(v["params"])).count("optimization_barrier")

    assert barriers("none") == 0 and barriers("block") > 0
