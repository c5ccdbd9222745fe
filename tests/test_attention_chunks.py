"""DSSA's attention map computed a chunk of rows at a time (``attention_chunk``, ``ops.chunks``): the same loss,
gradients, statistics and spike counts as the whole map, and a backward pass that keeps no map."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sresformer_jax import energy
from sresformer_jax.model import SpikingResformer, calibrate, init_variables
from sresformer_jax.ops.chunks import rows_per_chunk

# 16² → stage maps of N' = 16 rows (HW = 256, 64, 16): chunks of 4 rows split each into four
CFG = {"blocks": (1, 1, 1), "planes": (8, 16, 32), "num_heads": (1, 2, 4), "patch_sizes": (4, 2, 1), "img_size": 16,
       "T": 3, "in_channels": 2, "num_classes": 5, "prologue": "conv3x3", "group_size": 8, "activation": "PLIF",
       "dvs": True}


def _data(dtype):
    x = (jax.random.uniform(jax.random.PRNGKey(1), (4, 3, 16, 16, 2)) < 0.4).astype(dtype) * 3.0
    return x, jnp.arange(4) % 5


def _model(chunk, **kw):
    return SpikingResformer.from_config(CFG, conv_impl="xla", attention_chunk=chunk, **kw)


def _train_step(model, v, x, y):
    def loss(p):
        logits, st = model.apply({**v, "params": p}, x, train=True, mutable=["batch_stats", "firing_rates"])
        return optax.softmax_cross_entropy_with_integer_labels(logits.mean(0), y).mean(), st

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(v["params"])


def test_rows_per_chunk_divides_the_map_and_checks_its_argument():
    assert rows_per_chunk(1024, 128) == 128
    assert rows_per_chunk(196, 128) == 98          # the largest divisor not above the chunk
    assert rows_per_chunk(16, 16) is None and rows_per_chunk(16, None) is None
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(ValueError, match="attention_chunk must be a positive int"):
            rows_per_chunk(16, bad)
    with pytest.raises(ValueError, match="attention_chunk"):
        SpikingResformer.from_config(CFG, conv_impl="xla", attention_chunk=0)


@pytest.mark.parametrize("bn_group_size", [None, 2], ids=["batch", "groups"])
def test_chunked_map_gives_the_whole_maps_loss_gradients_and_statistics(x64, bn_group_size):
    x, y = _data(jnp.float64)
    v = init_variables(_model(None), jax.random.PRNGKey(0), x)
    (l0, s0), g0 = _train_step(_model(None, bn_group_size=bn_group_size), v, x, y)
    (l1, s1), g1 = _train_step(_model(4, bn_group_size=bn_group_size), v, x, y)
    np.testing.assert_allclose(l1, l0, rtol=1e-12)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9 if a.dtype == np.float64 else 1e-5,
                                                         atol=1e-12), (g1, s1), (g0, s0))   # float32 parameters
    assert float(optax.global_norm(g0)) > 0
    assert float(jnp.abs(g0["stage1_dssa1"]["lif_attn"]["w"])) > 0          # PLIF's own gradient, through the scan


def test_chunked_map_in_bfloat16_and_remat_block():
    x, y = _data(jnp.float32)
    v = init_variables(_model(None), jax.random.PRNGKey(0), x)
    (l0, _), g0 = _train_step(_model(None, dtype=jnp.bfloat16), v, x, y)
    (l1, _), g1 = _train_step(_model(4, dtype=jnp.bfloat16, remat="block"), v, x, y)
    np.testing.assert_allclose(l1, l0, rtol=2e-2)
    cos = optax.cosine_similarity(jnp.concatenate([a.ravel() for a in jax.tree.leaves(g0)]),
                                  jnp.concatenate([a.ravel() for a in jax.tree.leaves(g1)]))
    assert float(cos) > 0.99


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_chunked_map_counts_the_same_spikes(x64, train):
    x, _ = _data(jnp.float64)
    v = init_variables(_model(None), jax.random.PRNGKey(0), x)
    if not train:                           # the initial running statistics: a stronger input makes neurons fire
        x = x * 20
        v = calibrate(_model(None), v, x)
    outs = [_model(c).apply(v, x, train=train, mutable=[energy.SPIKE_COUNTS, "batch_stats", "firing_rates"])
            for c in (None, 4)]
    np.testing.assert_allclose(outs[1][0], outs[0][0], rtol=1e-12)
    c0, c1 = (jax.tree.map(np.asarray, o[1][energy.SPIKE_COUNTS]) for o in outs)
    jax.tree.map(np.testing.assert_array_equal, c1, c0)
    if train:                               # (at evaluation this untrained map stays silent)
        assert sum(int(c0[f"stage{i}_dssa1"]["lif_attn"]["total"][0]) for i in (1, 2, 3)) > 0


def test_chunked_backward_keeps_no_attention_map():
    """What the backward pass keeps (the forward's residuals): stage 1's map [T, B, h, N' = 16, HW = 256] (as
    values or bits) without chunks; no map and no chunk of one with them."""
    x, _ = _data(jnp.float32)
    v = init_variables(_model(None), jax.random.PRNGKey(0), x)

    def maps_kept(model):
        def loss(p):
            logits, _ = model.apply({**v, "params": p}, x, train=True, mutable=["batch_stats", "firing_rates"])
            return logits.sum()
        _, vjp = jax.vjp(loss, v["params"])
        return [a.shape for a in jax.tree.leaves(vjp) if getattr(a, "ndim", 0) == 5 and a.shape[:3] == (3, 4, 1)
                and a.shape[-1] in (256, 32)]                       # HW columns, or HW/8 bytes of bits

    assert maps_kept(_model(None))
    assert not maps_kept(_model(4))
