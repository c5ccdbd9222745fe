"""Jitted, sharded train and eval steps.

The batch is sharded over the mesh's ``data`` axis, the state replicated; XLA inserts the collectives,
so BatchNorm and firing-rate statistics are computed over the *global* batch (like SyncBN), and
gradients are the global-batch mean.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from ..model import STATE_COLLECTIONS
from ..neurons import SPIKE_COUNTS
from .loss_scale import all_finite, is_dynamic, select_tree
from .losses import classification_loss, smooth_targets, topk_correct
from .state import TrainState

DATA_AXIS = "data"


def make_mesh() -> jax.sharding.Mesh:
    """One data-parallel axis over every device of every process (Auto axis: XLA's partitioner places
    the collectives; room is left for an FSDP/model axis)."""
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def shardings(mesh):
    """(replicated, batch-sharded) NamedShardings."""
    return NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))


def global_batch(local: dict, data_sharding) -> dict:
    """Host-local numpy batch → global jax arrays sharded over the data axis (every host feeds its part)."""
    return {k: jax.make_array_from_process_local_data(data_sharding, v) for k, v in local.items()}


def training_loss(model, state_variables: dict, images, targets, loss_config):
    """The training loss as a function of the parameters: params → (loss, (logits, the model's new state)), the
    training-mode forward from ``state_variables`` (batch_stats, firing_rates) and the loss of ``loss_config``
    (``config.loss``) on ``targets`` (smoothed, maybe mixed)."""
    def f(params):
        logits, new_state = model.apply({"params": params, **state_variables}, images, train=True,
                                        mutable=list(STATE_COLLECTIONS))
        loss = classification_loss(logits, targets, loss_config.tet, loss_config.tet_phi, loss_config.tet_lambda)
        return loss, (logits, new_state)
    return f


def train_step(state: TrainState, batch: dict, *, model, tx, schedule, config) -> tuple[TrainState, dict]:
    """One optimizer step: forward (train mode) → loss on T-averaged logits → grads → AdamW. In float16 the loss
    is scaled by ``state.loss_scale`` and a step with a non-finite gradient is skipped (``loss_scale``)."""
    rng = jax.random.fold_in(state.rng, state.step)
    labels = batch["label"]
    images = batch["image"]
    targets = smooth_targets(labels, model.num_classes, config.loss.label_smoothing)
    if config.mixup.enabled:
        from ..data.mixup import mixup_cutmix
        images, targets = mixup_cutmix(rng, images, targets, config.mixup)

    loss_scale = state.loss_scale
    loss_of = training_loss(model, {"batch_stats": state.batch_stats, "firing_rates": state.firing_rates},
                            images, targets, config.loss)

    def loss_fn(params):
        loss, (logits, new_state) = loss_of(params)
        return loss_scale.scale_loss(loss), (loss, logits, new_state)

    (_, (loss, logits, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = loss_scale.unscale(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(params=state.params, updates=updates)
    stats = {"batch_stats": new_state["batch_stats"], "firing_rates": new_state["firing_rates"]}
    correct = topk_correct(logits, labels, (1,))
    metrics = {"loss": loss, "top1": correct["top1"].mean(), "lr": schedule(state.step)}
    if is_dynamic(loss_scale):
        # GradScaler: a step with a non-finite gradient is skipped (parameters and optimizer state kept) and the
        # scale backs off; the forward's statistics are kept, as PyTorch's are, unless they are not finite.
        finite = all_finite(grads)
        params = select_tree(finite, params, state.params)
        opt_state = select_tree(finite, opt_state, state.opt_state)
        old = {"batch_stats": state.batch_stats, "firing_rates": state.firing_rates}
        stats = select_tree(all_finite(stats), stats, old)
        metrics.update(grad_norm=jnp.where(finite, optax.global_norm(grads), 0.0),
                       loss_scale=loss_scale.scale, skipped_step=1.0 - finite.astype(jnp.float32))
        loss_scale = loss_scale.adjust(finite)
    else:
        metrics["grad_norm"] = optax.global_norm(grads)
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, loss_scale=loss_scale, **stats)
    return new, metrics


def eval_step(variables: dict, batch: dict, *, model, count_spikes: bool = False):
    """Sums over the (masked) batch: loss, top-1, top-5 correct, count; with ``count_spikes`` also the
    ``spike_counts`` collection (for firing rates and SOPs; padded rows must be all-zero inputs' — see
    ``evaluate``)."""
    if count_spikes:
        logits, st = model.apply(variables, batch["image"], train=False, mutable=[SPIKE_COUNTS])
    else:
        logits, st = model.apply(variables, batch["image"], train=False), None
    mask = batch["mask"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32).mean(0), batch["label"])
    correct = topk_correct(logits, batch["label"], (1, 5))
    sums = {"loss": jnp.sum(loss * mask), "top1": jnp.sum(correct["top1"] * mask),
            "top5": jnp.sum(correct["top5"] * mask), "count": jnp.sum(mask)}
    return (sums, st[SPIKE_COUNTS]) if count_spikes else sums


def jit_steps(model, tx, schedule, config, mesh):
    """(train_step, eval_step) jitted with explicit shardings; the train state is donated."""
    replicated, data = shardings(mesh)
    p_train = jax.jit(functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=config),
                      in_shardings=(replicated, data), out_shardings=(replicated, replicated),
                      donate_argnums=0)
    p_eval = jax.jit(functools.partial(eval_step, model=model), in_shardings=(replicated, data),
                     out_shardings=replicated)
    return p_train, p_eval
