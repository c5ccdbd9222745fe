"""The compiled CPU kernels (ops/kernels.py, ops/csrc/): build and cache, the handler list, the fallback when they
cannot be built, low precision, vmap, and that the model's CPU training step really runs on them. Their values
and gradients against XLA's convolution (float64, every conv shape class) are in test_layers.py."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sresformer_jax import create_model
from sresformer_jax.ops import conv2d, kernels

pytestmark = pytest.mark.usefixtures("event_kernels")


def _spikes(shape, rate, dtype=jnp.float32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random(shape) < rate, dtype)


def _normal(shape, dtype=jnp.float32, seed=1):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


@pytest.mark.slow
def test_the_prebuild_command_builds_once_per_cache_dir(tmp_path, monkeypatch):
    """``python -m sresformer_jax.ops`` builds into an empty cache directory; later builds find it there."""
    p = subprocess.run([sys.executable, "-m", "sresformer_jax.ops"], capture_output=True, text=True,
                       timeout=600, env={**os.environ, kernels.CACHE_ENV: str(tmp_path)})
    assert p.returncode == 0, p.stderr
    assert "built in" in p.stdout and "EventConvFwdU8F32" in p.stdout
    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path))
    lib = kernels.library_path()
    assert lib.parent == tmp_path and lib.exists()
    mtime = lib.stat().st_mtime_ns
    assert kernels.build() == (lib, None) and lib.stat().st_mtime_ns == mtime       # cached, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [lib.name]                        # no leftovers


def test_the_library_lists_its_handlers(event_kernels):
    """The handler names come from the library itself (csrc/registry.h), one entry per handler it defines."""
    kinds = {"EventConvFwd": ("F32", "F64", "BF16", "U8F32", "U8F64", "U8BF16"),
             "EventConvKernelGrad": ("F32", "F64", "BF16", "U8F32", "U8F64"),
             "DenseConvFwd": ("F32", "F64", "BF16"), "BatchNormStats": ("F32", "F64"),
             "BatchNormGradStats": ("F32", "F64"), "EventMatmulFwd": ("F32", "F64")}
    assert event_kernels.targets == {k + s for k, suffixes in kinds.items() for s in suffixes}
    with pytest.raises(ValueError, match="no compiled kernel DenseConvFwdU8"):
        kernels.dense_conv(jnp.zeros((1, 4, 4, 2), jnp.uint8), jnp.zeros((3, 3, 2, 2)), 1, 1)


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)


NO_COMPILER = dict(CXX="", PATH="/nonexistent", JAX_PLATFORMS="cpu")   # nothing to build with; empty cache below


@pytest.mark.slow
def test_without_a_compiler_auto_falls_back_to_slices_with_one_warning_and_events_is_refused(tmp_path):
    proc = _run("""
        import warnings
        import sresformer_jax as s
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            a = s.create_model("spikingresformer_cifar", num_classes=10, img_size=32)
            b = s.create_model("spikingresformer_cifar", num_classes=10, img_size=32)
        print("IMPL", a.conv_impl, b.conv_impl)
        print("WARN", len(w), [str(m.message) for m in w], flush=True)
        s.create_model("spikingresformer_cifar", num_classes=10, img_size=32, conv_impl="events")
        """, SRESFORMER_CACHE_DIR=str(tmp_path), **NO_COMPILER)
    assert "IMPL slices slices" in proc.stdout, proc.stderr
    assert "WARN 1" in proc.stdout and "no C++ compiler" in proc.stdout and "install g++" in proc.stdout
    assert proc.returncode != 0
    assert "KernelBuildError" in proc.stderr and "conv_impl='slices'" in proc.stderr


@pytest.mark.slow
def test_kernel_calls_before_the_kernels_are_loaded_are_refused(tmp_path):
    proc = _run("""
        import jax, jax.numpy as jnp
        from sresformer_jax.ops import kernels
        jax.jit(lambda x, k: kernels.conv(x, k, 1, 0)).lower(jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 1, 2, 3)))
        """, SRESFORMER_CACHE_DIR=str(tmp_path))
    assert proc.returncode != 0 and "the compiled CPU kernels are not loaded" in proc.stderr


def test_kernel_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="does not match 8 input channels in 3 groups"):
        conv2d(jnp.zeros((1, 4, 4, 8)), jnp.zeros((3, 3, 4, 6)), 1, 1, 3, impl="events")


def test_bfloat16_spikes_accumulate_in_float32():
    x = _spikes((4, 10, 10, 128), 0.1, jnp.bfloat16)
    k = _normal((3, 3, 64, 128), jnp.bfloat16)
    y, vjp = jax.vjp(lambda x, k: conv2d(x, k, 1, 1, 2, impl="events"), x, k)
    assert y.dtype == jnp.float32
    ref = conv2d(x.astype(jnp.float32), k.astype(jnp.float32), 1, 1, 2, impl="xla")
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)              # bf16 products are exact in f32
    dy = _normal(y.shape, seed=3)
    dx, dk = vjp(dy)
    assert dx.dtype == dk.dtype == jnp.bfloat16
    _, vjp_ref = jax.vjp(lambda k: conv2d(x.astype(jnp.float32), k, 1, 1, 2, impl="xla"),
                         k.astype(jnp.float32))
    dk_ref = vjp_ref(dy)[0]
    np.testing.assert_allclose(np.asarray(dk, np.float32), dk_ref, rtol=2e-2, atol=2e-2 * float(
        jnp.max(jnp.abs(dk_ref))))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float64])
def test_byte_spikes_equal_float_spikes(dtype, x64):
    """Spikes as bytes give the float spikes' forward and kernel gradient exactly (the same events, summed
    in the same order), for a float32, bfloat16 or float64 kernel; strided, padded and grouped."""
    for shape, kshape, stride, padding in (((3, 9, 7, 128), (3, 3, 64, 96), 1, 1),
                                           ((2, 8, 8, 70), (3, 3, 70, 24), 2, 1),
                                           ((2, 8, 8, 16), (2, 2, 16, 8), 2, 0)):
        x = _spikes(shape, 0.15, dtype)
        k = _normal(kshape, dtype)
        y = kernels.conv(x, k, stride, padding)
        y8 = kernels.conv(x.astype(kernels.BYTES), k, stride, padding)
        assert y8.dtype == y.dtype
        np.testing.assert_array_equal(y8, y)
        dy = _normal(y.shape, y.dtype, seed=4)
        np.testing.assert_array_equal(kernels.kernel_grad(x.astype(kernels.BYTES), dy, kshape, stride, padding),
                                      kernels.kernel_grad(x, dy, kshape, stride, padding))


@pytest.mark.parametrize("shape, groups", [((2, 8, 8, 128), 2), ((3, 16, 12, 64), 1), ((2, 6, 10, 192), 3),
                                           ((1, 5, 6, 64), 1)])
def test_dense_conv_winograd_equals_xla(shape, groups):
    """The dense 3×3 kernel (the group-wise conv's input gradient) runs Winograd F(2×2, 3×3) in float32 for
    64-channel groups and even sizes (direct otherwise, the last case): XLA's convolution to 2e-6."""
    x = _normal(shape)
    k = _normal((3, 3, 64, shape[-1]), seed=2)
    y = kernels.dense_conv(x, k, 1, 1)
    ref = jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       feature_group_count=groups, precision=jax.lax.Precision.HIGHEST)
    assert float(jnp.max(jnp.abs(y - ref)) / jnp.max(jnp.abs(ref))) < 2e-6


def test_vmap_and_jit():
    x = _spikes((3, 2, 6, 6, 8), 0.2)
    k = _normal((3, 3, 8, 4))
    f = jax.jit(jax.vmap(lambda x: conv2d(x, k, 1, 1, impl="events")))
    want = jnp.stack([conv2d(xi, k, 1, 1, impl="xla") for xi in x])
    np.testing.assert_allclose(f(x), want, rtol=1e-5, atol=1e-5)


def test_kernel_gradient_is_deterministic():
    x = _spikes((16, 8, 8, 256), 0.1)
    dy = _normal((16, 8, 8, 256))
    grad = jax.jit(lambda x, dy: kernels.kernel_grad(x, dy, (3, 3, 64, 256), 1, 1))
    first = np.asarray(grad(x, dy))
    for _ in range(3):
        np.testing.assert_array_equal(np.asarray(grad(x, dy)), first)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="event kernels are CPU-only")
def test_model_training_step_runs_on_the_event_kernels():
    """Every spike-input convolution of the model (not the image stem) lowers to the event kernels."""
    kw = dict(num_classes=10, img_size=32, T=2, blocks=(1, 1, 1), planes=(32, 64, 128), num_heads=(1, 1, 2),
              group_size=32)
    model = create_model("spikingresformer_cifar", conv_impl="events", **kw)
    x = jnp.zeros((2, 32, 32, 3))

    def loss(v):
        out, _ = model.apply(v, x, train=True, mutable=["batch_stats", "firing_rates"])
        return jnp.mean(out)

    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=True))
    hlo = jax.jit(jax.grad(loss)).lower(variables).as_text()
    # spikes read as bytes (binary): the U8 handlers, with the float32 kernel and dy
    fwd, grad = hlo.count("sresformer_EventConvFwdU8F32"), hlo.count("sresformer_EventConvKernelGradU8F32")
    # per stage: DSSA kv + proj, GWFFN up + conv + down; stages 2-3: a downsample
    assert fwd == grad == 3 * 5 + 2, (fwd, grad)
    model = create_model("spikingresformer_cifar", conv_impl="slices", **kw)     # the same model, as matmuls
    assert "sresformer_" not in jax.jit(jax.grad(loss)).lower(variables).as_text()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_binary_matmul_equals_the_dense_product(dtype, x64):
    """The deploy form's DSSA product: a batched matmul over the events of a binary left operand (one kernel per
    batch entry) equals the dense product; float64 exactly up to summation order."""
    s = _spikes((6, 37, 70), 0.12, jnp.uint8, seed=5)
    k = _normal((6, 70, 150), dtype, seed=6)
    got = kernels.binary_matmul(s, k)
    want = jnp.einsum("npc,nco->npo", s.astype(dtype), k, precision="highest")
    assert got.dtype == dtype and got.shape == (6, 37, 150)
    np.testing.assert_allclose(got, want, rtol=1e-12 if dtype == jnp.float64 else 1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="takes spikes as uint8"):
        kernels.binary_matmul(s.astype(dtype), k)
