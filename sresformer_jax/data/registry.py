"""The dataset registry: ``config.dataset.name`` → the loader that builds it (``get_dataset``).

Loaders are imported when their dataset is asked for, so a dataset's own dependencies (TFDS, tonic) are needed
only by the runs that use it. ``register`` adds a dataset of one's own: a function
``load(dataset_config, *, global_batch, eval_batch, seed, process_index, process_count, workers)`` that returns
a ``StepIndexedData``.
"""
from __future__ import annotations

import importlib
from typing import Callable

from .base import StepIndexedData, default_workers

_LOADERS: dict[str, str | Callable[..., StepIndexedData]] = {
    "digits": "sresformer_jax.data.digits:load_digits",
    "cifar10": "sresformer_jax.data.images:load_images",
    "cifar100": "sresformer_jax.data.images:load_images",
    "imagenet2012": "sresformer_jax.data.images:load_images",
    "cifar10_dvs": "sresformer_jax.data.dvs:load_events",
    "dvs128_gesture": "sresformer_jax.data.dvs:load_events",
}


def register(name: str, loader: Callable[..., StepIndexedData]) -> None:
    """Makes ``config.dataset.name = name`` build its data with ``loader`` (see the module docstring)."""
    _LOADERS[name] = loader


def names() -> list[str]:
    return sorted(_LOADERS)


def _loader(name: str) -> Callable[..., StepIndexedData]:
    if name not in _LOADERS:
        raise ValueError(f"unknown config.dataset.name {name!r}; one of {', '.join(map(repr, names()))}")
    loader = _LOADERS[name]
    if isinstance(loader, str):
        module, attr = loader.split(":")
        loader = getattr(importlib.import_module(module), attr)
    return loader


def get_dataset(config, process_index: int = 0, process_count: int = 1) -> StepIndexedData:
    """Builds the dataset named by ``config.dataset.name``; a missing or incomplete dataset raises
    ``DatasetNotFoundError`` with the steps to prepare it (before anything is compiled)."""
    name = config.dataset.name
    if config.get("data_dir"):               # --config.data_dir: shorthand for --config.dataset.data_dir
        if config.dataset.get("data_dir") and config.dataset.data_dir != config.data_dir:
            raise ValueError(f"config.data_dir={config.data_dir} and config.dataset.data_dir="
                             f"{config.dataset.data_dir} disagree; set one of them")
        import ml_collections
        dataset = ml_collections.ConfigDict(config.dataset.to_dict())
        dataset.data_dir = config.data_dir
        config = ml_collections.ConfigDict({**config.to_dict(), "dataset": dataset.to_dict()})
    loader = _loader(name)
    return loader(config.dataset, global_batch=config.batch_size, eval_batch=config.eval_batch_size,
                  seed=config.seed, process_index=process_index, process_count=process_count,
                  workers=default_workers(config))
