"""The dataset interface: deterministic, resumable, per-host sharded batching (``StepIndexedData``).

A batch is a function of (seed, global step): epoch e = step // steps_per_epoch uses the permutation
``default_rng([seed, e])`` of the training set (drop-last, like the official loaders), so the data
position of a run is its step — stored in every training checkpoint — and a resumed run sees exactly the
batches it would have seen. Each process reads only its own contiguous slice of every global batch; the
random augmentation of an example is seeded by (seed, step, its position in the global batch), so a run
sees the same augmented batches on any number of hosts and loader threads.

Loading and augmenting runs ahead of training in ``config.dataset.workers`` threads (grain's
``MapDataset`` → ``to_iter_dataset`` prefetch); batches come out in order.
"""
from __future__ import annotations

import abc
import os
import threading
from typing import Iterator

import numpy as np


class DatasetNotFoundError(FileNotFoundError):
    """A dataset directory is missing or incomplete; the message says how to prepare it."""


class DataFileError(ValueError):
    """A file of the dataset is damaged (truncated, corrupt, empty); the message names it and what is wrong."""

    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}. Replace or delete the file, or set --config.dataset.skip_corrupt=True "
                         "to skip damaged files (each skip is counted in metrics.jsonl)")
        self.path, self.problem = str(path), problem


class SkippedFiles:
    """The damaged files a dataset skipped (``dataset.skip_corrupt``), safe to note from loader threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._paths: dict[str, str] = {}

    def note(self, err: DataFileError) -> None:
        with self._lock:
            self._paths.setdefault(err.path, err.problem)

    def __len__(self) -> int:
        with self._lock:
            return len(self._paths)

    def items(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(self._paths.items())


class StepIndexedData(abc.ABC):
    """Rows of a training set of ``num_train`` examples and a test set of ``num_test``, batched by step.

    Subclasses load rows: ``load_train(rows, step, positions)`` (``positions``: each row's place in the global
    batch, for its augmentation seed) and ``load_eval(rows)``, each returning ``{"image", "label"}``.
    """

    def __init__(self, num_train: int, num_test: int, *, num_classes: int, global_batch: int, eval_batch: int,
                 seed: int, process_index: int = 0, process_count: int = 1, workers: int = 0):
        if global_batch % process_count or eval_batch % process_count:
            raise ValueError(f"batch sizes ({global_batch}, eval {eval_batch}) must divide evenly over "
                             f"{process_count} processes")
        if num_train < global_batch:
            raise ValueError(f"batch_size {global_batch} exceeds the {num_train} training examples")
        self.num_train, self.num_test, self.num_classes = num_train, num_test, num_classes
        self.global_batch, self.eval_batch, self.seed = global_batch, eval_batch, seed
        self.process_index, self.process_count = process_index, process_count
        self.steps_per_epoch = num_train // global_batch
        self.workers = workers
        self.skipped = SkippedFiles()
        self._perm_cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    # -- row selection (shared by every dataset) --
    def _local(self, rows: np.ndarray, n_global: int) -> np.ndarray:
        per = n_global // self.process_count
        return rows[self.process_index * per:(self.process_index + 1) * per]

    def _permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._perm_cache:      # keep two epochs: read-ahead threads straddle a boundary
                keep = {e: p for e, p in self._perm_cache.items() if e == epoch - 1}
                keep[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.num_train)
                self._perm_cache = keep
            return self._perm_cache[epoch]

    def train_rows(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, positions in the global batch) of this host's part of global batch ``step``."""
        epoch, i = divmod(step, self.steps_per_epoch)
        perm = self._permutation(epoch)
        positions = self._local(np.arange(self.global_batch), self.global_batch)
        return perm[i * self.global_batch + positions], positions

    def example_rng(self, step: int, position: int) -> np.random.Generator:
        """The augmentation RNG of the example at ``position`` of global batch ``step``."""
        return np.random.default_rng([self.seed, 1, step, int(position)])

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        """The host-local part of global batch ``step``."""
        rows, positions = self.train_rows(step)
        return self.load_train(rows, step, positions)

    def _eval_row_batches(self, pad: bool):
        n = self.num_test
        for start in range(0, n, self.eval_batch):
            if not pad and start + self.eval_batch > n:
                if self.process_count != 1:
                    raise ValueError("unpadded evaluation batches need a single process")
                yield np.arange(start, n), np.ones(n - start, bool)
                return
            rows = np.arange(start, start + self.eval_batch)
            mask = rows < n
            yield self._local(np.where(mask, rows, 0), self.eval_batch), self._local(mask, self.eval_batch)

    def _eval_batch(self, rows_mask) -> dict[str, np.ndarray]:
        rows, mask = rows_mask
        batch = self.load_eval(rows)
        valid = batch.pop("valid", None)                 # rows whose file was skipped count for nothing
        return {**batch, "mask": (mask if valid is None else mask & valid).astype(np.float32)}

    # -- iteration --
    def _prefetch(self, items, fn):
        """``fn`` over ``items`` in order; with workers, through grain in ``workers`` threads, read ahead."""
        if not self.workers:
            return map(fn, items)
        import grain

        ds = grain.MapDataset.source(items).map(fn)
        opts = grain.ReadOptions(num_threads=self.workers, prefetch_buffer_size=2 * self.workers)
        return iter(ds.to_iter_dataset(opts))

    def train_iterator(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
        return self._prefetch(_Range(start_step), self.train_batch)

    def eval_batches(self, pad: bool = True) -> Iterator[dict[str, np.ndarray]]:
        """Host-local eval batches over the whole test set; the last is padded (``mask`` marks real rows),
        or, with ``pad=False`` (single process), just shorter."""
        return self._prefetch(list(self._eval_row_batches(pad)), self._eval_batch)

    @abc.abstractmethod
    def load_train(self, rows: np.ndarray, step: int, positions: np.ndarray) -> dict[str, np.ndarray]:
        """Training rows (augmented with ``example_rng(step, position)``) → {"image", "label"}."""

    @abc.abstractmethod
    def load_eval(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Test rows → {"image", "label"}."""


class _Range:
    """Steps ``start, start + 1, …`` as a (practically unbounded) random-access sequence."""
    LENGTH = 1 << 40

    def __init__(self, start: int):
        self.start = start

    def __getitem__(self, i: int) -> int:
        return self.start + i

    def __len__(self) -> int:
        return self.LENGTH


class InMemoryData(StepIndexedData):
    """Arrays in host memory: train/test images ``[N, H, W, C]`` (or ``[N, T, H, W, C]``) and labels ``[N]``."""

    def __init__(self, train_x, train_y, test_x, test_y, **kw):
        super().__init__(len(train_x), len(test_x), **kw)
        self.train_x, self.train_y = train_x, train_y.astype(np.int32)
        self.test_x, self.test_y = test_x, test_y.astype(np.int32)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def load_train(self, rows, step, positions):
        return {"image": self.train_x[rows], "label": self.train_y[rows]}

    def load_eval(self, rows):
        return {"image": self.test_x[rows], "label": self.test_y[rows]}


def default_workers(config) -> int:
    """``config.dataset.workers``, or (if absent or -1) the CPU cores of this host."""
    w = config.dataset.get("workers", -1)
    if w is None or w < 0:
        return os.cpu_count() or 1
    return int(w)
