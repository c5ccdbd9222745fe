"""sresformer_jax: SpikingResformer (Shi, Hao, Yu, CVPR 2024) in JAX/Flax.

The model API is imported on first use, so that ``sresformer_jax.runtime`` can configure the process before
JAX is imported.
"""
import importlib

__version__ = "0.1.0"
__all__ = ["SpikingResformer", "VARIANTS", "calibrate", "check_calibrated", "config_for", "create_model",
           "init_variables"]


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module(".model", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
