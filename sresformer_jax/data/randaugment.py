"""RandAugment with timm's semantics (``timm.data.auto_augment.rand_augment_transform``), on PIL images.

A policy string ``rand-m{M}-n{N}-mstd{S}-inc{0|1}[-p{P}][-mmax{X}]`` (defaults: M = 10, N = 2, S = 0, inc 0,
P = 0.5, X = 10) gives: N ops drawn uniformly *with replacement* from the 15-op list (the "increasing" list
with inc1); each is applied with probability P at magnitude m ~ N(M, S) (S > 100: U(0, M)) clipped to
[0, X], mapped to the op's argument by ``level = m / 10``:

    Rotate ±30·level°                         ShearX/Y ±0.3·level
    TranslateX/YRel ±0.45·level·size           SolarizeAdd +⌊110·level⌋ (≤ 128) below 128
    Posterize ⌊4·level⌋ bits kept               PosterizeIncreasing 4 − ⌊4·level⌋ bits kept
    Solarize ⌊256·level⌋ threshold              SolarizeIncreasing 256 − ⌊256·level⌋
    Color/Contrast/Brightness/Sharpness 1.8·level + 0.1
    …Increasing: max(0.1, 1 ± 0.9·level)       AutoContrast, Equalize, Invert: no argument

(± = negated with probability ½.) Geometric ops fill with the dataset mean in 0..255 (``img_mean``) and
resample with the pipeline's interpolation (bicubic in every official recipe).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

LEVEL_DENOM = 10.0
TRANSFORMS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
              "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
INCREASING_TRANSFORMS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
                         "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
                         "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
                         "TranslateYRel")
INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                  "nearest": Image.Resampling.NEAREST}


def _negate(rng: np.random.Generator, v: float) -> float:
    return -v if rng.random() > 0.5 else v


def level_to_arg(name: str, magnitude: float, rng: np.random.Generator) -> tuple:
    """The op argument(s) at ``magnitude`` (0..10), timm's ``LEVEL_TO_ARG``; ``rng`` draws the sign."""
    level = magnitude / LEVEL_DENOM
    base = name.replace("Increasing", "")
    if base in ("AutoContrast", "Equalize", "Invert"):
        return ()
    if name == "Rotate":
        return (_negate(rng, level * 30.0),)
    if name in ("ShearX", "ShearY"):
        return (_negate(rng, level * 0.3),)
    if name in ("TranslateXRel", "TranslateYRel"):
        return (_negate(rng, level * 0.45),)
    if name == "Posterize":
        return (int(level * 4),)
    if name == "PosterizeIncreasing":
        return (4 - int(level * 4),)
    if name == "Solarize":
        return (min(256, int(level * 256)),)
    if name == "SolarizeIncreasing":
        return (256 - min(256, int(level * 256)),)
    if name == "SolarizeAdd":
        return (min(128, int(level * 110)),)
    if base in ("Color", "Contrast", "Brightness", "Sharpness"):
        if name.endswith("Increasing"):
            return (max(0.1, 1.0 + _negate(rng, level * 0.9)),)
        return (level * 1.8 + 0.1,)
    raise ValueError(f"unknown RandAugment op {name!r}")


def apply_op(img: Image.Image, name: str, args: tuple, fill: tuple[int, ...], resample) -> Image.Image:
    """Applies op ``name`` with its argument(s) to a PIL image (timm's ``NAME_TO_OP``)."""
    base = name.replace("Increasing", "")
    affine = dict(fillcolor=fill, resample=resample)
    w, h = img.size
    if base == "AutoContrast":
        return ImageOps.autocontrast(img)
    if base == "Equalize":
        return ImageOps.equalize(img)
    if base == "Invert":
        return ImageOps.invert(img)
    if base == "Rotate":
        return img.rotate(args[0], **affine)
    if base == "Posterize":
        if args[0] <= 0:      # keep no bits: every bit masked away, the black image of the official runs' Pillow
            return img.point([0] * 256 * len(img.getbands()))
        return img if args[0] >= 8 else ImageOps.posterize(img, args[0])
    if base == "Solarize":
        return ImageOps.solarize(img, args[0])
    if base == "SolarizeAdd":
        lut = [min(255, i + args[0]) if i < 128 else i for i in range(256)]
        return img.point(lut * len(img.getbands())) if img.mode in ("L", "RGB") else img
    if base in ("Color", "Contrast", "Brightness", "Sharpness"):
        return getattr(ImageEnhance, base)(img).enhance(args[0])
    if base == "ShearX":
        return img.transform(img.size, Image.Transform.AFFINE, (1, args[0], 0, 0, 1, 0), **affine)
    if base == "ShearY":
        return img.transform(img.size, Image.Transform.AFFINE, (1, 0, 0, args[0], 1, 0), **affine)
    if base == "TranslateXRel":
        return img.transform(img.size, Image.Transform.AFFINE, (1, 0, args[0] * w, 0, 1, 0), **affine)
    if base == "TranslateYRel":
        return img.transform(img.size, Image.Transform.AFFINE, (1, 0, 0, 0, 1, args[0] * h), **affine)
    raise ValueError(f"unknown RandAugment op {name!r}")


@dataclass(frozen=True)
class RandAugment:
    """A parsed timm RandAugment policy; ``__call__(img, rng)`` is deterministic given ``rng``."""
    ops: tuple[str, ...]
    magnitude: float = 10.0
    num_layers: int = 2
    prob: float = 0.5
    magnitude_std: float = 0.0
    magnitude_max: float = LEVEL_DENOM
    fill: tuple[int, ...] = (128, 128, 128)
    interpolation: str = "bicubic"

    def sample_magnitude(self, rng: np.random.Generator) -> float:
        m = self.magnitude
        if self.magnitude_std == math.inf:
            m = rng.uniform(0, m)
        elif self.magnitude_std > 0:
            m = rng.normal(m, self.magnitude_std)
        return max(0.0, min(m, self.magnitude_max))

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        resample = INTERPOLATIONS[self.interpolation]
        for k in rng.integers(len(self.ops), size=self.num_layers):        # with replacement
            if self.prob < 1.0 and rng.random() > self.prob:
                continue
            name = self.ops[k]
            img = apply_op(img, name, level_to_arg(name, self.sample_magnitude(rng), rng), self.fill, resample)
        return img


def parse_randaugment(policy: str, mean: tuple[float, ...] = (0.5, 0.5, 0.5),
                      interpolation: str = "bicubic") -> RandAugment:
    """``'rand-m7-n1-mstd0.5-inc1'`` → RandAugment, with timm's hparams for a pipeline normalising by ``mean``
    (the fill colour is ``round(255·mean)``). Raises ValueError naming the bad section."""
    parts = policy.split("-")
    if parts[0] != "rand":
        raise ValueError(f"RandAugment policy must start with 'rand-', got {policy!r} (e.g. 'rand-m9-mstd0.5-inc1')")
    kw = dict(magnitude=LEVEL_DENOM, num_layers=2, prob=0.5, magnitude_std=0.0, magnitude_max=LEVEL_DENOM)
    increasing = False
    for part in parts[1:]:
        m = re.fullmatch(r"([a-z]+)(\d.*)", part)
        if not m:
            raise ValueError(f"RandAugment policy {policy!r}: cannot parse section {part!r}")
        key, val = m.groups()
        if key == "m":
            kw["magnitude"] = float(int(val))
        elif key == "n":
            kw["num_layers"] = int(val)
        elif key == "p":
            kw["prob"] = float(val)
        elif key == "mstd":
            kw["magnitude_std"] = math.inf if float(val) > 100 else float(val)
        elif key == "mmax":
            kw["magnitude_max"] = float(int(val))
        elif key == "inc":
            increasing = bool(int(val))
        else:
            raise ValueError(f"RandAugment policy {policy!r}: unknown section {part!r} (m, n, p, mstd, mmax, inc)")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
    return RandAugment(ops=INCREASING_TRANSFORMS if increasing else TRANSFORMS,
                       fill=tuple(min(255, round(255 * x)) for x in mean), interpolation=interpolation, **kw)
