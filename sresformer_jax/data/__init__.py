"""Datasets: host-local numpy batches ``{"image", "label"}`` addressed by global step (resumable)."""
from .pipeline import InMemoryData, get_dataset

__all__ = ["InMemoryData", "get_dataset"]
