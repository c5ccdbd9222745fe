"""Event frames (SpikingJelly split_by='number') and torchvision's antialiased resize, against hand counts
and numbers produced by PyTorch 2.13 (``interpolate(bilinear, antialias=True)``)."""
from __future__ import annotations

import numpy as np
import pytest

from sresformer_jax.data.events import frames_by_number, model_input, resize_antialias

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
