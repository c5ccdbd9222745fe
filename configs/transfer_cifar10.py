"""CIFAR10 transfer from ImageNet SpikingResformer-S (configs/transfer/cifar10.yaml).

    python train.py --config=configs/transfer_cifar10.py --workdir=runs/transfer_cifar10 \
        --config.dataset.data_dir=DIR --config.init_from=runs/imagenet_s   # or a converted official S checkpoint

Loads everything but the classifier (BN statistics and firing rates too, like the official transfer()),
fine-tunes the whole network: 100 epochs, batch 128, lr 1e-4, wd 0.01, T = 4, 128×128 (ImageNet stem),
RandAugment rand-m9-n1-mstd0.4-inc1, flip, mixup 0.5, label smoothing 0.1.
Expected top-1 (paper): 97.40 %.
"""
from sresformer_jax.configs.cifar import cifar_config


def get_config(arg=None):
    return cifar_config("cifar10", transfer=True)
