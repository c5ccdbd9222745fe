"""Training: config checks, state, optimizer and schedule, losses, sharded steps, the loop, evaluation, logging.

    from sresformer_jax.training import train_and_evaluate
    train_and_evaluate(config, workdir)          # what train.py / sresformer-train run
"""
from .trainer import train_and_evaluate

__all__ = ["train_and_evaluate"]
