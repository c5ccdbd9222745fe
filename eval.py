"""Evaluate a checkpoint: held-out top-1/top-5/loss, per-layer firing rates, SOPs and energy (the same as the
installed ``sresformer-eval``).

    python eval.py                                       # the quickstart run in runs/quickstart
    python eval.py --workdir=runs/ti                     # best (else latest) checkpoint of a training run
    python eval.py --workdir=runs/ti --which=latest
    python eval.py --config=configs/imagenet.py:ti --checkpoint=ckpt/ti_official --workdir=runs/ti_official

Writes WORKDIR/eval.json (top1, top5, loss, sops_per_image, energy_mj, firing_rates, per-layer SOPs, dense
MACs, A/S power ratio) and WORKDIR/firing_rates.png. The dataset comes from the training config stored in the
checkpoint, or from --config (needed for a converted official checkpoint). From Python:
``sresformer_jax.training.evaluation.evaluate_checkpoint(workdir, ...)``.
"""
import sys

from sresformer_jax import cli

if __name__ == "__main__":
    sys.exit(cli.evaluate())
