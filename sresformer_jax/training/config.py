"""Checks a training config before anything is compiled; errors name the field and the fix."""
from __future__ import annotations

import jax

from ..model import CONFIG_KEYS, PRECISIONS, TRAINING_MODEL_KEYS, SpikingResformer, remat_policy
from ..ops import CONV_IMPLS

# field → accepted types (int where a float is expected is fine)
SCHEMA = {
    "model_name": (str,), "seed": (int,), "batch_size": (int,), "eval_batch_size": (int,),
    "precision": (str,), "total_steps": (int,), "log_every_steps": (int,), "eval_every_epochs": (int,),
    "checkpoint_every_steps": (int,), "keep_checkpoints": (int,), "init_from": (str, type(None)),
    "progress_bar": (bool,), "transfer": (bool,), "remat": (str, bool),
    "data_dir": (str, type(None)),
    "optim.lr": (float, int), "optim.weight_decay": (float, int), "optim.b1": (float,), "optim.b2": (float,),
    "optim.eps": (float,), "optim.epochs": (int,), "optim.warmup_epochs": (int,),
    "optim.warmup_lr": (float, int), "optim.min_lr": (float, int), "optim.schedule_per_step": (bool,),
    "loss.label_smoothing": (float, int), "loss.tet": (bool,), "loss.tet_phi": (float, int),
    "loss.tet_lambda": (float, int),
    "mixup.enabled": (bool,), "mixup.mixup_alpha": (float, int), "mixup.cutmix_alpha": (float, int),
    "mixup.prob": (float, int), "mixup.switch_prob": (float, int),
    "dataset.name": (str,),
    "loss_scale.init_scale": (float, int), "loss_scale.growth_interval": (int,),
    "loss_scale.growth_factor": (float, int), "loss_scale.backoff_factor": (float,),
}


def _get(config, dotted):
    node = config
    for part in dotted.split("."):
        if part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def validate_config(config, device_count: int | None = None) -> None:
    """Raises ValueError naming the first bad field: missing, wrong type, or inconsistent. ``device_count``: the
    devices the batch is split over (default: every device of every process)."""
    problems = []
    for key, types in SCHEMA.items():
        try:
            value = _get(config, key)
        except KeyError:
            problems.append(f"config.{key} is missing")
            continue
        if isinstance(value, bool) and bool not in types:
            problems.append(f"config.{key} must be {'/'.join(t.__name__ for t in types)}, got bool {value!r}")
        elif not isinstance(value, types):
            problems.append(f"config.{key} must be {'/'.join(t.__name__ for t in types)}, "
                            f"got {type(value).__name__} {value!r}")
    if "model" not in config:
        problems.append("config.model is missing (the model config: " + ", ".join(CONFIG_KEYS) + ")")
    if problems:
        raise ValueError("bad config:\n  " + "\n  ".join(problems))
    unknown = sorted(set(config.model.keys()) - set(CONFIG_KEYS) - set(TRAINING_MODEL_KEYS))
    if unknown:
        raise ValueError(f"config.model has unknown keys {unknown}; allowed: "
                         f"{list(CONFIG_KEYS) + list(TRAINING_MODEL_KEYS)}")
    try:
        model_config = config.model.to_dict()
        conv_impl = model_config.pop("conv_impl", "auto")
        if conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
        SpikingResformer.from_config(model_config, conv_impl="xla",          # the architecture's checks
                                     bn_group_size=model_config.pop("bn_group_size", None),
                                     attention_chunk=model_config.pop("attention_chunk", None))
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.model: {e}") from e
    if "img_size" in config.dataset and config.dataset.img_size != config.model.img_size:
        raise ValueError(f"config.dataset.img_size={config.dataset.img_size} but config.model.img_size="
                         f"{config.model.img_size}: set both to the input resolution")
    n = jax.device_count() if device_count is None else device_count
    for key in ("batch_size", "eval_batch_size"):
        if config[key] < 1 or config[key] % n:
            raise ValueError(f"config.{key}={config[key]} must be a positive multiple of the {n} devices "
                             f"(global batch, sharded over devices); e.g. --config.{key}={max(n, config[key] // n * n)}")
    group = config.model.get("bn_group_size")
    if group is not None and (config.batch_size // n) % group:
        raise ValueError(f"config.model.bn_group_size={group} does not divide the {config.batch_size // n} images "
                         f"per device (config.batch_size={config.batch_size} over {n} devices): BatchNorm groups are "
                         f"that many images of each device's batch; choose a divisor of it (or leave it unset for "
                         f"statistics over the whole global batch)")
    for key in ("log_every_steps", "eval_every_epochs", "checkpoint_every_steps", "keep_checkpoints"):
        if config[key] < 1:
            raise ValueError(f"config.{key} must be >= 1, got {config[key]}")
    if config.transfer and not config.init_from:
        raise ValueError("config.init_from is required by this transfer recipe: pass "
                         "--config.init_from=PATH (an ImageNet SpikingResformer-S training workdir or a "
                         "checkpoint converted with python -m sresformer_jax.convert)")
    try:
        remat_policy(config.remat)
    except ValueError as e:
        raise ValueError(f"config.{e}") from None
    if config.precision not in PRECISIONS:
        raise ValueError(f"config.precision must be one of {sorted(PRECISIONS)}, got {config.precision!r}")
    if config.precision == "float16":
        from .loss_scale import make_loss_scale
        make_loss_scale("float16", config.loss_scale)                    # its checks
    if config.optim.epochs < 1:
        raise ValueError(f"config.optim.epochs must be >= 1, got {config.optim.epochs}")


def check_data_fits(data, config) -> None:
    """The dataset's classes and example shape agree with the model config (before compiling)."""
    if data.num_classes != config.model.num_classes:
        raise ValueError(f"config.model.num_classes={config.model.num_classes} but {config.dataset.name} has "
                         f"{data.num_classes} classes; pass --config.model.num_classes={data.num_classes}")
    event = len(data.input_shape) == 4
    if event != bool(config.model.get("dvs", False)):
        raise ValueError(f"{config.dataset.name} gives {'event frames [T, H, W, C]' if event else 'images [H, W, C]'}"
                         f" but config.model.dvs={config.model.get('dvs', False)}; set --config.model.dvs={event}")
    if event and data.input_shape[0] != config.model.T:
        raise ValueError(f"config.dataset.T={data.input_shape[0]} frames but config.model.T={config.model.T}; "
                         "set both to the number of time steps")
