"""sresformer_jax: SpikingResformer (Shi, Hao, Yu, CVPR 2024) in JAX/Flax.

    import sresformer_jax as s
    model = s.create_model("spikingresformer_cifar", num_classes=10, img_size=32)   # conv_impl="auto"
    variables = s.init_variables(model, jax.random.PRNGKey(0))
    logits = model.apply(variables, x, train=False)                               # [T, B, classes]

Modules: ``neurons``, ``layers``, ``attention`` (DSSA), ``ffn`` (GWFFN), ``model`` define what is computed;
``ops`` how (lowerings and compiled CPU kernels); ``interop``/``pth``/``convert``/``checkpoint`` move weights;
``energy`` counts SOPs; ``data``, ``training`` and ``configs`` train; ``cli`` is ``sresformer-train/-eval``.
"""
from .model import (VARIANTS, SpikingResformer, calibrate, check_calibrated, config_for, create_model,
                    init_variables)
from .ops import CONV_IMPLS

__version__ = "0.2.0"
__all__ = ["CONV_IMPLS", "SpikingResformer", "VARIANTS", "calibrate", "check_calibrated", "config_for",
           "create_model", "init_variables"]
