"""Train a SpikingResformer (the same as the installed ``sresformer-train``).

    python train.py                                             # quickstart on digits → runs/quickstart
    python train.py --config=configs/imagenet.py:ti --workdir=runs/ti --config.batch_size=512

Multi-host (TPU pods, GPU clusters): launch the same command on every host with --distributed; JAX's
runtime finds the coordinator (SLURM, TPU, or --coordinator_address/--num_processes/--process_id).
From Python: ``sresformer_jax.training.train_and_evaluate(config, workdir)``.
"""
import sys

from sresformer_jax import cli

if __name__ == "__main__":
    sys.exit(cli.train())
