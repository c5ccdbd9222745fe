"""sresformer_jax: SpikingResformer (Shi, Hao, Yu, CVPR 2024) in JAX/Flax."""
from .model import (SpikingResformer, VARIANTS, calibrate, check_calibrated, config_for, create_model,
                    init_variables)

__version__ = "0.1.0"
__all__ = ["SpikingResformer", "VARIANTS", "calibrate", "check_calibrated", "config_for", "create_model",
           "init_variables"]
