"""Quickstart (the embedded default): a small SpikingResformer on scikit-learn's handwritten digits.

    python train.py                     # = --config=configs/quickstart.py --workdir=runs/quickstart
    python eval.py                      # evaluates runs/quickstart: accuracy, firing rates, SOPs, energy
    sresformer-train / sresformer-eval  # the same, as installed console scripts

1,797 real 8×8 digits (shipped inside scikit-learn) at their native 8×8 resolution, stratified 80/20
split (1,438 train / 359 held-out); ``--config.dataset.img_size=16 --config.model.img_size=16`` upsamples
(bilinear) to 16×16 at about 4× the compute. The model is the official architecture at a small width (planes 16/32/64,
heads 1/2/4, patches 4/2/1, group size 16, 3×3 stem, LIF, T = 4).
Expected on a 2-core CPU: ≥ 95 % held-out top-1 in under 5 minutes including compilation (the README
has the measured figure).
"""
import ml_collections

from sresformer_jax.configs.common import base_config, neuron_config


def get_config(arg=None):
    c = base_config()
    c.model_name = "spikingresformer_quickstart"
    c.model = ml_collections.ConfigDict(dict(
        blocks=(1, 2, 3), planes=(16, 32, 64), num_heads=(1, 2, 4), patch_sizes=(4, 2, 1), img_size=8,
        T=4, in_channels=1, num_classes=10, prologue="conv3x3", group_size=16, activation="LIF", dvs=False,
        **neuron_config(), conv_impl="auto", bn_group_size=ml_collections.config_dict.placeholder(int),
        attention_chunk=ml_collections.config_dict.placeholder(int)))
    c.dataset = ml_collections.ConfigDict(dict(name="digits", img_size=8, test_fraction=0.2, split_seed=0))
    c.seed = 0
    c.batch_size = 64
    c.eval_batch_size = 128
    c.optim.update(lr=2e-3, epochs=8, warmup_epochs=1, schedule_per_step=True)
    c.log_every_steps = 11
    c.checkpoint_every_steps = 100
    return c
