"""Static-image datasets (ImageNet-1k, CIFAR10/100) from TFDS or from a class-folder tree.

Two on-disk sources, read without TensorFlow:

* **TFDS** (``dataset.source='tfds'``): a dataset prepared by ``tfds build NAME --file_format=array_record``
  under ``data_dir`` and read with ``tfds.data_source`` (random access, no tf.data).
* **Class folders** (``dataset.source='folder'``): ``data_dir/train/<class>/*.JPEG`` and
  ``data_dir/val/<class>/*`` (or ``test/``), the layout of the official README; classes and files in sorted
  order, like torchvision's ``ImageFolder``.

``source='auto'`` (the default) takes the folders when ``data_dir/train`` exists, TFDS otherwise.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .base import DataFileError, DatasetNotFoundError, StepIndexedData
from .randaugment import parse_randaugment
from .transforms import eval_image, train_image

TFDS_SPLITS = {"cifar10": ("train", "test"), "cifar100": ("train", "test"),
               "imagenet2012": ("train", "validation")}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet2012": 1000}
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _prepare_steps(name: str, data_dir: str) -> str:
    tfds_cmd = (f"    pip install tensorflow   # TFDS needs TensorFlow to build a dataset (not to read it)\n"
                f"    tfds build {name} --data_dir={data_dir} --file_format=array_record\n")
    if name == "imagenet2012":
        return ("Prepare ImageNet-1k one of two ways:\n"
                f"  (a) TFDS: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from image-net.org) in\n"
                f"      {data_dir}/downloads/manual/ and run\n" + tfds_cmd.replace("    ", "      ") +
                f"  (b) class folders (the official README layout): {data_dir}/train/<wnid>/*.JPEG and\n"
                f"      {data_dir}/val/<wnid>/*.JPEG, then pass --config.dataset.source=folder")
    return (f"Prepare it once (downloads {name} from its official site):\n" + tfds_cmd +
            f"or use class folders: {data_dir}/train/<class>/*.png and {data_dir}/test/<class>/*.png with "
            "--config.dataset.source=folder")


# ---------------------------------------------------------------------------------------------- TFDS
def check_tfds(name: str, data_dir: str) -> None:
    """Raises DatasetNotFoundError unless ``data_dir/name/<version>/`` holds a TFDS build of ``name`` in the
    array_record format with both splits."""
    splits = TFDS_SPLITS[name]
    base = Path(data_dir) / name
    versions = sorted(d for d in base.glob("*") if (d / "dataset_info.json").is_file()) if base.is_dir() else []
    tfrecord = False
    for v in versions:
        files = [f.name for f in v.iterdir()]
        if all(any(f.startswith(f"{name}-{s}.array_record") for f in files) for s in splits):
            return
        tfrecord |= any(".tfrecord" in f for f in files)
    if tfrecord:
        why = (f"{base} holds a TFDS build in the tfrecord format, which needs TensorFlow to read; "
               "rebuild it in the array_record format (random access, no TensorFlow):")
    elif versions:
        why = f"{base} holds an incomplete TFDS build (missing the {'/'.join(splits)} array_record shards):"
    else:
        why = f"no TFDS build of {name!r} under {data_dir} (expected {base}/<version>/dataset_info.json):"
    raise DatasetNotFoundError(f"config.dataset.data_dir: {why}\n{_prepare_steps(name, data_dir)}")


class TfdsSource:
    """``tfds.data_source(name, split)`` records → {"image": uint8 [H, W, C], "label": int}."""

    def __init__(self, name: str, split: str, data_dir: str):
        try:
            import tensorflow_datasets as tfds
        except ImportError as err:
            raise ImportError("reading a TFDS dataset needs tensorflow-datasets: pip install "
                              "'sresformer_jax[tfds]' (or pip install -r requirements.txt)") from err
        self.source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        r = self.source[int(i)]
        return {"image": r["image"], "label": int(r["label"])}


# -------------------------------------------------------------------------------------- class folders
class FolderSource:
    """torchvision ``ImageFolder`` order: sorted class folders, then sorted file paths (recursively)."""

    def __init__(self, root: Path, classes: list[str] | None = None):
        self.root = Path(root)
        self.classes = classes or sorted(d.name for d in os.scandir(root) if d.is_dir())
        self.samples = []
        for label, cls in enumerate(self.classes):
            before = len(self.samples)
            for dirpath, _, files in sorted(os.walk(self.root / cls, followlinks=True)):
                for f in sorted(files):
                    if f.lower().endswith(IMG_EXTENSIONS):
                        self.samples.append((os.path.join(dirpath, f), label))
            if len(self.samples) == before:          # would shift every later class's label: never skipped
                raise DatasetNotFoundError(f"{self.root / cls}: an empty class folder (no {', '.join(IMG_EXTENSIONS)} "
                                           "files); put its images back, or remove the folder from every split")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        path, label = self.samples[int(i)]
        try:
            with Image.open(path) as img:
                return {"image": img.convert("RGB"), "label": label}     # decodes the whole file now
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DataFileError(path, f"cannot decode the image ({type(e).__name__}: {e})") from None


def folder_sources(data_dir: str, name: str) -> tuple[FolderSource, FolderSource]:
    root = Path(data_dir)
    test_dir = next((root / d for d in ("val", "test", "validation") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise DatasetNotFoundError(
            f"config.dataset.data_dir={data_dir}: the class-folder layout needs {root}/train/<class>/ and "
            f"{root}/val/<class>/ (or test/).\n{_prepare_steps(name, data_dir)}")
    train_classes, test_classes = (sorted(d.name for d in os.scandir(p) if d.is_dir()) for p in (root / "train",
                                                                                                  test_dir))
    if test_classes != train_classes:
        extra = sorted(set(test_classes) ^ set(train_classes))
        raise DatasetNotFoundError(f"{root}/train and {test_dir} have different class folders (only in one of "
                                   f"them: {extra[:10]}{' …' if len(extra) > 10 else ''}); copy the dataset again")
    train = FolderSource(root / "train", train_classes)
    test = FolderSource(test_dir, train_classes)
    for src, d in ((train, root / "train"), (test, test_dir)):
        if len(src) == 0:
            raise DatasetNotFoundError(f"{d} has class folders but no images ({', '.join(IMG_EXTENSIONS)})")
    return train, test


# -------------------------------------------------------------------------------------------- dataset
class ImageData(StepIndexedData):
    """Decoded, augmented, normalised float32 ``[B, size, size, 3]`` batches of a static-image source."""

    def __init__(self, train_source, test_source, dataset_config, **kw):
        super().__init__(len(train_source), len(test_source), **kw)
        self.train_source, self.test_source, self.cfg = train_source, test_source, dataset_config
        policy = dataset_config.get("randaugment")
        self.randaugment = (parse_randaugment(policy, tuple(dataset_config.mean), dataset_config.interpolation)
                            if policy else None)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.cfg.img_size, self.cfg.img_size, 3)

    def _read(self, source, row: int, substitute: bool):
        """``source[row]``; a damaged file raises ``DataFileError`` unless ``dataset.skip_corrupt``: then it is
        counted and (``substitute``) the next readable row stands in for it, else None."""
        for k in range(len(source)):
            try:
                return source[(row + k) % len(source)]
            except DataFileError as err:
                if not self.cfg.get("skip_corrupt", False):
                    raise
                self.skipped.note(err)
                if not substitute:
                    return None
        raise DataFileError(getattr(source, "root", "the dataset"), "no file of this split can be read")

    def load_train(self, rows, step, positions):
        out = [self._read(self.train_source, r, substitute=True) for r in rows]
        images = [train_image(o["image"], self.example_rng(step, p), self.cfg, self.randaugment)
                  for o, p in zip(out, positions)]
        return {"image": np.stack(images), "label": np.array([o["label"] for o in out], np.int32)}

    def load_eval(self, rows):
        out = [self._read(self.test_source, r, substitute=False) for r in rows]
        valid = np.array([o is not None for o in out])
        blank = np.zeros(self.input_shape, np.float32)
        return {"image": np.stack([eval_image(o["image"], self.cfg) if o is not None else blank for o in out]),
                "label": np.array([o["label"] if o is not None else 0 for o in out], np.int32), "valid": valid}


def load_images(dataset_config, **kw) -> ImageData:
    """``config.dataset`` → ImageData; DatasetNotFoundError (with the preparation steps) if it is missing."""
    name, data_dir = dataset_config.name, dataset_config.get("data_dir")
    if not data_dir:
        raise DatasetNotFoundError(f"config.dataset.data_dir is not set; pass --config.dataset.data_dir=DIR.\n"
                                   f"{_prepare_steps(name, 'DIR')}")
    if not Path(data_dir).is_dir():
        raise DatasetNotFoundError(f"config.dataset.data_dir={data_dir} does not exist.\n"
                                   f"{_prepare_steps(name, data_dir)}")
    source = dataset_config.get("source", "auto")
    if source == "auto":
        source = "folder" if (Path(data_dir) / "train").is_dir() else "tfds"
    if source == "folder":
        train, test = folder_sources(data_dir, name)
        num_classes = len(train.classes)
    elif source == "tfds":
        check_tfds(name, data_dir)
        train, test = (TfdsSource(name, s, data_dir) for s in TFDS_SPLITS[name])
        num_classes = NUM_CLASSES[name]
    else:
        raise ValueError(f"config.dataset.source must be 'auto', 'tfds' or 'folder', got {source!r}")
    return ImageData(train, test, dataset_config, num_classes=num_classes, **kw)
