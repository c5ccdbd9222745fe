"""Deterministic, resumable, per-host sharded batching.

A batch is a function of (seed, global step): epoch e = step // steps_per_epoch uses the permutation
``default_rng([seed, e])`` of the training set (drop-last, like the official loaders), so the data
position of a run is its step and a resumed run sees exactly the batches it would have seen.
Each process reads only its own contiguous slice of every global batch.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np


class InMemoryData:
    """Arrays in host memory: train/test images ``[N, H, W, C]`` (or ``[N, T, H, W, C]``) and labels ``[N]``."""

    def __init__(self, train_x, train_y, test_x, test_y, *, num_classes: int, global_batch: int,
                 eval_batch: int, seed: int, process_index: int = 0, process_count: int = 1):
        if global_batch % process_count or eval_batch % process_count:
            raise ValueError(f"batch sizes ({global_batch}, eval {eval_batch}) must divide evenly over "
                             f"{process_count} processes")
        if len(train_x) < global_batch:
            raise ValueError(f"batch_size {global_batch} exceeds the {len(train_x)} training examples")
        self.train_x, self.train_y = train_x, train_y.astype(np.int32)
        self.test_x, self.test_y = test_x, test_y.astype(np.int32)
        self.num_classes = num_classes
        self.global_batch, self.eval_batch, self.seed = global_batch, eval_batch, seed
        self.process_index, self.process_count = process_index, process_count
        self.steps_per_epoch = len(train_x) // global_batch

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def _local(self, rows: np.ndarray, n_global: int) -> np.ndarray:
        per = n_global // self.process_count
        return rows[self.process_index * per:(self.process_index + 1) * per]

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        """The host-local part of global batch ``step``."""
        epoch, i = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.train_x))
        rows = self._local(perm[i * self.global_batch:(i + 1) * self.global_batch], self.global_batch)
        return {"image": self.train_x[rows], "label": self.train_y[rows]}

    def train_iterator(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
        step = start_step
        while True:
            yield self.train_batch(step)
            step += 1

    def eval_batches(self, pad: bool = True) -> Iterator[dict[str, np.ndarray]]:
        """Host-local eval batches over the whole test set; the last is padded (``mask`` marks real rows),
        or, with ``pad=False`` (single process), just shorter."""
        n = len(self.test_x)
        for start in range(0, n, self.eval_batch):
            if not pad and start + self.eval_batch > n:
                if self.process_count != 1:
                    raise ValueError("unpadded evaluation batches need a single process")
                rows = np.arange(start, n)
                yield {"image": self.test_x[rows], "label": self.test_y[rows],
                       "mask": np.ones(len(rows), np.float32)}
                return
            rows = np.arange(start, start + self.eval_batch)
            mask = rows < n
            rows = np.where(mask, rows, 0)
            rows, mask = self._local(rows, self.eval_batch), self._local(mask, self.eval_batch)
            yield {"image": self.test_x[rows], "label": self.test_y[rows], "mask": mask.astype(np.float32)}


def get_dataset(config, process_index: int = 0, process_count: int = 1) -> InMemoryData:
    """Builds the dataset named by ``config.dataset.name``."""
    name = config.dataset.name
    kw = dict(global_batch=config.batch_size, eval_batch=config.eval_batch_size, seed=config.seed,
              process_index=process_index, process_count=process_count)
    if name == "digits":
        from .digits import load_digits
        return load_digits(config.dataset, **kw)
    raise ValueError(f"dataset {name!r} has no loader in this version; available: 'digits'. "
                     "(ImageNet, CIFAR and the DVS datasets are being added; see README, 'Datasets'.)")
