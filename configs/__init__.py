"""Training configs (ml_collections), one recipe per file, each ``get_config(arg)`` with its command and expected
result in the docstring: ``quickstart`` (the default), ``imagenet`` (``ti|s|m|l``), ``cifar10``, ``cifar100``,
``cifar10_dvs``, ``dvs128_gesture`` and ``transfer_*``. ``common``, ``cifar`` and ``dvs`` hold what they share.

They ship with the package, so ``--config=imagenet.py:ti`` (or ``configs/imagenet.py:ti``) names one of them
from any directory; a path to a file of one's own works as usual.
"""
from __future__ import annotations

from pathlib import Path

DIR = Path(__file__).parent


def path(name: str) -> Path | None:
    """The shipped config file called ``name`` (``imagenet.py``, ``configs/imagenet.py`` or ``imagenet``), or None."""
    stem = Path(name).name
    candidate = DIR / (stem if stem.endswith(".py") else stem + ".py")
    return candidate if candidate.is_file() and not candidate.name.startswith("_") else None


def names() -> list[str]:
    return sorted(p.stem for p in DIR.glob("*.py") if not p.name.startswith("_") and p.stem not in (
        "common", "cifar", "dvs"))


def load(spec: str):
    """The ConfigDict of a config spec as ``--config`` takes it: ``NAME.py[:arg]`` (a shipped config, e.g.
    ``imagenet.py:ti``) or a path to a config file of one's own."""
    import importlib.util

    file, _, arg = spec.partition(":")
    where = Path(file) if Path(file).is_file() else path(file)
    if where is None:
        raise FileNotFoundError(f"no config {file!r}: the shipped configs are {', '.join(names())}")
    module_spec = importlib.util.spec_from_file_location(f"_config_{where.stem}", where)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None) if arg else module.get_config()
