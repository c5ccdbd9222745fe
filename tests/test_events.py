"""Event frames (SpikingJelly split_by='number') and torchvision's antialiased resize, against hand counts
and numbers produced by PyTorch 2.13 (``interpolate(bilinear, antialias=True)``)."""
from __future__ import annotations

import numpy as np
import pytest

from sresformer_jax.data.events import dvs_augment, frames_by_number, model_input, resize_antialias, rotate_nearest

# 8×8 two-polarity count frames (T = 2) and their 4×4 resize by torch.nn.functional.interpolate(
# mode="bilinear", antialias=True, align_corners=False), i.e. torchvision Resize(4).
X8 = np.array([[[[2, 0, 2, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1, 0], [2, 1, 1, 0, 0, 1, 0, 1], [2, 0, 1, 1, 0, 1, 1, 2], [0, 0, 2, 0, 1, 0, 0, 0], [1, 0, 1, 1, 2, 0, 0, 0], [1, 0, 0, 1, 0, 0, 3, 0], [0, 0, 1, 2, 3, 3, 1, 2]], [[1, 1, 0, 1, 0, 0, 2, 2], [0, 0, 1, 0, 0, 0, 1, 0], [0, 0, 0, 0, 2, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 2], [1, 0, 0, 1, 0, 1, 1, 2], [1, 1, 2, 0, 1, 0, 1, 0], [0, 3, 0, 1, 0, 2, 1, 0], [0, 0, 1, 0, 0, 2, 1, 2]]], [[[0, 0, 1, 0, 0, 0, 0, 1], [0, 2, 0, 0, 1, 0, 0, 0], [1, 0, 1, 2, 0, 0, 4, 0], [0, 3, 0, 1, 0, 0, 0, 1], [2, 0, 1, 2, 0, 1, 1, 1], [1, 2, 1, 1, 1, 0, 0, 2], [1, 0, 1, 0, 1, 2, 1, 1], [0, 0, 0, 0, 3, 5, 0, 2]], [[0, 1, 2, 0, 1, 1, 1, 2], [0, 0, 0, 2, 0, 1, 0, 1], [2, 1, 0, 1, 0, 0, 0, 2], [2, 0, 1, 0, 0, 1, 0, 1], [1, 1, 1, 1, 0, 0, 0, 1], [1, 1, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 2, 1, 0], [0, 0, 2, 1, 0, 1, 1, 0]]]], np.float32)
TORCH_4 = np.array([[[[0.6938779950141907, 0.4464290142059326, 0.26785698533058167, 0.2653059959411621], [0.9464290142059326, 0.578125, 0.4375, 0.8035709857940674], [0.5, 0.84375, 0.609375, 0.3392859995365143], [0.32653099298477173, 0.9464290142059326, 1.464285969734192, 1.285714030265808]], [[0.4285709857940674, 0.4107140004634857, 0.3214290142059326, 0.9183670282363892], [0.39285698533058167, 0.234375, 0.375, 0.5535709857940674], [0.857142984867096, 0.625, 0.546875, 0.892857015132904], [0.7755100131034851, 0.625, 0.875, 1.0408159494400024]]], [[[0.510204017162323, 0.48214301466941833, 0.26785698533058167, 0.4285709857940674], [0.9285709857940674, 0.890625, 0.46875, 0.9285709857940674], [1.1428569555282593, 1.0, 0.640625, 0.892857015132904], [0.4489800035953522, 0.5357139706611633, 1.8928569555282593, 1.285714030265808]], [[0.4897960126399994, 0.8214290142059326, 0.6607139706611633, 0.9795920252799988], [0.982142984867096, 0.53125, 0.28125, 0.6607139706611633], [0.8214290142059326, 0.484375, 0.578125, 0.5357139706611633], [0.2448980063199997, 0.5714290142059326, 0.9285709857940674, 0.632652997970581]]]], np.float32)


def test_frames_by_number_puts_the_remainder_in_the_last_frame():
    # 11 events, T = 3: ⌊11/3⌋ = 3 events in frames 0 and 1, the remaining 5 in frame 2
    t = np.arange(11)
    x = np.array([0, 1, 1, 2, 0, 0, 1, 1, 1, 2, 0])
    y = np.array([0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 0])
    p = np.array([1, 0, 0, 1, 1, 1, 0, 1, 1, 0, 0])
    f = frames_by_number(t, x, y, p, T=3, H=2, W=3)
    assert f.shape == (3, 2, 2, 3) and f.dtype == np.float32
    want = np.zeros((3, 2, 2, 3))
    want[0, 1, 0, 0] = 1          # event 0: p=1 at (y0, x0)
    want[0, 0, 0, 1] = 2          # events 1, 2: p=0 at (y0, x1), counted twice
    want[1, 1, 1, 2] = 1          # event 3
    want[1, 1, 1, 0] = 2          # events 4, 5
    want[2, 0, 0, 1] = 1          # event 6
    want[2, 1, 0, 1] = 1          # event 7
    want[2, 1, 1, 1] = 1          # event 8
    want[2, 0, 1, 2] = 1          # event 9
    want[2, 0, 0, 0] = 1          # event 10
    np.testing.assert_array_equal(f, want)
    assert f.sum() == 11          # nothing dropped (tonic's ToFrame would drop the remainder)


def test_frames_by_number_accepts_signed_polarity_and_checks_lengths():
    f = frames_by_number(np.arange(4), np.zeros(4, int), np.zeros(4, int), np.array([-1, 1, -1, -1]), 2, 1, 1)
    np.testing.assert_array_equal(f[:, :, 0, 0], [[1, 1], [2, 0]])
    with pytest.raises(ValueError, match="differ in length"):
        frames_by_number(np.arange(4), np.zeros(3, int), np.zeros(4, int), np.zeros(4, int), 2, 1, 1)


def test_resize_matches_torch_antialiased_bilinear():
    np.testing.assert_allclose(resize_antialias(X8, 4), TORCH_4, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(resize_antialias(X8, 8), X8)


def test_resize_weights_are_normalised_and_preserve_constants():
    ones = np.ones((2, 2, 128, 128), np.float32)
    for size in (64, 48, 100, 128, 160):
        np.testing.assert_allclose(resize_antialias(ones, size), 1.0, rtol=1e-6)


def test_model_input_layout_and_third_channel():
    out = model_input(X8, 4)
    assert out.shape == (2, 4, 4, 3)
    np.testing.assert_allclose(out[..., :2], TORCH_4.transpose(0, 2, 3, 1), atol=2e-6)
    np.testing.assert_allclose(out[..., 2], out[..., 0] + out[..., 1], rtol=1e-6)


# 1 + arange(9·12) as a 9×12 image rotated by torchvision's tensor rotate (grid_sample, nearest, zero fill),
# re-derived step by step in PyTorch 2.13, for 25° and 90° (odd/even sizes: pixel-centre ties).
IMG = np.arange(9 * 12, dtype=np.float32).reshape(9, 12) + 1
TORCH_ROT = {25.0: np.array([[0, 0, 0, 0, 7, 8, 21, 22, 22, 35, 36, 0], [0, 0, 5, 6, 18, 19, 20, 33, 34, 47, 48, 0], [2, 3, 16, 17, 30, 31, 32, 45, 46, 59, 59, 72], [14, 15, 28, 29, 30, 42, 43, 56, 57, 70, 71, 72], [26, 26, 39, 40, 41, 54, 55, 68, 69, 70, 83, 83], [37, 38, 39, 52, 53, 66, 67, 79, 80, 81, 94, 95], [37, 50, 50, 63, 64, 77, 78, 79, 92, 93, 106, 107], [0, 61, 62, 75, 76, 89, 90, 91, 103, 104, 0, 0], [0, 73, 74, 87, 87, 88, 101, 102, 0, 0, 0, 0]]), 90.0: np.array([[0, 11, 11, 23, 35, 59, 59, 83, 83, 107, 107, 0], [0, 9, 9, 21, 33, 57, 57, 81, 81, 105, 105, 0], [0, 9, 9, 21, 33, 57, 57, 81, 81, 105, 105, 0], [0, 7, 7, 19, 31, 55, 55, 79, 79, 103, 103, 0], [0, 7, 7, 19, 31, 55, 55, 79, 79, 103, 103, 0], [0, 5, 5, 17, 29, 53, 53, 77, 77, 101, 101, 0], [0, 4, 4, 16, 28, 52, 52, 76, 76, 100, 100, 0], [0, 3, 3, 15, 27, 51, 51, 75, 75, 99, 99, 0], [0, 2, 2, 14, 26, 50, 50, 74, 74, 98, 98, 0]])}


@pytest.mark.parametrize("angle", [25.0, 90.0])
def test_rotation_matches_torchvision(angle):
    np.testing.assert_array_equal(rotate_nearest(IMG, angle), TORCH_ROT[angle])
    np.testing.assert_array_equal(rotate_nearest(IMG, 0.0), IMG)


def test_dvs_augment_ops_shapes_and_determinism():
    frames = np.random.default_rng(0).poisson(1.0, (4, 2, 48, 48)).astype(np.float32)
    outs = [dvs_augment(np.random.default_rng(s), frames) for s in range(40)]
    again = [dvs_augment(np.random.default_rng(s), frames) for s in range(40)]
    for a, b in zip(outs, again):
        assert a.shape == frames.shape and a.dtype == frames.dtype
        np.testing.assert_array_equal(a, b)                       # deterministic under a fixed seed
    # every op applies the same transform to every frame and polarity; pixel values are kept (no blending)
    values = set(np.unique(frames).tolist())
    for a in outs:
        assert set(np.unique(a).tolist()) <= values | {0.0}
    sums = [a.sum() for a in outs]
    assert any(s == frames.sum() for s in sums)                  # flips and rolls keep every event
    assert any(s < frames.sum() for s in sums)                   # cutout and rotation drop some
    x = model_input(frames, 24, rng=np.random.default_rng(1))
    assert x.shape == (4, 24, 24, 3)
    np.testing.assert_allclose(x[..., 2], x[..., 0] + x[..., 1], rtol=1e-6)
