"""Checkpoints of this project (orbax): one directory per model.

    save_model("ckpt/ti", variables, model.config(), metadata={"source": "official"})
    model, variables = load_model("ckpt/ti")
    logits = model.apply(variables, x, train=False)

Layout (an orbax composite checkpoint, written synchronously and atomically)::

    DIR/state/          the variables pytree (params, batch_stats, firing_rates), orbax StandardCheckpointHandler
    DIR/model_config/   the model config (``SpikingResformer.config()`` keys), JSON
    DIR/metadata/       free-form JSON metadata (source, conversion details, …)
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from .model import SpikingResformer, dummy_input

STATE, MODEL_CONFIG, METADATA = "state", "model_config", "metadata"
_EXPECTED = (f"a directory written by sresformer_jax.checkpoint.save_model (or `python -m sresformer_jax.convert "
             f"from-official`), holding {STATE}/, {MODEL_CONFIG}/ and {METADATA}/")

__all__ = ["save_model", "load_model", "load_config", "load_metadata", "STATE", "MODEL_CONFIG", "METADATA"]


def _checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(
        **{STATE: ocp.StandardCheckpointHandler(), MODEL_CONFIG: ocp.JsonCheckpointHandler(),
           METADATA: ocp.JsonCheckpointHandler()}))


def _plain(tree: Any) -> Any:
    """FrozenDicts / Mappings → dicts, leaves → arrays."""
    if isinstance(tree, Mapping):
        return {str(k): _plain(v) for k, v in tree.items()}
    return tree if isinstance(tree, (jax.Array, np.ndarray)) else np.asarray(tree)


def _leaves(tree: Any) -> dict[str, Any]:
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _expected(model: SpikingResformer) -> dict[str, Any]:
    """Every variable of ``model``: path → ShapeDtypeStruct (traced, nothing computed)."""
    return _leaves(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), dummy_input(model), train=False)))


def _compare(expected: Mapping[str, Any], got: Mapping[str, Any], what: str) -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    misshaped = sorted(f"{k}: expected {list(expected[k].shape)}, got {list(got[k].shape)}"
                       for k in set(expected) & set(got) if tuple(expected[k].shape) != tuple(got[k].shape))
    if missing or unexpected or misshaped:
        lines = ([f"  missing: {k}" for k in missing] + [f"  unexpected: {k}" for k in unexpected]
                 + [f"  mis-shaped: {k}" for k in misshaped])
        raise ValueError(f"{what} do not match the model config "
                         f"({len(missing)} missing, {len(unexpected)} unexpected, {len(misshaped)} mis-shaped):\n"
                         + "\n".join(lines))


def _model(cfg: Mapping[str, Any], dtype=None, param_dtype=jnp.float32) -> SpikingResformer:
    return SpikingResformer.from_config(cfg, dtype=dtype, param_dtype=param_dtype)


def save_model(directory: str | os.PathLike, variables: Mapping[str, Any], model_config: Mapping[str, Any],
               metadata: Mapping[str, Any] | None = None, *, overwrite: bool = False) -> Path:
    """Writes ``variables`` (``{"params": …, "batch_stats": …, "firing_rates": …}``) and the model config
    (``model.config()``) as one orbax checkpoint directory; returns its absolute path.

    The variables are checked against the model the config builds (names and shapes) before anything is
    written. The checkpoint is written beside ``directory`` under a temporary name and renamed into place
    when complete, so a failure leaves nothing behind. An existing ``directory`` is an error unless
    ``overwrite=True`` (then it is replaced only once the new checkpoint is complete).
    """
    directory = Path(directory).absolute()
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} already exists; pass overwrite=True to replace it")
    cfg = json.loads(json.dumps(dict(model_config)))  # JSON-able, plain lists
    model = _model(cfg)                                # validates the config
    state = _plain(variables)
    _compare(_expected(model), _leaves(state), "the variables")
    meta = json.loads(json.dumps(dict(metadata or {}), default=str))
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.partial-{uuid.uuid4().hex[:8]}")
    old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex[:8]}")
    try:
        _checkpointer().save(tmp, ocp.args.Composite(**{
            STATE: ocp.args.StandardSave(state), MODEL_CONFIG: ocp.args.JsonSave(cfg),
            METADATA: ocp.args.JsonSave(meta)}))
        if directory.exists():
            directory.rename(old)
        tmp.rename(directory)
    finally:
        for p in (tmp, old):
            if p.exists():
                shutil.rmtree(p)
    return directory


def _check_dir(directory: Path) -> None:
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint at {directory}: expected {_EXPECTED}")
    absent = [d for d in (STATE, MODEL_CONFIG) if not (directory / d).is_dir()]
    if absent:
        raise FileNotFoundError(f"{directory} is not a model checkpoint (no {', '.join(a + '/' for a in absent)} "
                                f"inside): expected {_EXPECTED}")


def _restore_json(directory: Path, item: str) -> Any:
    if not (directory / item).is_dir():
        return None
    return _checkpointer().restore(directory, ocp.args.Composite(**{item: ocp.args.JsonRestore()}))[item]


def load_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The model config stored in a checkpoint (``SpikingResformer.from_config`` keys)."""
    directory = Path(directory).absolute()
    _check_dir(directory)
    return _restore_json(directory, MODEL_CONFIG)


def load_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """The free-form metadata stored in a checkpoint (``{}`` if none)."""
    directory = Path(directory).absolute()
    _check_dir(directory)
    return _restore_json(directory, METADATA) or {}


def load_model(directory: str | os.PathLike, dtype=None) -> tuple[SpikingResformer, dict]:
    """Restores a checkpoint written by ``save_model``: ``(model, variables)``, ready for
    ``model.apply(variables, x, train=False)``.

    ``dtype=None`` keeps the stored dtypes (the model computes in its input's dtype); a dtype (e.g.
    ``jnp.bfloat16``, or ``jnp.float64`` with ``jax_enable_x64``) casts every floating-point variable and
    becomes the model's computation and parameter dtype, as in ``interop.from_official``.
    """
    directory = Path(directory).absolute()
    _check_dir(directory)
    if dtype is not None and jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("dtype=float64 needs 64-bit JAX: call jax.config.update('jax_enable_x64', True) first")
    cfg = _restore_json(directory, MODEL_CONFIG)
    try:
        meta = _checkpointer().metadata(directory).item_metadata[STATE]
        meta = getattr(meta, "tree", meta)  # TreeMetadata → its dict of ArrayMetadata
        stored = _leaves(meta)
    except Exception as e:  # noqa: BLE001 - orbax raises many kinds
        raise ValueError(f"cannot read the variables' metadata in {directory / STATE}: {e}") from e
    if dtype is None and not jax.config.jax_enable_x64 and any(np.dtype(v.dtype).itemsize == 8 and
                                                                jnp.issubdtype(v.dtype, jnp.floating)
                                                                for v in stored.values()):
        raise ValueError(f"{directory} holds float64 variables: call jax.config.update('jax_enable_x64', True) "
                         "first, or load them as float32 with dtype=jnp.float32")
    param_dtypes = {np.dtype(v.dtype) for k, v in stored.items() if k.startswith("params/")}
    param_dtype = dtype if dtype is not None else (param_dtypes.pop() if len(param_dtypes) == 1 else jnp.float32)
    model = _model(cfg, dtype=dtype, param_dtype=param_dtype)
    _compare(_expected(model), stored, f"the variables stored in {directory / STATE}")
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def target(leaf):
        dt = np.dtype(leaf.dtype)
        if dtype is not None and jnp.issubdtype(dt, jnp.floating):
            dt = jnp.dtype(dtype)
        return jax.ShapeDtypeStruct(tuple(leaf.shape), dt, sharding=sharding)

    restored = _checkpointer().restore(directory, ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(jax.tree_util.tree_map(target, meta))}))[STATE]
    return model, _plain(restored)
