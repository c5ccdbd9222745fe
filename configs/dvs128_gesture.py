"""DVS128 Gesture, direct training of the PLIF model spikingresformer_dvsg, configs/direct_training/dvs128gesture.yaml.

    python train.py --config=configs/dvs128_gesture.py --workdir=runs/dvs128_gesture --config.dataset.data_dir=DIR

300 epochs, batch 8, lr 1e-4, wd 0.05, T = 16, 64×64 frames, DVSAugment, plain CE.
Expected top-1: not confirmed (an aggregator lists 98.6 %, SPEC §7.3).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dvs import dvs_config  # noqa: E402


def get_config(arg=None):
    return dvs_config("dvs128_gesture", transfer=False)
