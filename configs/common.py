"""Fields every training config has (the schema checked by ``sresformer_jax.training.config``).

Not a config to run: the recipes beside it start from ``base_config()`` and set the numbers of their recipe.
"""
import ml_collections

from sresformer_jax.model import NEURON_DEFAULTS, config_for


def neuron_config(**overrides) -> dict:
    """The neuron's fields (sresformer_jax.layers.NeuronSpec) at the official values: τ 2, threshold 1, the ATan
    surrogate (α None: its default, 2), a hard reset to 0, detached. ``--config.model.v_reset=None`` gives a soft
    reset, ``--config.model.surrogate_alpha=3`` another sharpness."""
    fields = dict(tau=2.0, v_threshold=1.0, surrogate="atan", detach_reset=True,
                  surrogate_alpha=ml_collections.FieldReference(None, field_type=float),
                  v_reset=ml_collections.FieldReference(0.0, field_type=float))
    for k, v in overrides.items():
        if isinstance(fields[k], ml_collections.FieldReference):
            fields[k].set(v)
        else:
            fields[k] = v
    return fields


def model_config(variant: str, conv_impl: str = "auto", bn_group_size: int | None = None,
                 **overrides) -> ml_collections.ConfigDict:
    """An official variant's constructor arguments (sresformer_jax.model.VARIANTS) with overrides, the
    lowering ``conv_impl`` ("auto", "xla", "slices" or "events"; resolved when the model is built) and
    ``bn_group_size`` (images per BatchNorm statistics group in training; None: the whole global batch); the
    config's ``attention_chunk`` (DSSA's attention-map rows computed at a time, for high resolutions; None: all).
    Sequences are tuples so that they can be overridden on the command line (--config.model.num_heads='(1,3,6)')."""
    cfg = config_for(variant, **overrides)
    neuron = neuron_config(**{k: cfg.pop(k) for k in NEURON_DEFAULTS})
    group = ml_collections.config_dict.placeholder(int) if bn_group_size is None else bn_group_size
    return ml_collections.ConfigDict({**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()},
                                      **neuron, "conv_impl": conv_impl, "bn_group_size": group,
                                      "attention_chunk": ml_collections.config_dict.placeholder(int)})


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model_name = ""
    c.model = ml_collections.ConfigDict()
    c.dataset = ml_collections.ConfigDict(dict(name="", data_dir=ml_collections.config_dict.placeholder(str)))
    c.seed = 12450                    # the official seed
    c.batch_size = 128                # global batch (all devices, all hosts)
    c.eval_batch_size = 128
    c.precision = "float32"           # "bfloat16" / "float16": that compute, float32 master weights
    # float16 only: dynamic loss scaling with PyTorch GradScaler's defaults (sresformer_jax.training.loss_scale)
    c.loss_scale = ml_collections.ConfigDict(dict(init_scale=2.0 ** 16, growth_interval=2000, growth_factor=2.0,
                                                  backoff_factor=0.5))
    c.remat = "none"                  # "block" | "convs": jax.checkpoint per layer and stem (model.REMAT_POLICIES)
    c.optim = ml_collections.ConfigDict(dict(
        lr=1e-3, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, epochs=300, warmup_epochs=3, warmup_lr=1e-5,
        min_lr=1e-5, schedule_per_step=False))   # timm cosine stepped once per epoch (official)
    c.loss = ml_collections.ConfigDict(dict(label_smoothing=0.1, tet=False, tet_phi=1.0, tet_lambda=0.0))
    c.mixup = ml_collections.ConfigDict(dict(enabled=False, mixup_alpha=0.0, cutmix_alpha=0.0, prob=1.0,
                                             switch_prob=0.5))
    c.total_steps = -1                # -1: optim.epochs × steps per epoch
    c.log_every_steps = 50
    c.eval_every_epochs = 1           # the official code evaluates (and keeps the best) after every epoch
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 2
    c.data_dir = ml_collections.config_dict.placeholder(str)   # shorthand for dataset.data_dir
    c.init_from = ml_collections.config_dict.placeholder(str)  # checkpoint to fine-tune from (transfer)
    c.transfer = False                # True: init_from is required (the transfer_* recipes)
    c.progress_bar = True
    return c
