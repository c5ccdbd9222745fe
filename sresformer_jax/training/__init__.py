"""Training: config checks, state, optimizer and schedule, losses, data-parallel steps, the loop, evaluation,
logging, and the steps lowered ahead of time for any mesh.

    from sresformer_jax.training import train_and_evaluate, lower_steps
    train_and_evaluate(config, workdir)                               # what train.py / sresformer-train run
    train_lowered, eval_lowered = lower_steps(config, mesh, 32)      # the same steps, lowered for any mesh
"""
from .aot import lower_steps
from .trainer import train_and_evaluate

__all__ = ["lower_steps", "train_and_evaluate"]
