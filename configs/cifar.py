"""CIFAR10/100 recipes (configs/direct_training and configs/transfer of the official code).

Not run directly: configs/cifar10.py, cifar100.py, transfer_cifar10.py and transfer_cifar100.py call
``cifar_config``.
"""
import ml_collections

from sresformer_jax.configs.common import base_config, model_config

STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
         "cifar100": ((129.3 / 255, 124.1 / 255, 112.4 / 255), (68.2 / 255, 65.4 / 255, 70.4 / 255))}
CLASSES = {"cifar10": 10, "cifar100": 100}


def cifar_config(name: str, transfer: bool) -> ml_collections.ConfigDict:
    mean, std = STATS[name]
    c = base_config()
    if transfer:   # ImageNet SpikingResformer-S (its ImageNet stem), 128×128, fine-tune everything
        c.model_name = "spikingresformer_s"
        c.model = model_config("spikingresformer_s", num_classes=CLASSES[name], img_size=128, T=4)
        img, randaug = 128, "rand-m9-n1-mstd0.4-inc1"
        c.optim.update(lr=1e-4, weight_decay=0.01, epochs=100 if name == "cifar10" else 150)
        c.transfer = True  # needs --config.init_from=PATH (an ImageNet S checkpoint, ours or converted)
    else:          # Ti* (spikingresformer_cifar): 3×3 stem, no max-pool, 32×32
        c.model_name = "spikingresformer_cifar"
        c.model = model_config("spikingresformer_cifar", num_classes=CLASSES[name], img_size=32, T=4)
        img, randaug = 32, "rand-m7-n1-mstd0.5-inc1"
        c.optim.update(lr=5e-4, weight_decay=0.01, epochs=600)
    c.dataset = ml_collections.ConfigDict(dict(
        name=name, data_dir=ml_collections.config_dict.placeholder(str), img_size=img,
        train_scale=(1.0, 1.0), train_ratio=(1.0, 1.0), interpolation="bicubic", hflip=0.5,
        randaugment=randaug, crop_pct=1.0, mean=mean, std=std,
        source="auto", workers=-1,    # auto: train/ class folders if present, else TFDS; -1: all cores
        skip_corrupt=False))          # True: skip (and count) damaged image files instead of stopping
    c.batch_size = 128
    c.eval_batch_size = 256
    c.loss.label_smoothing = 0.1
    c.mixup.update(enabled=True, mixup_alpha=0.5, cutmix_alpha=0.0, prob=1.0, switch_prob=0.5)
    return c
