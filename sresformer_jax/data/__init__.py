"""Datasets: host-local numpy batches ``{"image", "label"}`` addressed by global step (resumable).

``base`` is the interface (``StepIndexedData``), ``registry`` maps ``config.dataset.name`` to its loader; the
loaders are ``digits``, ``images`` (TFDS or class folders, timm transforms, RandAugment) and ``dvs`` (event
files, SpikingJelly frames).
"""
from .base import DataFileError, DatasetNotFoundError, InMemoryData, StepIndexedData
from .registry import get_dataset, register

__all__ = ["DataFileError", "DatasetNotFoundError", "InMemoryData", "StepIndexedData", "get_dataset", "register"]
