"""sresformer_jax: SpikingResformer (Shi, Hao, Yu, CVPR 2024) in JAX/Flax.

    import sresformer_jax as s
    model = s.create_model("spikingresformer_cifar", num_classes=10, img_size=32)   # conv_impl="auto"
    variables = s.init_variables(model, jax.random.PRNGKey(0))
    logits = model.apply(variables, x, train=False)                               # [T, B, classes]

Modules: ``neurons``, ``layers``, ``attention`` (DSSA), ``ffn`` (GWFFN), ``model`` define what is computed;
``ops`` how (lowerings and compiled CPU kernels); ``deploy`` the folded, spike-driven inference form;
``interop``/``pth``/``convert``/``checkpoint`` move weights; ``energy`` counts SOPs; ``data``, ``training`` and
``configs`` train; ``cli`` is ``sresformer-train``/``sresformer-eval``.

The model API below is imported on first use, so that ``sresformer_jax.deploy.load`` (and the rest of the
inference path: ``neurons``, ``ops``) runs where JAX is installed and Flax is not.
"""
import importlib

__version__ = "0.2.0"
_MODEL_API = ("FiringRatesNotSetError", "SpikingResformer", "VARIANTS", "calibrate", "check_calibrated", "config_for",
              "create_model",
              "init_variables")
__all__ = ["CONV_IMPLS", "load", *_MODEL_API]


def __getattr__(name):
    if name in _MODEL_API:
        return getattr(importlib.import_module(".model", __name__), name)
    if name == "load":
        return importlib.import_module(".checkpoint", __name__).load
    if name == "CONV_IMPLS":
        return importlib.import_module(".ops", __name__).CONV_IMPLS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(__all__))
