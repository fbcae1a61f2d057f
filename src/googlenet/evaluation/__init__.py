"""Evaluation and prediction of trained checkpoints: a checkpoint on a split, multi-crop testing and
ensembles, top-k predictions; the metrics themselves are googlenet.run.metrics, which training validates with."""
