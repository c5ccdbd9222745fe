"""Event-camera streams → frames exactly like the official pipeline (docs/model.md).

1. ``frames_by_number``: SpikingJelly ``split_by='number'`` — N events cut into T slices of ⌊N/T⌋ events,
   the remainder going to the last slice (tonic's ``ToFrame`` drops it), each slice accumulated into a
   2-channel (OFF = polarity 0, ON = polarity 1) count image:

       j_l = ⌊N/T⌋·t,   j_r = ⌊N/T⌋·(t + 1)  (t < T − 1),   j_r = N  (t = T − 1)
       F[t, p, y, x] = #{i ∈ [j_l, j_r) : (p_i, y_i, x_i) = (p, y, x)}

2. ``resize_antialias``: torchvision ``Resize(size)`` on the (T·2, H, W) float frames, i.e. PyTorch's
   ``interpolate(mode='bilinear', antialias=True, align_corners=False)``: separable triangle filter of
   support max(scale, 1), weights normalised per output pixel.
3. ``dvs_augment`` (training only; the official ``DVSAugment``, same op for every frame and polarity):
   horizontal flip with probability ½, then ONE of
     roll:   circular shift by (a, b), a, b uniform integers in [−⌊H/3⌋, ⌊H/3⌋] (resp. W)
     rotate: torchvision ``RandomRotation(30)``: angle θ ~ U(−30°, 30°), nearest neighbour, zero fill;
             output pixel (i, j), x = j − W/2 + ½, y = i − H/2 + ½ reads source
             (row, col) = rint(sinθ·x + cosθ·y + H/2 − ½, cosθ·x − sinθ·y + W/2 − ½)
     cutout: zero the box [y − ⌊H/3⌋//2, y + ⌊H/3⌋//2) × [x − ⌊W/3⌋//2, x + ⌊W/3⌋//2) (clipped) around a
             uniform pixel (y, x)
4. ``model_input``: [T, 2, H, W] frames → resize → (augment) → append ON + OFF as a third channel →
   NHWC ``[T, h, w, 3]``.
"""
from __future__ import annotations

import numpy as np


def frames_by_number(t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray, T: int, H: int, W: int
                     ) -> np.ndarray:
    """Events (time-ordered) → frames ``[T, 2, H, W]`` (float32 counts), SpikingJelly ``split_by='number'``."""
    n = len(t)
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if not (len(x) == len(y) == len(p) == n):
        raise ValueError(f"event arrays differ in length: t {n}, x {len(x)}, y {len(y)}, p {len(p)}")
    di = n // T
    bounds = [(i * di, (i + 1) * di if i < T - 1 else n) for i in range(T)]
    pol = (np.asarray(p) > 0).astype(np.int64)               # bool or {0, 1} or {-1, 1} polarities
    flat = (pol * H + np.asarray(y, np.int64)) * W + np.asarray(x, np.int64)
    frames = np.zeros((T, 2 * H * W), np.float32)
    for i, (lo, hi) in enumerate(bounds):
        frames[i] = np.bincount(flat[lo:hi], minlength=2 * H * W)
    return frames.reshape(T, 2, H, W)


def _aa_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] interpolation matrix of PyTorch's antialiased bilinear resize (align_corners=False)."""
    scale = in_size / out_size
    support = max(scale, 1.0)                                 # bilinear filter support 1, widened on downscale
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    m = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        j = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((j - center + 0.5) * inv))
        m[i, lo:hi] = w / w.sum()
    return m


def resize_antialias(frames: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """``[..., H, W]`` → ``[..., h, w]`` (float32), torchvision ``Resize(size, antialias=True)`` bilinear.
    An int ``size`` resizes the shorter side to it (keeping the aspect ratio), like torchvision."""
    H, W = frames.shape[-2:]
    if isinstance(size, int):
        h, w = (size, int(size * W / H)) if H <= W else (int(size * H / W), size)
    else:
        h, w = size
    if (h, w) == (H, W):
        return frames.astype(np.float32)
    out = np.einsum("...hw,vw->...hv", frames.astype(np.float64), _aa_weights(W, w))
    out = np.einsum("...hv,uh->...uv", out, _aa_weights(H, h))
    return out.astype(np.float32)


def rotate_nearest(frames: np.ndarray, degrees: float) -> np.ndarray:
    """torchvision ``rotate(img, degrees)`` (counter-clockwise about the centre, nearest, zero fill, no expand)
    of ``[..., H, W]``. The sampling grid is computed in float32 through the same normalise/un-normalise steps
    as torchvision's ``affine_grid`` + ``grid_sample(align_corners=False)``, so that rounding at pixel ties
    agrees with it (measured: ≤ 1 pixel in 16,384 differs)."""
    H, W = frames.shape[-2:]
    f32 = np.float32
    a = np.deg2rad(degrees)
    m = np.array([np.cos(a), -np.sin(a), np.sin(a), np.cos(a)], f32)     # inverse map, output → source
    x = np.linspace(-W * 0.5 + 0.5, W * 0.5 - 0.5, W, dtype=f32)
    y = np.linspace(-H * 0.5 + 0.5, H * 0.5 - 0.5, H, dtype=f32)[:, None]
    sx, sy = f32(0.5 * W), f32(0.5 * H)
    gx = x * (m[0] / sx) + y * (m[1] / sx)                                # normalised source coordinates
    gy = x * (m[2] / sy) + y * (m[3] / sy)
    col = np.rint(((gx + f32(1)) * f32(W) - f32(1)) / f32(2)).astype(np.int64)   # [H, W]
    row = np.rint(((gy + f32(1)) * f32(H) - f32(1)) / f32(2)).astype(np.int64)
    inside = (col >= 0) & (col < W) & (row >= 0) & (row < H)
    out = frames[..., np.clip(row, 0, H - 1), np.clip(col, 0, W - 1)]
    return np.where(inside, out, 0).astype(frames.dtype)


def dvs_augment(rng: np.random.Generator, frames: np.ndarray) -> np.ndarray:
    """The official DVSAugment (N = 2, one op) on ``[T, 2, H, W]`` frames; deterministic given ``rng``."""
    H, W = frames.shape[-2:]
    if rng.random() > 0.5:
        frames = frames[..., ::-1]
    op = rng.integers(3)
    if op == 0:                                               # roll by up to a third of the size
        lh, lw = int(H / 3), int(W / 3)
        return np.roll(frames, (int(rng.integers(-lh, lh + 1)), int(rng.integers(-lw, lw + 1))), axis=(-2, -1))
    if op == 1:                                               # rotate by up to ±30°
        return rotate_nearest(frames, float(rng.uniform(-30.0, 30.0)))
    lh, lw = int(H / 3), int(W / 3)                           # cutout a third-size square
    y, x = int(rng.integers(H)), int(rng.integers(W))
    out = np.array(frames)
    out[..., max(y - lh // 2, 0):min(y + lh // 2, H), max(x - lw // 2, 0):min(x + lw // 2, W)] = 0
    return out


def model_input(frames: np.ndarray, size: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """[T, 2, H, W] count frames → [T, size, size, 3] (OFF, ON, OFF + ON), the official DVS transform;
    with ``rng``, the training augmentation is applied after the resize, before the third channel."""
    r = resize_antialias(frames, size)                        # [T, 2, h, w]
    if rng is not None:
        r = dvs_augment(rng, r)
    r = np.concatenate([r, r[:, :1] + r[:, 1:2]], axis=1)     # [T, 3, h, w]
    return np.ascontiguousarray(r.transpose(0, 2, 3, 1))
