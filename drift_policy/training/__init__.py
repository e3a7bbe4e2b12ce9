"""Training: the loop, checkpoints, the LR schedule and run logs."""
