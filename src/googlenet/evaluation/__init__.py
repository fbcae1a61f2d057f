"""Evaluation and prediction of trained checkpoints: metrics, multi-crop testing, top-k predictions."""
