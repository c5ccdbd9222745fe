"""CIFAR100 transfer from ImageNet SpikingResformer-S (configs/transfer/cifar100.yaml).

    python train.py --config=configs/transfer_cifar100.py --workdir=runs/transfer_cifar100 \
        --config.dataset.data_dir=DIR --config.init_from=runs/imagenet_s

150 epochs, batch 128, lr 1e-4, wd 0.01, T = 4, 128×128, RandAugment rand-m9-n1-mstd0.4-inc1, flip,
mixup 0.5, label smoothing 0.1; everything but the classifier loaded.
Expected top-1 (paper): 85.98 %.
"""
from sresformer_jax.configs.cifar import cifar_config


def get_config(arg=None):
    return cifar_config("cifar100", transfer=True)
