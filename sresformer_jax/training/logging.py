"""Metrics out: progress bar, ``workdir/metrics.jsonl``, TensorBoard, and a PNG of the curves.

Only process 0 writes. Every record is one JSON line ``{"step": s, "split": "train"|"test", ...}``.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax


class MetricLogger:
    def __init__(self, workdir: str | Path, total_steps: int, start_step: int = 0, progress: bool = True):
        self.workdir = Path(workdir)
        self.main = jax.process_index() == 0
        self.path = self.workdir / "metrics.jsonl"
        self._tb = None
        self._bar = None
        if self.main:
            self.workdir.mkdir(parents=True, exist_ok=True)
            try:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
            except ImportError:  # pragma: no cover - tensorboardX is in requirements.txt
                print("tensorboardX not installed: no TensorBoard logs", file=sys.stderr)
            if progress:
                from tqdm import tqdm
                self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                                 file=sys.stderr, smoothing=0.1)
        self._t0 = time.time()

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self.main:
            return
        rec = {"step": int(step), "split": split, "time": round(time.time() - self._t0, 3),
               **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(f"{split}/{k}", float(v), int(step))
            self._tb.flush()

    def progress(self, n: int, **postfix) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                                      refresh=False)

    def message(self, text: str) -> None:
        if not self.main:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | Path) -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_curves(workdir: str | Path, out_name: str = "curves.png") -> Path | None:
    """Training loss / accuracy, held-out accuracy and learning rate against step → PNG."""
    recs = read_metrics(workdir)
    if not recs:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in recs if r["split"] == "train"]
    test = [r for r in recs if r["split"] == "test"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    if train:
        axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if test:
        axes[0].plot([r["step"] for r in test], [r["loss"] for r in test], "o-", label="held-out")
        axes[1].plot([r["step"] for r in test], [100 * r["top1"] for r in test], "o-", label="held-out top-1")
    if train:
        axes[1].plot([r["step"] for r in train], [100 * r["top1"] for r in train], label="train top-1")
        axes[2].plot([r["step"] for r in train], [r["lr"] for r in train])
    for ax, title in zip(axes, ("loss", "accuracy (%)", "learning rate")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(), axes[1].legend()
    fig.tight_layout()
    out = Path(workdir) / out_name
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
