"""Shared fixtures: golden files (numbers from the official PyTorch model, copied from shared/golden)."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_FILES = ("imagenet_style_lif_t4.npz", "cifar_style_lif_t4.npz", "dvs_style_plif_t8.npz")
# Files whose float32 forward is stable (golden README): cifar_style is chaotic in float32.
FLOAT32_STABLE = ("imagenet_style_lif_t4.npz", "dvs_style_plif_t8.npz")


def load_golden(name: str) -> dict:
    """The golden npz as a dict: config (parsed), NHWC input, labels and the official tensors."""
    d = np.load(GOLDEN / name)
    x = d["x"]
    x = x.transpose(0, 2, 3, 1) if x.ndim == 4 else x.transpose(0, 1, 3, 4, 2)  # → NHWC / [B,T,H,W,C]
    out = {"config": json.loads(str(d["config"])), "x": x, "y": d["y"],
           "spike_rates": json.loads(str(d["spike_rates"]))}
    for k in d.files:
        if k not in out:
            out[k] = d[k]
    for prefix in ("init", "grad", "after_train"):
        out[prefix] = {k[len(prefix) + 1:]: d[k] for k in d.files if k.startswith(prefix + "/")}
    return out


@pytest.fixture
def x64():
    """Enables float64 for one test only."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def event_kernels():
    """Builds and loads the compiled CPU kernels; skips only when no C++ compiler exists to build them (their
    build and fallback are tested in test_kernels.py)."""
    from sresformer_jax.ops import kernels

    try:
        return kernels.load()
    except kernels.KernelBuildError as err:
        if "no C++ compiler" in str(err):
            pytest.skip(str(err))
        raise
