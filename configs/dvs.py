"""Event-camera recipes (CIFAR10-DVS, DVS128 Gesture; direct and transfer). Not run directly.

Frames as SpikingJelly ``split_by='number'`` (T slices of equal event counts), 2 polarities at 128×128,
resized (bilinear, antialias) to the input size, plus a third channel ON+OFF; DVSAugment for training.
The official DVS runs apply neither mixup nor label smoothing (docs/model.md): plain cross-entropy.
DIR holds the raw files (CIFAR10-DVS: the extracted class zips, DIR/airplane/cifar10_airplane_0.aedat …;
DVS128 Gesture: DIR/DvsGesture/ from DvsGesture.tar.gz); frames are built once into DIR/frames_number_{T}/.
"""
import ml_collections

from sresformer_jax.configs.common import base_config, model_config

CLASSES = {"cifar10_dvs": 10, "dvs128_gesture": 11}


def dvs_config(name: str, transfer: bool) -> ml_collections.ConfigDict:
    c = base_config()
    if transfer:   # ImageNet SpikingResformer-S, T = 10, 128×128
        T, img = 10, 128
        c.model_name = "spikingresformer_s"
        c.model = model_config("spikingresformer_s", num_classes=CLASSES[name], img_size=img, T=T, dvs=True)
        c.batch_size = 48
        c.optim.update(lr=4e-5 if name == "cifar10_dvs" else 1e-4,
                       weight_decay=0.01 if name == "cifar10_dvs" else 0.05, epochs=100)
        c.transfer = True  # needs --config.init_from=PATH (an ImageNet S checkpoint, ours or converted)
    else:          # direct: Ti* (CIFAR10-DVS) or the PLIF DVSG model (DVS128 Gesture), T = 16, 64×64
        T, img = 16, 64
        variant = "spikingresformer_cifar" if name == "cifar10_dvs" else "spikingresformer_dvsg"
        c.model_name = variant
        c.model = model_config(variant, num_classes=CLASSES[name], img_size=img, T=T, dvs=True)
        c.batch_size = 8
        c.optim.update(lr=5e-4 if name == "cifar10_dvs" else 1e-4, weight_decay=0.05, epochs=300)
    c.dataset = ml_collections.ConfigDict(dict(
        name=name, data_dir=ml_collections.config_dict.placeholder(str), img_size=img, T=T,
        split_by="number", augment="dvs", workers=-1,
        skip_corrupt=False,           # True: leave out (and count) samples whose raw file is damaged
        split_file=ml_collections.config_dict.placeholder(str)))   # CIFAR10-DVS: None = the official split
    c.eval_batch_size = 16 if T == 16 else 48
    c.loss.label_smoothing = 0.0
    c.mixup.enabled = False
    c.log_every_steps = 20
    return c
