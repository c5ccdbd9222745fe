"""Preemption: a SIGTERM (what a TPU pod or SLURM sends before taking the machine) or SIGINT (Ctrl-C) makes the
training loop finish the step in flight, save a checkpoint, close its writers and stop.

One process: this module's signal handlers note the signal, and ``reached(step)`` is true at the next step.
Several processes (``jax.distributed``): JAX's preemption service catches SIGTERM on any host, and
``jax.experimental.multihost_utils.reached_preemption_sync_point(step)`` becomes true on every host at the same
step, so that all of them save the same one; a SIGINT here is handed to that service as a SIGTERM. A second signal
while stopping changes nothing (the save in progress completes; orbax writes atomically, so the previous checkpoint
stays usable even if the process is killed); a third SIGINT aborts at once.
"""
from __future__ import annotations

import os
import signal
import sys

import jax
from jax.experimental import multihost_utils


class Preempted(Exception):
    """Training stopped on a signal after saving ``step`` to ``path`` (it resumes from there)."""

    def __init__(self, signame: str, step: int, path: str):
        super().__init__(f"stopped by {signame} after saving step {step} to {path}")
        self.signame, self.step, self.path = signame, step, path


class PreemptionWatcher:
    """Signal handlers for one training run; ``close()`` (or the context manager) restores the previous ones."""

    def __init__(self):
        self.signame: str | None = None
        self._count = 0
        self._multi = jax.process_count() > 1
        self._previous = {}
        if self._multi:       # JAX's preemption service owns SIGTERM; Ctrl-C goes through it too
            self._install(signal.SIGINT, self._forward)
        else:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._install(sig, self._note)

    def _install(self, sig, handler) -> None:
        try:
            self._previous[sig] = signal.signal(sig, handler)
        except ValueError:    # not the main thread (e.g. a notebook's worker thread): no handlers, no preemption
            pass

    def _note(self, signum, frame) -> None:
        self._count += 1
        name = signal.Signals(signum).name
        if self._count == 1:
            self.signame = name
            print(f"\n{name}: saving a checkpoint after the step in flight, then stopping", file=sys.stderr,
                  flush=True)
        elif signum == signal.SIGINT and self._count >= 3:
            raise KeyboardInterrupt      # aborts now; orbax's atomic writes keep the previous checkpoint usable
        else:
            print(f"{name}: already stopping (a third Ctrl-C aborts without saving; the previous checkpoint "
                  "stays usable)", file=sys.stderr, flush=True)

    def _forward(self, signum, frame) -> None:
        self.signame = self.signame or "SIGINT"
        os.kill(os.getpid(), signal.SIGTERM)

    def reached(self, step: int) -> bool:
        """Whether to save at ``step`` and stop (the same answer on every process)."""
        if self._multi:
            if multihost_utils.reached_preemption_sync_point(step):
                self.signame = self.signame or "SIGTERM"
                return True
            return False
        return self.signame is not None

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
