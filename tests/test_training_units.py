"""Optimizer, schedule, losses, mixup, data order and config checks (no model compile)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sresformer_jax import configs
from sresformer_jax.configs import imagenet
from sresformer_jax.data import InMemoryData
from sresformer_jax.data.mixup import mixup_cutmix
from sresformer_jax.training.config import validate_config
from sresformer_jax.training.losses import classification_loss, smooth_targets, topk_correct
from sresformer_jax.training.optim import cosine_schedule, decay_mask, make_optimizer


def test_schedule_matches_timm_per_epoch_values():
    """timm's schedule, stepped per epoch: e < 3: 1e-5 + e(base − 1e-5)/3; e ≥ 3: 1e-5 + ½(base − 1e-5)(1 + cos(πe/epochs))."""
    base, epochs, spe = 1e-3, 320, 10
    sched = cosine_schedule(base, epochs, spe)
    for e in (0, 1, 2, 3, 4, 100, 160, 319):
        want = (1e-5 + e * (base - 1e-5) / 3 if e < 3
                else 1e-5 + 0.5 * (base - 1e-5) * (1 + math.cos(math.pi * e / epochs)))
        for step in (e * spe, e * spe + spe - 1):  # constant within an epoch
            assert float(sched(step)) == pytest.approx(want, rel=1e-5)
    assert float(sched(0)) == pytest.approx(1e-5)
    per_step = cosine_schedule(base, epochs, spe, per_step=True)
    assert float(per_step(15)) == pytest.approx(1e-5 + 1.5 * (base - 1e-5) / 3, rel=1e-5)


def test_adamw_decays_only_kernels_like_torch():
    params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4))}, "bn": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
              "lif": {"w": jnp.zeros(())}}
    mask = decay_mask(params)
    assert mask == {"conv": {"kernel": True}, "bn": {"scale": False, "bias": False}, "lif": {"w": False}}
    cfg = ml_collections.ConfigDict(dict(lr=0.1, weight_decay=0.5, b1=0.9, b2=0.999, eps=1e-8, epochs=10,
                                         warmup_epochs=0, warmup_lr=0.1, min_lr=0.1, schedule_per_step=False))
    tx, _ = make_optimizer(cfg, steps_per_epoch=1)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    # zero gradient: only decoupled decay moves the kernels, p ← p − lr·wd·p (torch AdamW)
    np.testing.assert_allclose(updates["conv"]["kernel"], -0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(updates["bn"]["scale"], 0.0)
    # one step with gradient g: torch AdamW gives −lr·ĝ/(√v̂ + ε) = −lr·sign(g) at step 1
    g = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    updates, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(updates["bn"]["bias"], -0.1 * 0.3 / (0.3 + 1e-8), rtol=2e-5)


def test_label_smoothing_and_loss_on_time_mean():
    y = jnp.array([2, 0])
    t = smooth_targets(y, 4, 0.1)
    np.testing.assert_allclose(t[0], [0.025, 0.025, 0.925, 0.025], rtol=1e-6)
    logits = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 4))
    z = logits.mean(0)
    ref = -(t * jax.nn.log_softmax(z)).sum(-1).mean()
    assert float(classification_loss(logits, t)) == pytest.approx(float(ref), rel=1e-6)
    # TET: mean over t of CE(z_t) (λ = 0), plus λ·MSE(z, φ)
    tet = np.mean([float(-(t * jax.nn.log_softmax(logits[i])).sum(-1).mean()) for i in range(3)])
    assert float(classification_loss(logits, t, tet=True)) == pytest.approx(tet, rel=1e-6)
    lam = 0.3
    want = (1 - lam) * tet + lam * float(jnp.mean((logits - 1.0) ** 2))
    assert float(classification_loss(logits, t, tet=True, tet_lambda=lam)) == pytest.approx(want, rel=1e-6)


def test_topk():
    logits = jnp.array([[[0.1, 0.5, 0.2, 0.9], [3.0, 1.0, 2.0, 0.0]]])  # [T=1, B=2, K=4]
    c = topk_correct(logits, jnp.array([1, 2]), (1, 2))
    np.testing.assert_array_equal(c["top1"], [0, 0])
    np.testing.assert_array_equal(c["top2"], [1, 1])


def _mix_cfg(**kw):
    return ml_collections.ConfigDict(dict(dict(mixup_alpha=0.2, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5), **kw))


@pytest.mark.slow
def test_mixup_cutmix_properties():
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 16, 16, 3))
    y = smooth_targets(jnp.arange(8) % 4, 4, 0.1)
    for seed in range(6):
        xm, ym = mixup_cutmix(jax.random.PRNGKey(seed), x, y, _mix_cfg())
        assert xm.shape == x.shape and ym.shape == y.shape
        np.testing.assert_allclose(ym.sum(-1), 1.0, rtol=1e-5)
        # every mixed image is a per-pixel combination of itself and its reverse partner
        lam = float((ym[0] - y[7])[0] / (y[0] - y[7])[0]) if float((y[0] - y[7])[0]) else None
        if lam is not None:
            assert 0.0 <= lam <= 1.0
    same = [mixup_cutmix(jax.random.PRNGKey(3), x, y, _mix_cfg())[0] for _ in range(2)]
    np.testing.assert_array_equal(same[0], same[1])  # deterministic under a fixed key
    # cutmix only: pixels are either the original or the flipped image's, and λ = 1 − box area
    xc, yc = mixup_cutmix(jax.random.PRNGKey(1), x, y, _mix_cfg(mixup_alpha=0.0))
    from_self = jnp.all(xc == x, axis=-1)
    from_flip = jnp.all(xc == x[::-1], axis=-1)
    assert bool(jnp.all(from_self | from_flip))
    area = float(jnp.mean(~from_self[0]))
    lam = 1 - area
    np.testing.assert_allclose(yc[0], lam * y[0] + (1 - lam) * y[7], rtol=1e-5, atol=1e-6)
    # prob 0: nothing happens
    xn, yn = mixup_cutmix(jax.random.PRNGKey(1), x, y, _mix_cfg(prob=0.0))
    np.testing.assert_array_equal(xn, x)
    np.testing.assert_allclose(yn, y)


def test_data_order_is_a_function_of_step_and_shards_by_process():
    n = 50
    x = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 2, 1), np.float32)
    y = np.arange(n) % 10
    kw = dict(num_classes=10, global_batch=8, eval_batch=8, seed=3)
    full = InMemoryData(x, y, x[:10], y[:10], **kw)
    again = InMemoryData(x, y, x[:10], y[:10], **kw)
    np.testing.assert_array_equal(full.train_batch(7)["label"], again.train_batch(7)["label"])
    epoch0 = np.concatenate([full.train_batch(s)["image"][:, 0, 0, 0] for s in range(full.steps_per_epoch)])
    assert len(set(epoch0.tolist())) == len(epoch0) == 48  # drop-last permutation, no repeats
    halves = [InMemoryData(x, y, x[:10], y[:10], process_index=i, process_count=2, **kw) for i in range(2)]
    joined = np.concatenate([h.train_batch(9)["image"] for h in halves])
    np.testing.assert_array_equal(joined, full.train_batch(9)["image"])
    ev = list(full.eval_batches())
    assert [b["mask"].sum() for b in ev] == [8, 2]
    assert [len(b["label"]) for b in full.eval_batches(pad=False)] == [8, 2]


def _quickstart():
    from sresformer_jax.configs import quickstart
    return quickstart.get_config()


@pytest.mark.parametrize("key,value,match", [
    ("batch_size", 0, "batch_size"),
    ("optim.epochs", 0, "optim.epochs"),
    ("model.num_heads", (1, 3, 4), "num_heads 3 does not divide planes 32"),
    ("model.group_size", 24, "group_size 24"),
    ("model.T", 0, "T must be >= 1"),
    ("model.img_size", 10, "patch size"),
    ("log_every_steps", 0, "log_every_steps"),
    ("model.bn_group_size", 48, "bn_group_size=48 does not divide the 64 images per device"),
    ("model.bn_group_size", 0, "bn_group_size must be a positive int"),
])
def test_bad_config_values_name_the_field(key, value, match):
    c = _quickstart()
    with c.unlocked():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    with pytest.raises(ValueError, match=match):
        validate_config(c)


def test_bad_config_types_and_missing_fields():
    c = _quickstart()
    with c.unlocked():
        del c.optim["lr"]       # ConfigDict itself refuses a str over a float: replace the field
        c.optim.lr = "fast"
        del c.loss["tet"]
    with pytest.raises(ValueError) as e:
        validate_config(c)
    assert "config.optim.lr must be float/int" in str(e.value) and "config.loss.tet is missing" in str(e.value)


def test_every_shipped_config_is_valid():
    import glob
    import importlib.util
    for path in sorted(glob.glob(str(configs.DIR / "*.py"))):
        spec = importlib.util.spec_from_file_location("cfg", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        if not hasattr(mod, "get_config"):
            continue
        c = mod.get_config()
        assert c.model_name and mod.__doc__ and "python train.py" in mod.__doc__, path
        if c.transfer:
            with pytest.raises(ValueError, match="init_from"):
                validate_config(c)
            with c.unlocked():
                c.init_from = "/some/checkpoint"
        validate_config(c)
    assert [imagenet.get_config(a).batch_size for a in ("ti", "s", "m", "l")] == [256, 256, 224, 128]
    for arg, group in imagenet.OFFICIAL_BN_GROUP_SIZE.items():       # 8 GPUs' batches (L: SyncBN, global)
        c = imagenet.get_config(arg)
        assert group is None or group * 8 == c.batch_size
        c.model.bn_group_size = group
        validate_config(c)
    with pytest.raises(ValueError, match="takes one of"):
        imagenet.get_config("xl")
