"""Training: the train step and loop, the optimizer, checkpoints."""
