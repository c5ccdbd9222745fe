"""A workdir remembers the config it was started with (``WORKDIR/config.json``), so that resuming it with another
one is refused by name, before anything is restored, instead of failing later as if a checkpoint were corrupt.

Resuming may change the fields in ``SAFE_TO_CHANGE``: they decide how often to log, evaluate and save, where the
data lives, how many loader threads read it, how the same values are computed (``model.conv_impl``,
``model.attention_chunk``, ``remat``), or where to stop. Any other difference changes the model, the data or what a step does, and is refused with one
line per field (old → new).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

FILENAME = "config.json"
SAFE_TO_CHANGE = ("log_every_steps", "eval_every_epochs", "checkpoint_every_steps", "keep_checkpoints",
                  "progress_bar", "total_steps", "eval_batch_size", "data_dir", "dataset.data_dir",
                  "dataset.workers", "dataset.skip_corrupt", "model.conv_impl", "model.attention_chunk", "remat",
                  "init_from", "transfer")


class ConfigChangedError(ValueError):
    """The workdir holds a run of another config."""


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim.lr": 0.001, ...}: every leaf of a nested config dict, sequences as lists."""
    out = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, old value, new value) for every field that differs between two configs (missing: None)."""
    a, b = flatten(old), flatten(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check(workdir: Path, config: Mapping[str, Any], stored: Mapping[str, Any] | None) -> list[str]:
    """Compares ``config`` with ``stored`` (the run's config, or None for a fresh run). Raises
    ``ConfigChangedError`` naming every field that may not change; returns the lines of the allowed changes.
    ``loss_scale.*`` only matters to (and may only not change in) float16 runs."""
    if stored is None:
        return []
    from ..model import NEURON_DEFAULTS       # runs stored before the neuron was a field had the official one
    if isinstance(stored.get("model"), Mapping):
        stored = {**stored, "model": {**NEURON_DEFAULTS, **stored["model"]}}
    diffs = differences(stored, config)
    fp16 = config.get("precision") == "float16" or stored.get("precision") == "float16"
    refused = [d for d in diffs if d[0] not in SAFE_TO_CHANGE and (fp16 or not d[0].startswith("loss_scale."))]
    if refused:
        lines = "\n".join(f"  config.{k}: {json.dumps(a)} → {json.dumps(b)}" for k, a, b in refused)
        back = " ".join(f"--config.{k}={_flag_value(a)}" for k, a, _ in refused if a is not None)
        raise ConfigChangedError(
            f"{workdir} holds a run of another config; resuming it with this one would change the model, the data "
            f"or what a step does:\n{lines}\nEither start a new run with another --workdir, or resume this one with "
            f"its values{': ' + back if back else ''} (fields that may change on resume: "
            f"{', '.join(SAFE_TO_CHANGE)}).")
    return [f"config.{k}: {json.dumps(a)} → {json.dumps(b)}" for k, a, b in diffs]


def _flag_value(v: Any) -> str:
    if isinstance(v, list):
        return "'(" + ",".join(json.dumps(x) for x in v) + (",)'" if len(v) == 1 else ")'")
    return json.dumps(v) if isinstance(v, str) and (" " in v or not v) else str(v)


def load(workdir: Path) -> dict | None:
    path = Path(workdir) / FILENAME
    return json.loads(path.read_text()) if path.exists() else None


def save(workdir: Path, config: Mapping[str, Any]) -> Path:
    """Writes the resolved config as indented JSON, atomically (a temporary file renamed into place)."""
    path = Path(workdir) / FILENAME
    tmp = path.with_name(f".{FILENAME}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
