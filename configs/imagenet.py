"""ImageNet-1k, the paper's main results (configs/main/spikingresformer_{ti,s,m,l}.yaml of the official code).

    python train.py --config=configs/imagenet.py:ti --workdir=runs/imagenet_ti --config.dataset.data_dir=DIR
    python eval.py --workdir=runs/imagenet_ti

arg: ti | s | m | l. 320 epochs, AdamW, cosine (3 warm-up epochs from 1e-5, floor 1e-5, per epoch), weight
decay 0.01, T = 4, 224×224, RandomResizedCrop + flip + RandAugment + mixup 0.2 / cutmix 1.0 + label smoothing
0.1; evaluation resize 235 (crop_pct 0.95) + center crop 224. Batch and lr as the official 8-GPU runs
(global batch = 8 × per-GPU batch; lr not rescaled in the official code).

Expected top-1 (paper, T = 4, 224²): Ti 74.34 %, S 75.95 %, M 77.24 %, L 78.77 % (L at 288²: 79.40 %).
Energy (paper): Ti 2.73 G SOPs = 2.46 mJ; M 6.07 G SOPs = 5.46 mJ.
BatchNorm statistics are over the whole global batch by default. The official Ti/S/M runs had none synchronised:
each of the 8 GPUs normalised with its own 32 (M: 28) images, and rank 0's running statistics and firing rates
were kept; L used SyncBN. That recipe is ``OFFICIAL_BN_GROUP_SIZE`` and is selected by override, on any number
of devices:

    python train.py --config=configs/imagenet.py:ti --config.model.bn_group_size=32 ...
"""
import ml_collections

from sresformer_jax.configs.common import base_config, model_config

RECIPES = {  # batch per GPU × 8, lr, RandAugment
    "ti": (256, 1e-3, "rand-m7-mstd0.5-inc1"),
    "s": (256, 1e-3, "rand-m7-mstd0.5-inc1"),
    "m": (224, 8e-4, "rand-m9-mstd0.5-inc1"),
    "l": (128, 5e-4, "rand-m9-n3-mstd0.5-inc1"),
}

# images per BatchNorm statistics group in the official runs (per-GPU batch without SyncBN; None: SyncBN)
OFFICIAL_BN_GROUP_SIZE = {"ti": 32, "s": 32, "m": 28, "l": None}


def get_config(arg="ti"):
    arg = arg or "ti"
    if arg not in RECIPES:
        raise ValueError(f"configs/imagenet.py takes one of {sorted(RECIPES)}, got {arg!r}")
    batch, lr, randaug = RECIPES[arg]
    c = base_config()
    c.model_name = f"spikingresformer_{arg}"
    c.model = model_config(c.model_name, num_classes=1000, img_size=224, T=4)
    c.dataset = ml_collections.ConfigDict(dict(
        name="imagenet2012", data_dir=ml_collections.config_dict.placeholder(str), img_size=224,
        train_scale=(0.08, 1.0), train_ratio=(3 / 4, 4 / 3), interpolation="bicubic", hflip=0.5,
        randaugment=randaug, crop_pct=0.95, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        source="auto", workers=-1,    # auto: train/ + val/ class folders if present, else TFDS; -1: all cores
        skip_corrupt=False))          # True: skip (and count) damaged image files instead of stopping
    c.batch_size = batch
    c.eval_batch_size = 256
    c.optim.update(lr=lr, weight_decay=0.01, epochs=320)
    c.loss.label_smoothing = 0.1
    c.mixup.update(enabled=True, mixup_alpha=0.2, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5)
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2000
    return c
