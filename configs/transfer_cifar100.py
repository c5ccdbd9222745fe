"""CIFAR100 transfer from ImageNet SpikingResformer-S (configs/transfer/cifar100.yaml).

    python train.py --config=configs/transfer_cifar100.py --workdir=runs/transfer_cifar100 \
        --config.dataset.data_dir=DIR --config.init_from=runs/imagenet_s

150 epochs, batch 128, lr 1e-4, wd 0.01, T = 4, 128×128, RandAugment rand-m9-n1-mstd0.4-inc1, flip,
mixup 0.5, label smoothing 0.1; everything but the classifier loaded.
Expected top-1 (paper): 85.98 %.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cifar import cifar_config  # noqa: E402


def get_config(arg=None):
    return cifar_config("cifar100", transfer=True)
