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


def shape_of(leaf: Any) -> tuple[int, ...]:
    """The shape of an array, a ShapeDtypeStruct, a torch tensor or a plain shape tuple."""
    if isinstance(leaf, tuple) and all(isinstance(d, int) for d in leaf):
        return leaf
    return tuple(np.shape(leaf) if not hasattr(leaf, "shape") else leaf.shape)


def differences(expected: Mapping[str, Any], got: Mapping[str, Any]) -> list[str]:
    """One line per difference between two name → array (or shape) tables: ``missing: NAME (expected shape
    [..])``, ``unexpected: NAME (shape [..])`` and ``mis-shaped: NAME: expected [..], got [..]``, sorted by name
    within each kind. Every loader reports a tree that does not fit with these lines."""
    want = {k: shape_of(v) for k, v in expected.items()}
    have = {k: shape_of(v) for k, v in got.items()}
    return ([f"missing: {k} (expected shape {list(want[k])})" for k in sorted(set(want) - set(have))]
            + [f"unexpected: {k} (shape {list(have[k])})" for k in sorted(set(have) - set(want))]
            + [f"mis-shaped: {k}: expected {list(want[k])}, got {list(have[k])}"
               for k in sorted(set(want) & set(have)) if want[k] != have[k]])


class MismatchError(ValueError):
    """A tree of variables or tensors that does not fit what was expected; ``lines`` lists every difference."""

    def __init__(self, message: str, lines: list[str]):
        super().__init__(message)
        self.lines = lines


def check_fits(expected: Mapping[str, Any], got: Mapping[str, Any], what: str, error: type = MismatchError) -> None:
    """Raises ``error`` (a ``MismatchError`` subclass, ``lines`` set) listing every difference (``differences``)
    when ``got`` does not fit ``expected``: "WHAT (N missing, N unexpected, N mis-shaped):" and one indented line
    each."""
    lines = differences(expected, got)
    if lines:
        kinds = [sum(line.startswith(k) for line in lines) for k in ("missing", "unexpected", "mis-shaped")]
        raise error(f"{what} ({kinds[0]} missing, {kinds[1]} unexpected, {kinds[2]} mis-shaped):\n"
                    + "\n".join(f"  {line}" for line in lines), lines)
