"""Training: config, data, schedule, the loop, checkpoints and multi-process runs."""
