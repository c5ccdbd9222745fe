"""Jitted train and eval steps, data-parallel over a mesh's data axis: each device computes only its shard.

Each step is a per-device body run under ``jax.shard_map``: the batch is split over the data axis, the state
replicated. The model is given the axis (``SpikingResformer.axis_name``), so BatchNorm's and DSSA's statistics are
combined over the devices with channel-sized collectives and stay those of the whole global batch (as SyncBN), and
groups of ``bn_group_size`` images stay within a device. The body averages the gradients over the devices (one
all-reduce of parameter size); the optimizer update then runs on every device alike. No collective moves
activations (``tests/test_data_parallel.py`` counts the compiled program's collectives and FLOPs).

Why ``shard_map`` rather than letting XLA partition the global-batch program: the model folds the time axis into the
batch ([T, B] → [T·B]) for every convolution; with B sharded and T the major axis, the merged axis cannot stay
sharded, so the partitioner gathered the activations and every device computed the whole batch. The per-device body
makes the work division explicit, lets the compiled CPU kernels run on local shards, and is what XLA:TPU compiles
(the global program aborted its compiler).

Mixup and cutmix pair each image with the reversed order of its own device's batch and draw λ per device, as the
official per-GPU data loaders did; with one device that is the whole batch.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from ..model import STATE_COLLECTIONS
from ..neurons import SPIKE_COUNTS
from ..ops.collectives import mean_over_devices, sum_over_devices
from .loss_scale import all_finite, is_dynamic, select_tree
from .losses import classification_loss, smooth_targets, topk_correct
from .state import TrainState

DATA_AXIS = "data"


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """One data-parallel axis over ``devices`` (default: every device of every process), in the order
    ``jax.make_mesh`` gives them (the interconnect's, on TPU)."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def data_axis(mesh: jax.sharding.Mesh) -> str:
    """The name of the mesh's one (data) axis."""
    if len(mesh.axis_names) != 1:
        raise ValueError(f"the steps shard the batch over a mesh with one data axis, got axes {mesh.axis_names}")
    return mesh.axis_names[0]


def shardings(mesh):
    """(replicated, batch-sharded) NamedShardings."""
    return NamedSharding(mesh, P()), NamedSharding(mesh, P(data_axis(mesh)))


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
    """One optimizer step on this device's shard: forward (train mode) → loss on T-averaged logits → gradients,
    averaged over ``model.axis_name``'s devices → AdamW. In float16 the loss is scaled by ``state.loss_scale`` and a
    step with a non-finite gradient is skipped (``loss_scale``). Without an axis it is the whole batch's step."""
    axis = model.axis_name
    rng = jax.random.fold_in(state.rng, state.step)
    if axis is not None:
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis))        # mixup's draws: one per device
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
    grads = mean_over_devices(loss_scale.unscale(grads), axis)         # the global batch's mean gradient
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(params=state.params, updates=updates)
    stats = {"batch_stats": new_state["batch_stats"], "firing_rates": new_state["firing_rates"]}
    loss, top1 = mean_over_devices((loss, topk_correct(logits, labels, (1,))["top1"].mean()), axis)
    metrics = {"loss": loss, "top1": top1, "lr": schedule(state.step)}
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
    """Sums over the (masked) batch, over all of ``model.axis_name``'s devices: loss, top-1, top-5 correct, count;
    with ``count_spikes`` also the ``spike_counts`` collection (for firing rates and SOPs; padded rows must be
    all-zero inputs' — see ``evaluate``)."""
    if count_spikes:
        logits, st = model.apply(variables, batch["image"], train=False, mutable=[SPIKE_COUNTS])
    else:
        logits, st = model.apply(variables, batch["image"], train=False), None
    mask = batch["mask"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32).mean(0), batch["label"])
    correct = topk_correct(logits, batch["label"], (1, 5))
    sums = {"loss": jnp.sum(loss * mask), "top1": jnp.sum(correct["top1"] * mask),
            "top5": jnp.sum(correct["top5"] * mask), "count": jnp.sum(mask)}
    if count_spikes:
        return sum_over_devices((sums, st[SPIKE_COUNTS]), model.axis_name)
    return sum_over_devices(sums, model.axis_name)


def per_device(fn: Callable, mesh: jax.sharding.Mesh) -> Callable:
    """``fn(replicated, batch)`` as a per-device body over the mesh's data axis: the first argument replicated, the
    batch split; its outputs are replicated (``fn`` combines them over the axis itself)."""
    axis = data_axis(mesh)
    return jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(axis)), out_specs=P(), check_vma=False)


@dataclasses.dataclass(frozen=True)
class EvalStep:
    """A jitted evaluation step: ``sharded`` splits a batch over the devices; ``whole`` runs one replicated batch
    that the devices do not divide (a last, shorter batch)."""
    sharded: Callable
    whole: Callable

    def __call__(self, variables, batch):
        return self.sharded(variables, batch)


def jit_eval(fn: Callable, mesh: jax.sharding.Mesh) -> EvalStep:
    """``fn(replicated, batch, axis_name)``, whose outputs are sums over ``axis_name``'s devices, jitted per device
    over ``mesh`` (and, with no axis, on one replicated batch)."""
    replicated, data = shardings(mesh)
    sharded = jax.jit(per_device(functools.partial(fn, axis_name=data_axis(mesh)), mesh),
                      in_shardings=(replicated, data), out_shardings=replicated)
    whole = jax.jit(functools.partial(fn, axis_name=None), in_shardings=(replicated, replicated),
                    out_shardings=replicated)
    return EvalStep(sharded, whole)


def jit_eval_step(model, mesh, count_spikes: bool = False) -> EvalStep:
    """``eval_step`` jitted per device over ``mesh``."""
    def fn(variables, batch, axis_name):
        return eval_step(variables, batch, model=model.clone(axis_name=axis_name), count_spikes=count_spikes)
    return jit_eval(fn, mesh)


def jit_train_step(model, tx, schedule, config, mesh):
    """``train_step`` jitted per device over ``mesh``, with explicit shardings; the train state is donated."""
    replicated, data = shardings(mesh)
    local = model.clone(axis_name=data_axis(mesh))
    body = per_device(functools.partial(train_step, model=local, tx=tx, schedule=schedule, config=config), mesh)
    return jax.jit(body, in_shardings=(replicated, data), out_shardings=(replicated, replicated), donate_argnums=0)


def jit_steps(model, tx, schedule, config, mesh):
    """(train_step, eval_step) jitted per device over ``mesh``: what the training loop runs."""
    return jit_train_step(model, tx, schedule, config, mesh), jit_eval_step(model, mesh)
