"""The one way this package flattens and rebuilds pytrees of variables: nested dicts keyed by module names."""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np


def flatten(tree: Any) -> dict[tuple[str, ...], Any]:
    """{(collection, module, ..., leaf name): leaf} for every leaf of ``tree`` (dicts, FrozenDicts, dataclasses
    registered as pytrees)."""
    return {tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
    """The nested dict of ``flatten``'s output."""
    out: dict = {}
    for path, v in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return out


def paths(tree: Any) -> dict[str, Any]:
    """``flatten`` with "a/b/c" string keys (for messages and comparisons)."""
    return {"/".join(path): leaf for path, leaf in flatten(tree).items()}


def to_plain(tree: Any) -> Any:
    """FrozenDicts / Mappings → dicts, leaves → arrays."""
    if isinstance(tree, Mapping):
        return {str(k): to_plain(v) for k, v in tree.items()}
    return tree if isinstance(tree, (jax.Array, np.ndarray)) else np.asarray(tree)
