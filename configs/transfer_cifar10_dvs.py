"""CIFAR10-DVS transfer from ImageNet SpikingResformer-S, configs/transfer/cifar10dvs.yaml.

    python train.py --config=configs/transfer_cifar10_dvs.py --workdir=runs/transfer_cifar10_dvs --config.dataset.data_dir=DIR \
        --config.init_from=runs/imagenet_s

100 epochs, batch 48, lr 4e-5, wd 0.01, T = 10, 128×128 frames, DVSAugment, plain CE; everything but the classifier loaded.
Expected top-1: 84.8 % (third-party tables).
"""
from sresformer_jax.configs.dvs import dvs_config


def get_config(arg=None):
    return dvs_config("cifar10_dvs", transfer=True)
