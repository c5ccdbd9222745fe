"""The quickstart dataset: scikit-learn's 1,797 real 8×8 handwritten digits (shipped with the package).

Images are scaled to [0, 1], upsampled (bilinear) to ``img_size``, normalised with the training-set
mean/std, and split deterministically (stratified, fixed seed) into train and held-out test.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import InMemoryData


def _resize_bilinear(x: np.ndarray, size: int) -> np.ndarray:
    """[N, h, w] → [N, size, size], half-pixel-centred bilinear (align_corners=False)."""
    n, h, w = x.shape

    def axis(src, dst):
        c = (np.arange(dst) + 0.5) * src / dst - 0.5
        c = np.clip(c, 0, src - 1)
        lo = np.floor(c).astype(int)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, (c - lo).astype(np.float32)

    (y0, y1, wy), (x0, x1, wx) = axis(h, size), axis(w, size)
    rows = x[:, y0] * (1 - wy)[None, :, None] + x[:, y1] * wy[None, :, None]
    return rows[:, :, x0] * (1 - wx)[None, None, :] + rows[:, :, x1] * wx[None, None, :]


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits file (``sklearn/datasets/data/digits.csv.gz``: 64 pixels in 0..16 and the label per row),
    read as ``sklearn.datasets.load_digits`` reads it, without importing scikit-learn (and SciPy) for it: 2 s less per
    start. → images [1797, 8, 8] in [0, 1] (float32), labels [1797] (int32)."""
    import importlib.util
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the quickstart reads scikit-learn's digits: pip install scikit-learn (requirements.txt)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"scikit-learn's digits file is missing: {path} (reinstall scikit-learn)")
    data = np.loadtxt(path, delimiter=",")
    return (data[:, :-1].reshape(-1, 8, 8) / 16.0).astype(np.float32), data[:, -1].astype(np.int32)


def load_digits(dataset_config, workers: int = 0, **kw) -> InMemoryData:
    del workers                                                     # in memory: nothing to read ahead
    x, y = _sklearn_digits()
    rng = np.random.default_rng(dataset_config.split_seed)
    test = np.zeros(len(y), bool)
    for c in range(10):                                             # stratified held-out split
        idx = np.flatnonzero(y == c)
        test[rng.choice(idx, int(round(len(idx) * dataset_config.test_fraction)), replace=False)] = True
    if dataset_config.img_size != 8:
        x = _resize_bilinear(x, dataset_config.img_size)
    mean, std = x[~test].mean(), x[~test].std()
    x = ((x - mean) / std)[..., None]                               # [N, S, S, 1]
    return InMemoryData(x[~test], y[~test], x[test], y[test], num_classes=10, **kw)
