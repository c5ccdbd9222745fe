"""CIFAR100, direct training of Ti* (spikingresformer_cifar), configs/direct_training/cifar100.yaml.

    python train.py --config=configs/cifar100.py --workdir=runs/cifar100 --config.dataset.data_dir=DIR

600 epochs, batch 128, lr 5e-4, wd 0.01, T = 4, 32×32, flip, RandAugment rand-m7-n1-mstd0.5-inc1, mixup 0.5,
label smoothing 0.1.
Expected top-1: not recovered from the paper (see docs/model.md); a third-party reproduction reports 78.29 %.
"""
from sresformer_jax.configs.cifar import cifar_config


def get_config(arg=None):
    return cifar_config("cifar100", transfer=False)
