"""Official PyTorch state dict ⇄ Flax variables (the model contract of ARCHITECTURE.md).

    model, variables = from_official(cfg, state_dict, dtype=jnp.float32)
    official = to_official(variables)          # any subset of collections, e.g. {"params": grads}

Every official name maps to exactly one Flax leaf and back. Layouts: conv OIHW ⇄ HWIO, linear
[out, in] ⇄ [in, out], DSSA firing-rate buffers [1, 1, h, 1, 1] ⇄ [h]; BN ``num_batches_tracked``
is dropped on the way in and restored (as ``num_batches_tracked``, default 0) on the way out.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from . import trees
from .architecture import official_module
from .model import SpikingResformer, dummy_input

_BN_LEAF = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def official_name(path: tuple[str, ...]) -> str:
    """Flax leaf path (without the collection) → official state-dict name: the module's official name
    (``architecture.official_module``) and the leaf's (a BatchNorm wrapper's bn.weight, bn.bias, bn.running_mean,
    bn.running_var; a kernel's weight; firing-rate buffers and PLIF's ``w`` as they are)."""
    *mods, leaf = path
    if mods and mods[-1] == "bn":
        leaf = "bn." + _BN_LEAF[leaf]
    elif leaf == "kernel":
        leaf = "weight"
    return f"{official_module('/'.join(mods))}.{leaf}"


def _to_official_array(name: str, v: np.ndarray) -> np.ndarray:
    if name.endswith("firing_rate_x") or name.endswith("firing_rate_attn"):
        return v.reshape(1, 1, -1, 1, 1)
    if name == "classifier.weight":
        return v.T
    if v.ndim == 4:  # HWIO → OIHW
        return v.transpose(3, 2, 0, 1)
    return v


def _from_official_array(name: str, v: np.ndarray) -> np.ndarray:
    if name.endswith("firing_rate_x") or name.endswith("firing_rate_attn"):
        return v.reshape(-1)
    if name == "classifier.weight":
        return v.T
    if v.ndim == 4:  # OIHW → HWIO
        return v.transpose(2, 3, 1, 0)
    return v


def name_table(model: SpikingResformer) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """Official name → (Flax path with collection first, official shape) for every leaf of ``model``."""
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), dummy_input(model), train=False))
    table = {}
    for path, leaf in trees.flatten(abstract).items():
        name = official_name(path[1:])
        table[name] = (path, _to_official_array(name, np.zeros(leaf.shape, np.int8)).shape)
    return table


def from_official(cfg: Mapping[str, Any], state_dict: Mapping[str, Any], dtype=jnp.float32,
                  conv_impl: str = "auto") -> tuple[SpikingResformer, dict]:
    """Builds the model of ``cfg`` (the golden files' config keys) and its variables from an official
    state dict (numpy arrays or torch tensors). Parameters and state are cast to ``dtype``, which is
    also the model's computation dtype; ``conv_impl`` is the model's lowering. Missing, unexpected or
    mis-shaped keys raise a ``ValueError`` that lists them all."""
    if jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("dtype=float64 needs 64-bit JAX: call jax.config.update('jax_enable_x64', True) first")
    model = SpikingResformer.from_config(cfg, dtype=dtype, param_dtype=dtype, conv_impl=conv_impl)
    table = name_table(model)
    given = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    trees.check_fits({k: shape for k, (_, shape) in table.items()}, given,
                     f"the state dict does not match the model config (planes={list(model.planes)}, "
                     f"num_classes={model.num_classes}, activation={model.activation})")
    flat = {path: jnp.asarray(_from_official_array(name, _to_numpy(given[name])), dtype)
            for name, (path, _) in table.items()}
    return model, trees.unflatten(flat)


def check_official_neuron(cfg: Mapping[str, Any]) -> None:
    """Raises ``ValueError`` naming every neuron setting of the model config ``cfg`` that the official model
    cannot express (its neurons are fixed: τ = 2, threshold 1, the ATan surrogate with α = 2); weights trained with
    other settings would compute something else there."""
    from .model import NEURON_DEFAULTS
    other = {k: cfg[k] for k, v in NEURON_DEFAULTS.items() if k in cfg and cfg[k] != v
             and not (k == "surrogate_alpha" and cfg[k] == 2.0 and cfg.get("surrogate", "atan") == "atan")}
    if other:
        raise ValueError("the official model cannot express " + ", ".join(f"{k}={v!r}" for k, v in other.items())
                         + " (its neurons have " + ", ".join(f"{k}={NEURON_DEFAULTS[k]!r}" for k in other)
                         + "); these weights would compute something else there")


def to_official(variables: Mapping[str, Any], num_batches_tracked: int | None = 0) -> dict[str, np.ndarray]:
    """Flax variables (any subset of the collections ``params``, ``batch_stats``, ``firing_rates``, or a
    same-structured tree such as gradients under ``params``) → official names and layouts (numpy).
    With ``batch_stats`` present, each BN's ``num_batches_tracked`` is added (int64), unless ``None``."""
    out = {}
    for path, v in trees.flatten(variables).items():
        name = official_name(path[1:])
        out[name] = _to_official_array(name, np.asarray(v))
        if num_batches_tracked is not None and name.endswith(".bn.running_mean"):
            out[name[: -len("running_mean")] + "num_batches_tracked"] = np.asarray(num_batches_tracked,
                                                                                  np.int64)
    return out


__all__ = ["from_official", "to_official", "check_official_neuron", "official_name", "name_table"]
