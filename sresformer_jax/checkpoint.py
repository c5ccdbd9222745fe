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

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from . import trees
from .model import SpikingResformer, dummy_input

STATE, MODEL_CONFIG, METADATA = "state", "model_config", "metadata"
_EXPECTED = (f"a directory written by sresformer_jax.checkpoint.save_model (or `python -m sresformer_jax.convert "
             f"from-official`), holding {STATE}/, {MODEL_CONFIG}/ and {METADATA}/")

__all__ = ["load", "save_model", "load_model", "load_variables", "load_config", "load_metadata", "STATE",
           "MODEL_CONFIG", "METADATA"]


def _checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(
        **{STATE: ocp.StandardCheckpointHandler(), MODEL_CONFIG: ocp.JsonCheckpointHandler(),
           METADATA: ocp.JsonCheckpointHandler()}))


def _expected(model: SpikingResformer) -> dict[str, Any]:
    """Every variable of ``model``: path → ShapeDtypeStruct (traced, nothing computed)."""
    return trees.paths(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), dummy_input(model), train=False)))


def _compare(expected: Mapping[str, Any], got: Mapping[str, Any], what: str) -> None:
    trees.check_fits(expected, got, f"{what} do not match the model config")


def _model(cfg: Mapping[str, Any], dtype=None, param_dtype=jnp.float32, conv_impl: str = "xla") -> SpikingResformer:
    """The model of a stored config (``conv_impl="xla"`` where only names and shapes are needed)."""
    return SpikingResformer.from_config(cfg, dtype=dtype, param_dtype=param_dtype, conv_impl=conv_impl)


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
    state = trees.to_plain(variables)
    _compare(_expected(model), trees.paths(state), "the variables")
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


def load_model(directory: str | os.PathLike, dtype=None, conv_impl: str = "auto") -> tuple[SpikingResformer, dict]:
    """Restores a checkpoint written by ``save_model``: ``(model, variables)``, ready for
    ``model.apply(variables, x, train=False)``.

    ``dtype=None`` keeps the stored dtypes (the model computes in its input's dtype); a dtype (e.g.
    ``jnp.bfloat16``, or ``jnp.float64`` with ``jax_enable_x64``) casts every floating-point variable and
    becomes the model's computation and parameter dtype, as in ``interop.from_official``. ``conv_impl`` is the
    returned model's lowering (``ops.lowering``).
    """
    directory = Path(directory).absolute()
    _check_dir(directory)
    if dtype is not None and jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("dtype=float64 needs 64-bit JAX: call jax.config.update('jax_enable_x64', True) first")
    cfg = _restore_json(directory, MODEL_CONFIG)
    try:
        meta = _checkpointer().metadata(directory).item_metadata[STATE]
        meta = getattr(meta, "tree", meta)  # TreeMetadata → its dict of ArrayMetadata
        stored = trees.paths(meta)
    except Exception as e:  # noqa: BLE001 - orbax raises many kinds
        raise ValueError(f"cannot read the variables' metadata in {directory / STATE}: {e}") from e
    if dtype is None and not jax.config.jax_enable_x64 and any(np.dtype(v.dtype).itemsize == 8 and
                                                                jnp.issubdtype(v.dtype, jnp.floating)
                                                                for v in stored.values()):
        raise ValueError(f"{directory} holds float64 variables: call jax.config.update('jax_enable_x64', True) "
                         "first, or load them as float32 with dtype=jnp.float32")
    param_dtypes = {np.dtype(v.dtype) for k, v in stored.items() if k.startswith("params/")}
    param_dtype = dtype if dtype is not None else (param_dtypes.pop() if len(param_dtypes) == 1 else jnp.float32)
    model = _model(cfg, dtype=dtype, param_dtype=param_dtype, conv_impl=conv_impl)
    _compare(_expected(model), stored, f"the variables stored in {directory / STATE}")
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def target(leaf):
        dt = np.dtype(leaf.dtype)
        if dtype is not None and jnp.issubdtype(dt, jnp.floating):
            dt = jnp.dtype(dtype)
        return jax.ShapeDtypeStruct(tuple(leaf.shape), dt, sharding=sharding)

    restored = _checkpointer().restore(directory, ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(jax.tree_util.tree_map(target, meta))}))[STATE]
    return model, trees.to_plain(restored)


# --------------------------------------------------------------------------------------------------------
# Training checkpoints: workdir/checkpoints/<step>/ (the last K) and workdir/best/<step>/ (best held-out
# top-1). Each holds ``state/`` (the whole TrainState pytree) and ``meta/`` (JSON: step, data position,
# best top-1, the model config and the full training config).
# --------------------------------------------------------------------------------------------------------

TRAIN_ITEMS = ("state", "meta")


class CorruptCheckpointError(ValueError):
    """No readable training checkpoint remains in a workdir that has checkpoints."""


class CheckpointMismatchError(ValueError):
    """A workdir's checkpoints hold a model of other shapes than the one being trained (another config)."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, file too large, ...); the previous one is still in place."""


_SHAPE_MISMATCH = ("not compatible with the stored shape", "shape mismatch", "Shape mismatch",
                   "does not match the shape", "tree structures do not match")     # another model, not damage


def _train_state_dict(state) -> dict:
    """The TrainState as orbax stores it: its state dict, without the loss scale when it has no leaves (every
    precision but float16), so that those checkpoints keep one layout."""
    from flax import serialization
    d = serialization.to_state_dict(state)
    if d.get("loss_scale") == {}:
        del d["loss_scale"]
    return d


def _manager(directory: Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True)
    return ocp.CheckpointManager(directory, options=options, item_names=TRAIN_ITEMS)


def _io_cause(err: Exception) -> str:
    """A save error in a few words: the operating system's reason when tensorstore's message names one (its
    messages are long and put it last), else the start of the message."""
    text = " ".join(str(err).split())
    os_error = re.search(r"\[OS error(?: \d+)?: ([^\]]+)\]", text) or re.search(
        r"(No space left on device|File too large|Disk quota exceeded|Read-only file system|Permission denied)", text)
    head = text[:200] + ("…" if len(text) > 200 else "")
    return f"{os_error.group(1)} ({head})" if os_error else (head or type(err).__name__)


@contextlib.contextmanager
def _orbax_errors_reported_here():
    """While saving, orbax logs a failed write at ERROR with a traceback from each of its writer threads; the
    caller reports the failure itself, once, so those logs are held back (absl's level is restored after)."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        absl.setLevel(level)


def quiet_closed_loop_callbacks() -> None:
    """Drops the "Event loop is closed" errors that tensorstore's write callbacks raise into orbax's per-save event
    loop after a failed save has closed it (hundreds of identical tracebacks at exit otherwise); every other
    unraisable exception still reaches the previous hook."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
            return
        previous(unraisable)

    sys.unraisablehook = hook


class TrainCheckpoints:
    """The checkpoints of one training workdir (orbax ``CheckpointManager``s; writes are atomic)."""

    def __init__(self, workdir: str | os.PathLike, keep: int = 2):
        workdir = Path(workdir).absolute()
        self.latest_dir, self.best_dir = workdir / "checkpoints", workdir / "best"
        self._latest = _manager(self.latest_dir, keep)
        self._best = _manager(self.best_dir, 1)

    @staticmethod
    def _args(state, meta) -> ocp.args.Composite:
        return ocp.args.Composite(state=ocp.args.StandardSave(_train_state_dict(state)),
                                  meta=ocp.args.JsonSave(json.loads(json.dumps(meta, default=str))))

    def save(self, step: int, state, meta: Mapping[str, Any]) -> None:
        if step not in self._latest.all_steps():
            self._write(self._latest, self.latest_dir, step, state, meta)

    def save_best(self, step: int, state, meta: Mapping[str, Any]) -> None:
        if step in self._best.all_steps():
            return
        self._write(self._best, self.best_dir, step, state, meta)
        for old in self._best.all_steps():           # the new best is complete: only now drop the old one
            if old != step:
                self._best.delete(old)

    def _write(self, manager, directory: Path, step: int, state, meta) -> None:
        """One synchronous, atomic save; a failure names the path and the cause and keeps the previous one."""
        try:
            with _orbax_errors_reported_here():
                manager.save(step, args=self._args(state, meta), force=True)
        except Exception as e:  # noqa: BLE001 - tensorstore and orbax report I/O failures as many kinds
            previous = [s for s in manager.all_steps() if s != step]
            cause = _io_cause(e)
            # The failure is reported once, below; the writer tasks that failed beside the first one would each
            # log their own traceback when collected (asyncio's "exception was never retrieved"), orbax's too.
            for name in ("asyncio", "absl"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
            raise CheckpointWriteError(
                f"could not write checkpoint {directory / str(step)}: {cause}. "
                + (f"The previous checkpoint {directory / str(max(previous))} is still the one a resume uses"
                   if previous else "No earlier checkpoint exists in " + str(directory))
                + "; training stopped so that no more steps run unsaved. Free space (or raise the file size "
                "limit) and start the same command again to resume.") from None

    def restore_latest(self, abstract_state):
        """(state, meta) of the newest readable checkpoint, or None when the workdir has none.

        A checkpoint that fails to restore (deleted, truncated or garbage files) is reported and skipped
        for the one before it; if checkpoints exist but none is readable, ``CorruptCheckpointError``."""
        from flax import serialization
        steps = sorted(self._latest.all_steps(), reverse=True)
        errors, bad = [], []
        for step in steps:
            try:
                restored = self._latest.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_train_state_dict(abstract_state)),
                    meta=ocp.args.JsonRestore()))
                state = serialization.from_state_dict(abstract_state, {"loss_scale": {}, **restored["state"]})
                self._set_aside(bad)
                return state, dict(restored["meta"])
            except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many kinds
                path = self.latest_dir / str(step)
                if any(m in str(e) for m in _SHAPE_MISMATCH):
                    raise CheckpointMismatchError(
                        f"{path} holds a model of other shapes or structure than this config builds ("
                        f"{(str(e).splitlines() or [''])[0][:200]}): it was written by a run of another config. "
                        "Use another --workdir, or the config this run was started with; nothing was moved "
                        "or changed.") from None
                errors.append(f"{path}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}")
                bad.append(step)
                print(f"checkpoint {path} is unreadable ({type(e).__name__}: "
                      f"{(str(e).splitlines() or [''])[0][:200]}); trying an older one", file=sys.stderr)
        if steps:
            raise CorruptCheckpointError(
                "no readable checkpoint in " + str(self.latest_dir) + ":\n  " + "\n  ".join(errors)
                + "\nRefusing to start from scratch over this workdir: move it away or pick another --workdir.")
        return None

    def _set_aside(self, steps) -> None:
        """Moves unreadable step directories to WORKDIR/corrupt_checkpoints/ (kept for inspection, never
        loaded), so that the re-trained steps can be saved again."""
        if not steps or jax.process_index() != 0:
            return
        aside = self.latest_dir.parent / "corrupt_checkpoints"
        aside.mkdir(exist_ok=True)
        for step in steps:
            target = aside / f"{step}-{uuid.uuid4().hex[:6]}"
            shutil.move(str(self.latest_dir / str(step)), str(target))
            print(f"moved unreadable checkpoint {self.latest_dir / str(step)} to {target}", file=sys.stderr)
        self._latest.reload()

    def close(self) -> None:
        self._latest.close()
        self._best.close()


def _train_checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(state=ocp.StandardCheckpointHandler(),
                                                           meta=ocp.JsonCheckpointHandler()))


def load_train_meta(step_dir: str | os.PathLike) -> dict:
    """The JSON metadata of one training checkpoint: step, data position, best top-1, model and training config."""
    return dict(_train_checkpointer().restore(Path(step_dir).absolute(),
                                              ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])


def _restore_train_variables(step_dir: Path) -> tuple[dict, dict]:
    """(meta, variables) from one training checkpoint step directory."""
    ckptr = _train_checkpointer()
    meta = load_train_meta(step_dir)
    tree = ckptr.metadata(step_dir).item_metadata["state"]
    tree = getattr(tree, "tree", tree)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding), tree)
    state = ckptr.restore(step_dir, ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    return dict(meta), {c: trees.to_plain(state[c]) for c in ("params", "batch_stats", "firing_rates")}


def find_train_checkpoint(path: str | os.PathLike, prefer: str = "best") -> Path | None:
    """The step directory to use for a training workdir (``best`` or ``latest``), or None if there is none."""
    path = Path(path).absolute()
    order = ("best", "checkpoints") if prefer == "best" else ("checkpoints", "best")
    for sub in (*order, "."):            # "." : ``path`` is itself ``best/`` or ``checkpoints/``
        d = path / sub
        steps = sorted((int(p.name) for p in d.iterdir() if p.name.isdigit()), reverse=True) if d.is_dir() else []
        if steps:
            return d / str(steps[0])
    return None


def load_variables(path: str | os.PathLike, prefer: str = "best") -> tuple[dict, dict]:
    """(model config, variables) from a model checkpoint (``save_model``/convert), a training workdir
    (its best, else latest, checkpoint) or one training step directory."""
    path = Path(path).absolute()
    if (path / STATE).is_dir() and (path / MODEL_CONFIG).is_dir():
        model, variables = load_model(path)
        return model.config(), variables
    step_dir = path if (path / "meta").is_dir() and (path / "state").is_dir() else find_train_checkpoint(path, prefer)
    if step_dir is None:
        raise FileNotFoundError(f"no checkpoint at {path}: expected a training workdir (with checkpoints/ or "
                                f"best/), its best/ or checkpoints/, one of their step directories, or {_EXPECTED}")
    meta, variables = _restore_train_variables(step_dir)
    return meta["model_config"], variables


def load(path: str | os.PathLike, *, dtype=None, conv_impl: str = "auto", prefer: str = "best"):
    """``(model, variables)`` ready for ``model.apply(variables, x, train=False)``, from whatever ``path`` is:

    * a training workdir (its best checkpoint; ``prefer="latest"`` for the newest), its ``best/`` or
      ``checkpoints/``, or one step directory such as ``checkpoints/400``;
    * a model checkpoint written by ``save_model`` or ``python -m sresformer_jax.convert from-official``;
    * a deploy export (``deploy.export``): then ``model`` is the ``deploy.DeployedModel`` and ``variables`` its
      weights, and ``model.apply(variables, x)`` is the spike-driven forward.

    ``dtype`` casts every floating-point variable and becomes the model's compute dtype (None: as stored);
    ``conv_impl`` is the lowering on this machine ("auto": the platform's best).
    """
    from . import deploy
    path = Path(path).absolute()
    if (path / deploy.GRAPH).is_file():
        fn = deploy.load(path, conv_impl=conv_impl)
        return fn, fn.weights
    if (path / STATE).is_dir() and (path / MODEL_CONFIG).is_dir():
        return load_model(path, dtype=dtype, conv_impl=conv_impl)
    step_dir = path if (path / "meta").is_dir() and (path / "state").is_dir() else find_train_checkpoint(path, prefer)
    if step_dir is None:
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())[:8] if path.is_dir() else None
        raise FileNotFoundError(
            f"no checkpoint at {path} ({'it does not exist' if found is None else 'it holds ' + (', '.join(found) or 'nothing')}): "
            f"expected a training workdir (with best/ or checkpoints/), its best/ or checkpoints/, one of their step "
            f"directories, {_EXPECTED}, or a deploy export ({deploy.GRAPH} and {deploy.WEIGHTS})")
    meta, variables = _restore_train_variables(step_dir)
    if dtype is not None:
        if jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
            raise ValueError("dtype=float64 needs 64-bit JAX: call jax.config.update('jax_enable_x64', True) first")
        variables = jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, variables)
    param_dtype = dtype if dtype is not None else variables["params"]["classifier"]["kernel"].dtype
    return _model(meta["model_config"], dtype=dtype, param_dtype=param_dtype, conv_impl=conv_impl), variables
