"""BatchNorm statistics per group of images (``bn_group_size``), as data-parallel runs without SyncBN compute
them: the grouped model equals the model applied to each group on its own (float64), and keeps group 0's
running statistics and firing-rate EMAs."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sresformer_jax.model import STATE_COLLECTIONS, SpikingResformer, init_variables
from sresformer_jax.ops import batch_norm_train

SMALL = dict(blocks=(1, 1, 1), planes=(8, 16, 32), num_heads=(1, 2, 4), patch_sizes=(4, 2, 1), img_size=16,
             T=2, in_channels=3, num_classes=5, prologue="conv3x3", group_size=8, activation="LIF", dvs=False)
DVS = dict(SMALL, activation="PLIF", dvs=True, in_channels=2)


def test_grouped_batch_norm_equals_batch_norm_of_each_group(x64):
    """y, μ, σ² and every gradient of ``batch_norm_train(group_axis=...)`` equal BatchNorm of each group."""
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(k[0], (3, 2, 4, 5, 5, 6), jnp.float64) * 2 + 1        # [T, groups, g, H, W, C]
    scale, bias = jax.random.normal(k[1], (6,), jnp.float64), jax.random.normal(k[2], (6,), jnp.float64)
    w = jax.random.normal(k[3], x.shape, jnp.float64)

    def grouped(x, scale, bias):
        y, mean, var = batch_norm_train(x, scale, bias, 1e-5, False, 1)
        return jnp.sum(y * w) + jnp.sum(mean ** 2) + jnp.sum(jnp.sin(var)), (y, mean, var)

    def each(x, scale, bias):
        outs = [batch_norm_train(x[:, i], scale, bias, 1e-5) for i in range(x.shape[1])]
        y = jnp.stack([o[0] for o in outs], 1)
        mean, var = jnp.stack([o[1] for o in outs]), jnp.stack([o[2] for o in outs])
        return jnp.sum(y * w) + jnp.sum(mean ** 2) + jnp.sum(jnp.sin(var)), (y, mean, var)

    (l1, o1), g1 = jax.value_and_grad(grouped, (0, 1, 2), has_aux=True)(x, scale, bias)
    (l2, o2), g2 = jax.value_and_grad(each, (0, 1, 2), has_aux=True)(x, scale, bias)
    assert o1[1].shape == (2, 6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12), (l1, o1, g1), (l2, o2, g2))


@functools.partial(jax.jit, static_argnums=0)
def _loss_and_state(model, variables, x, y):
    def loss(params):
        logits, state = model.apply({**variables, "params": params}, x, train=True, mutable=list(STATE_COLLECTIONS))
        return optax.softmax_cross_entropy_with_integer_labels(logits.mean(0), y).mean(), (logits, state)
    (value, (logits, state)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    return value, logits, state, grads


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [SMALL, DVS], ids=["static", "dvs"])
def test_grouped_model_equals_the_model_on_each_group(x64, cfg):
    """Two training steps' forwards of a batch of 3 groups of 2 images: the grouped model's logits, loss and
    gradients equal the ungrouped model's on each group (the mean of their losses and gradients), its batch
    statistics and firing rates equal group 0's, and the second step starts from them (EMAs not all zero)."""
    g, groups = 2, 3
    grouped = SpikingResformer.from_config(cfg, dtype=jnp.float64, param_dtype=jnp.float64, conv_impl="xla",
                                           bn_group_size=g)
    plain = SpikingResformer.from_config(cfg, dtype=jnp.float64, param_dtype=jnp.float64, conv_impl="xla")
    shape = (g * groups, cfg["T"], 16, 16, cfg["in_channels"]) if cfg["dvs"] else (g * groups, 16, 16, 3)
    x = jax.random.normal(jax.random.PRNGKey(1), shape, jnp.float64)
    x = (x > 0.5).astype(jnp.float64) if cfg["dvs"] else x
    y = jnp.arange(g * groups) % 5
    variables = init_variables(plain, jax.random.PRNGKey(0), x[:g])
    for _ in range(2):
        loss, logits, state, grads = _loss_and_state(grouped, variables, x, y)
        per_group = [_loss_and_state(plain, variables, x[i * g:(i + 1) * g], y[i * g:(i + 1) * g])
                     for i in range(groups)]
        np.testing.assert_allclose(logits, jnp.concatenate([o[1] for o in per_group], axis=1), rtol=1e-10,
                                   atol=1e-12)
        np.testing.assert_allclose(loss, np.mean([o[0] for o in per_group]), rtol=1e-12)
        mean_grads = jax.tree.map(lambda *a: sum(a) / groups, *[o[3] for o in per_group])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12), grads, mean_grads)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14), state,
                     per_group[0][2])
        other = jax.tree.leaves(per_group[1][2]["batch_stats"])
        assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(state["batch_stats"]), other))
        variables = {**variables, **state}
    rates = jax.tree.leaves(variables["firing_rates"])
    assert rates and all(bool(jnp.all(r > 0)) for r in rates)


def test_bn_group_size_must_divide_the_batch():
    model = SpikingResformer.from_config(SMALL, conv_impl="xla", bn_group_size=3)
    x = jnp.zeros((4, 16, 16, 3))
    with pytest.raises(ValueError, match="bn_group_size=3 does not divide the batch of 4 images"):
        model.init(jax.random.PRNGKey(0), x, train=True)
    with pytest.raises(ValueError, match="bn_group_size must be a positive int"):
        SpikingResformer.from_config(SMALL, conv_impl="xla", bn_group_size=0)
