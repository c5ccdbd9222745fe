"""Training: optimizer and schedule, losses, train state, sharded steps, checkpoints, logging, the loop."""
