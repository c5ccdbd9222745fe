"""CIFAR10-DVS, direct training of Ti* (spikingresformer_cifar), configs/direct_training/cifar10dvs.yaml.

    python train.py --config=configs/cifar10_dvs.py --workdir=runs/cifar10_dvs --config.dataset.data_dir=DIR

300 epochs, batch 8, lr 5e-4, wd 0.05, T = 16, 64×64 frames, DVSAugment, plain CE.
Expected top-1: not recovered from the paper (SPEC §7.3).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dvs import dvs_config  # noqa: E402


def get_config(arg=None):
    return dvs_config("cifar10_dvs", transfer=False)
