"""The event-driven convolution kernels (event_conv.py, csrc/event_conv.cc): build and cache, selection and
fallback, low precision, vmap, and that the model's CPU training step really runs on them. Their values and
gradients against XLA's convolution (float64, every conv shape class) are in test_layers.py."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sresformer_jax import event_conv, layers


pytestmark = pytest.mark.usefixtures("event_kernels")


def _spikes(shape, rate, dtype=jnp.float32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random(shape) < rate, dtype)


def _normal(shape, dtype=jnp.float32, seed=1):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def test_library_is_built_once_per_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(event_conv.CACHE_ENV, str(tmp_path))
    lib = event_conv.library_path()
    assert lib.parent == tmp_path and lib.exists()
    mtime = lib.stat().st_mtime_ns
    assert event_conv.library_path() == lib and lib.stat().st_mtime_ns == mtime     # cached, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [lib.name]                        # no leftovers


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=600)


NO_COMPILER = dict(CXX="", PATH="/nonexistent")     # nothing to build with, and an empty cache below


def test_without_a_compiler_auto_falls_back_with_a_warning(tmp_path):
    proc = _run("""
        import warnings, jax.numpy as jnp, numpy as np
        from sresformer_jax import layers, event_conv
        x = jnp.asarray(np.random.default_rng(0).random((2, 6, 6, 8)) < 0.3, jnp.float32)
        k = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 4, 8)), jnp.float32)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            y = layers.conv2d(x, k, 1, 1, 2, events=True)
        ref = layers.conv2d(x, k, 1, 1, 2, impl="xla")
        assert float(jnp.max(jnp.abs(y - ref))) < 1e-5
        assert layers.resolve_conv_impl(events=True, dtype=jnp.float32) == "slices"
        print("WARN:", [str(m.message) for m in w])
        """, SRESFORMER_CACHE_DIR=str(tmp_path), **NO_COMPILER)
    assert proc.returncode == 0, proc.stderr
    assert "no C++ compiler" in proc.stdout and "using XLA's convolutions" in proc.stdout


def test_without_a_compiler_on_raises(tmp_path):
    proc = _run("""
        import jax.numpy as jnp
        from sresformer_jax import layers
        layers.conv2d(jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 1, 2, 3)), events=True)
        """, SRESFORMER_CACHE_DIR=str(tmp_path), SRESFORMER_EVENT_CONV="on", **NO_COMPILER)
    assert proc.returncode != 0
    assert "EventConvBuildError" in proc.stderr and "SRESFORMER_EVENT_CONV=off" in proc.stderr


def test_mode_is_validated_and_off_means_xla_path(monkeypatch):
    monkeypatch.setattr(event_conv, "EVENT_CONV", "sometimes")
    with pytest.raises(ValueError, match="SRESFORMER_EVENT_CONV must be one of"):
        event_conv.mode()
    monkeypatch.setattr(event_conv, "EVENT_CONV", "off")
    assert not event_conv.enabled(jnp.float32)
    monkeypatch.setattr(event_conv, "EVENT_CONV", None)
    monkeypatch.setenv(event_conv.ENV, "auto")
    assert event_conv.enabled(jnp.float32) == (jax.default_backend() == "cpu")
    assert not event_conv.enabled(jnp.int32)


def test_kernel_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="does not match 8 input channels in 3 groups"):
        layers.conv2d(jnp.zeros((1, 4, 4, 8)), jnp.zeros((3, 3, 4, 6)), 1, 1, 3, impl="events")


def test_bfloat16_spikes_accumulate_in_float32():
    x = _spikes((4, 10, 10, 128), 0.1, jnp.bfloat16)
    k = _normal((3, 3, 64, 128), jnp.bfloat16)
    y, vjp = jax.vjp(lambda x, k: layers.conv2d(x, k, 1, 1, 2, impl="events"), x, k)
    assert y.dtype == jnp.float32
    ref = layers.conv2d(x.astype(jnp.float32), k.astype(jnp.float32), 1, 1, 2, impl="xla")
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)              # bf16 products are exact in f32
    dy = _normal(y.shape, seed=3)
    dx, dk = vjp(dy)
    assert dx.dtype == dk.dtype == jnp.bfloat16
    _, vjp_ref = jax.vjp(lambda k: layers.conv2d(x.astype(jnp.float32), k, 1, 1, 2, impl="xla"),
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
        y = event_conv.conv(x, k, stride, padding)
        y8 = event_conv.conv(x.astype(event_conv.BYTES), k, stride, padding)
        assert y8.dtype == y.dtype
        np.testing.assert_array_equal(y8, y)
        dy = _normal(y.shape, y.dtype, seed=4)
        np.testing.assert_array_equal(event_conv.kernel_grad(x.astype(event_conv.BYTES), dy, kshape, stride, padding),
                                      event_conv.kernel_grad(x, dy, kshape, stride, padding))


@pytest.mark.parametrize("shape, groups", [((2, 8, 8, 128), 2), ((3, 16, 12, 64), 1), ((2, 6, 10, 192), 3),
                                           ((1, 5, 6, 64), 1)])
def test_dense_conv_winograd_equals_xla(shape, groups):
    """The dense 3×3 kernel (the group-wise conv's input gradient) runs Winograd F(2×2, 3×3) in float32 for
    64-channel groups and even sizes (direct otherwise, the last case): XLA's convolution to 2e-6."""
    x = _normal(shape)
    k = _normal((3, 3, 64, shape[-1]), seed=2)
    y = event_conv.dense_conv(x, k, 1, 1)
    ref = jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       feature_group_count=groups, precision=jax.lax.Precision.HIGHEST)
    assert float(jnp.max(jnp.abs(y - ref)) / jnp.max(jnp.abs(ref))) < 2e-6


def test_vmap_and_jit():
    x = _spikes((3, 2, 6, 6, 8), 0.2)
    k = _normal((3, 3, 8, 4))
    f = jax.jit(jax.vmap(lambda x: layers.conv2d(x, k, 1, 1, impl="events")))
    want = jnp.stack([layers.conv2d(xi, k, 1, 1, impl="xla") for xi in x])
    np.testing.assert_allclose(f(x), want, rtol=1e-5, atol=1e-5)


def test_kernel_gradient_is_deterministic():
    x = _spikes((16, 8, 8, 256), 0.1)
    dy = _normal((16, 8, 8, 256))
    grad = jax.jit(lambda x, dy: event_conv.kernel_grad(x, dy, (3, 3, 64, 256), 1, 1))
    first = np.asarray(grad(x, dy))
    for _ in range(3):
        np.testing.assert_array_equal(np.asarray(grad(x, dy)), first)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="event kernels are CPU-only")
def test_model_training_step_runs_on_the_event_kernels(monkeypatch):
    """Every spike-input convolution of the model (not the image stem) lowers to the event kernels."""
    from sresformer_jax.model import create_model

    model = create_model("spikingresformer_cifar", num_classes=10, img_size=32, T=2,
                         blocks=(1, 1, 1), planes=(32, 64, 128), num_heads=(1, 1, 2), group_size=32)
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
    monkeypatch.setattr(event_conv, "EVENT_CONV", "off")
    assert "sresformer_EventConv" not in jax.jit(jax.grad(loss)).lower(variables).as_text()
