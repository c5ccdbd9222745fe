"""CIFAR10-DVS, direct training of Ti* (spikingresformer_cifar), configs/direct_training/cifar10dvs.yaml.

    python train.py --config=configs/cifar10_dvs.py --workdir=runs/cifar10_dvs --config.dataset.data_dir=DIR

300 epochs, batch 8, lr 5e-4, wd 0.05, T = 16, 64×64 frames, DVSAugment, plain CE.
Expected top-1: not given in the paper for this recipe.
"""
from sresformer_jax.configs.dvs import dvs_config


def get_config(arg=None):
    return dvs_config("cifar10_dvs", transfer=False)
