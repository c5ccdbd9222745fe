"""DVS128 Gesture, direct training of the PLIF model spikingresformer_dvsg, configs/direct_training/dvs128gesture.yaml.

    python train.py --config=configs/dvs128_gesture.py --workdir=runs/dvs128_gesture --config.dataset.data_dir=DIR

300 epochs, batch 8, lr 1e-4, wd 0.05, T = 16, 64×64 frames, DVSAugment, plain CE.
Expected top-1: not confirmed (an aggregator lists 98.6 %).
"""
from sresformer_jax.configs.dvs import dvs_config


def get_config(arg=None):
    return dvs_config("dvs128_gesture", transfer=False)
