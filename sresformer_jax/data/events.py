"""Event-camera streams → frames exactly like the official pipeline (SPEC §6.5).

1. ``frames_by_number``: SpikingJelly ``split_by='number'`` — N events cut into T slices of ⌊N/T⌋ events,
   the remainder going to the last slice (tonic's ``ToFrame`` drops it), each slice accumulated into a
   2-channel (OFF = polarity 0, ON = polarity 1) count image:

       j_l = ⌊N/T⌋·t,   j_r = ⌊N/T⌋·(t + 1)  (t < T − 1),   j_r = N  (t = T − 1)
       F[t, p, y, x] = #{i ∈ [j_l, j_r) : (p_i, y_i, x_i) = (p, y, x)}

2. ``resize_antialias``: torchvision ``Resize(size)`` on the (T·2, H, W) float frames, i.e. PyTorch's
   ``interpolate(mode='bilinear', antialias=True, align_corners=False)``: separable triangle filter of
   support max(scale, 1), weights normalised per output pixel.
3. ``model_input``: [T, 2, H, W] frames → resize → append ON + OFF as a third channel → NHWC ``[T, h, w, 3]``.
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


def model_input(frames: np.ndarray, size: int) -> np.ndarray:
    """[T, 2, H, W] count frames → [T, size, size, 3] (OFF, ON, OFF + ON), the official DVS transform."""
    r = resize_antialias(frames, size)                        # [T, 2, h, w]
    r = np.concatenate([r, r[:, :1] + r[:, 1:2]], axis=1)     # [T, 3, h, w]
    return np.ascontiguousarray(r.transpose(0, 2, 3, 1))
