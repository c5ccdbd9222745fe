"""Static-image preprocessing with the official (timm / torchvision) semantics, on PIL images.

Train (``transforms_imagenet_train``): RandomResizedCrop → horizontal flip → RandAugment → /255 → normalise.

    RandomResizedCrop(size, scale, ratio): up to 10 tries of area a ~ U(scale)·W·H, log-ratio r ~ U(log ratio),
    w = round(√(a·r)), h = round(√(a/r)); the first that fits is placed uniformly; otherwise the whole image
    clamped to the ratio range, centred. The crop is resized to size×size (bicubic).

Eval (``transforms_imagenet_eval``): resize the shorter side to ⌊size / crop_pct⌋ (bicubic), centre crop
size×size, /255, normalise. CIFAR (scale = ratio = (1, 1), crop_pct 1) thus resizes the whole image to the
input size in both cases.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .randaugment import INTERPOLATIONS, RandAugment


def random_resized_crop_box(rng: np.random.Generator, width: int, height: int, scale=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) of timm's ``RandomResizedCropAndInterpolation.get_params``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if w <= width and h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_shorter(img: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """torchvision ``Resize(size)`` (int): shorter side → size, longer ⌊size·long/short⌋; unchanged if equal."""
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), INTERPOLATIONS[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """torchvision ``CenterCrop(size)`` (the image is at least size×size here)."""
    w, h = img.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def normalize(img: Image.Image, mean, std) -> np.ndarray:
    """PIL RGB → float32 ``[H, W, 3]``, (x / 255 − mean) / std."""
    x = np.asarray(img, np.float32) * np.float32(1 / 255)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def to_rgb(image) -> Image.Image:
    """A decoded image (PIL, or uint8 ``[H, W]`` / ``[H, W, 1|3]`` array) as a PIL RGB image."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"expected uint8 image pixels, got {a.dtype}")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return Image.fromarray(a).convert("RGB")


def train_image(image, rng: np.random.Generator, cfg, randaugment: RandAugment | None) -> np.ndarray:
    """The official training transform of one image → normalised float32 ``[size, size, 3]``."""
    img = to_rgb(image)
    top, left, h, w = random_resized_crop_box(rng, img.width, img.height, tuple(cfg.train_scale),
                                              tuple(cfg.train_ratio))
    size = cfg.img_size
    crop = img.crop((left, top, left + w, top + h))
    img = crop if crop.size == (size, size) else crop.resize((size, size), INTERPOLATIONS[cfg.interpolation])
    if rng.random() < cfg.hflip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if randaugment is not None:
        img = randaugment(img, rng)
    return normalize(img, cfg.mean, cfg.std)


def eval_image(image, cfg) -> np.ndarray:
    """The official evaluation transform of one image → normalised float32 ``[size, size, 3]``."""
    img = to_rgb(image)
    img = resize_shorter(img, int(math.floor(cfg.img_size / cfg.crop_pct)), cfg.interpolation)
    return normalize(center_crop(img, cfg.img_size), cfg.mean, cfg.std)
