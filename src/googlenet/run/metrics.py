"""Evaluation over batches: top-1, top-5, loss, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from googlenet.data import Batches
from googlenet.run.device import autocast, to_device


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    num_samples: int
    confusion: Tensor  # (classes, classes): rows are true classes, columns predictions
    per_class: list[float] = field(default_factory=list)

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}loss": self.loss, f"{prefix}top1": self.top1, f"{prefix}top5": self.top5}


TTA_CHOICES = ("none", "flip")
TTA_NAMES = {"none": "", "flip": "flip test-time augmentation"}


class ViewAverage(nn.Module):
    """Flip test-time augmentation, the paper's multi-crop idea at its smallest: the class probabilities of
    each image and its mirror image, averaged. Returns their log, so that cross-entropy on it is the loss of
    the averaged prediction and argmax is its top-1."""

    def __init__(self, model: nn.Module | Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.model = model

    def views(self, x: Tensor) -> Iterator[Tensor]:
        yield x
        yield x.flip(-1)

    def forward(self, x: Tensor) -> Tensor:
        probabilities = [self.model(view).float().softmax(1) for view in self.views(x)]
        return torch.stack(probabilities).mean(0).log()


def tta_scorer(engine: nn.Module | Callable[[Tensor], Tensor], tta: str) -> nn.Module | Callable[[Tensor], Tensor]:
    """``engine`` wrapped in test-time augmentation ``tta``, one of TTA_CHOICES (evaluate_checkpoint has
    checked it before loading anything)."""
    return engine if tta == "none" else ViewAverage(engine)


@torch.no_grad()
def predict_logits(
    model: nn.Module | Callable[[Tensor], Tensor],
    batches: Iterator[tuple[Tensor, Tensor]],
    device: torch.device,
    precision: str,
    channels_last: bool,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (float32 logits, labels), both on the CPU, batch by batch (batches kept on a GPU bring their
    labels from there). A module runs in eval mode under ``precision``; any other callable (an inference
    engine) is given the batch as it is."""
    if not isinstance(model, nn.Module):
        for x, y in batches:
            yield model(x).float().cpu(), y.cpu()
        return
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            x, _ = to_device(x, y, device, channels_last)
            with autocast(device, precision):
                logits = model(x)
            yield logits.float().cpu(), y.cpu()
    finally:
        model.train(was_training)


def evaluate_batches(  # what to run on what, then keyword-only run settings
    model: nn.Module | Callable[[Tensor], Tensor],
    batches: Batches,
    num_classes: int,
    *,
    device: torch.device | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    progress: object = None,
) -> EvalResult:
    """Top-1, top-5, mean cross-entropy, per-class accuracy and the confusion matrix over one split."""
    device = device or torch.device("cpu")
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    total_loss, top5_hits, seen = 0.0, 0, 0
    stream = batches.epoch(0)
    if callable(progress):
        stream = progress(stream, len(batches))
    for logits, y in predict_logits(model, stream, device, precision, channels_last):
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        k = min(5, num_classes)
        top5_hits += int((logits.topk(k, dim=1).indices == y.view(-1, 1)).any(dim=1).sum())
        confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes**2).view(
            num_classes, num_classes
        )
        seen += int(y.numel())
    if seen == 0:
        raise ValueError("evaluation split is empty")
    per_class_total = confusion.sum(1).clamp(min=1)
    per_class = (confusion.diag().float() / per_class_total).tolist()
    return EvalResult(
        loss=total_loss / seen,
        top1=float(confusion.diag().sum()) / seen,
        top5=top5_hits / seen,
        num_samples=seen,
        confusion=confusion,
        per_class=per_class,
    )
