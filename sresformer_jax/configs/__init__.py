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
