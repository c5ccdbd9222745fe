"""DVS128 Gesture transfer from ImageNet SpikingResformer-S, configs/transfer/dvs128gesture.yaml.

    python train.py --config=configs/transfer_dvs128_gesture.py --workdir=runs/transfer_dvs128_gesture --config.dataset.data_dir=DIR \
        --config.init_from=runs/imagenet_s

100 epochs, batch 48, lr 1e-4, wd 0.05, T = 10, 128×128 frames, DVSAugment, plain CE; everything but the classifier loaded.
Expected top-1: 93.4 % (benchmark aggregator).
"""
from sresformer_jax.configs.dvs import dvs_config


def get_config(arg=None):
    return dvs_config("dvs128_gesture", transfer=True)
