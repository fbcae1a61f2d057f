"""Loss, one training step and evaluation: pure functions over a model and batches."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from googlenet.model import GoogLeNet
from googlenet.training.data import Batches

FUSED_SGD_DEVICES = ("cpu", "cuda")  # where torch.optim.SGD has a fused kernel (fused=True)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CPU (AVX-512 bf16) or CUDA; nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(x: Tensor, y: Tensor, device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


class TrainForward(nn.Module):
    """The training forward pass as a module's forward(): what DistributedDataParallel wraps, since DDP
    synchronises gradients only for calls that go through forward()."""

    def __init__(self, model: GoogLeNet, use_aux: bool) -> None:
        super().__init__()
        self.model = model
        self.use_aux = use_aux and model.has_aux

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        return self.model.forward_train(x) if self.use_aux else (self.model(x), None, None)


def training_loss(
    model: nn.Module, x: Tensor, y: Tensor, *, aux_weight: float, label_smoothing: float
) -> tuple[Tensor, Tensor]:
    """(total loss, main logits): the main loss plus aux_weight x each auxiliary loss, as the paper.
    ``model`` is a GoogLeNet or a (possibly DDP-wrapped) TrainForward."""
    if isinstance(model, GoogLeNet):
        model = TrainForward(model, use_aux=aux_weight > 0)
    logits, aux1, aux2 = model(x)
    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    for aux in (aux1, aux2):
        if aux is not None:
            loss = loss + aux_weight * F.cross_entropy(aux, y, label_smoothing=label_smoothing)
    return loss, logits


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


@torch.no_grad()
def predict_logits(
    model: nn.Module | Callable[[Tensor], Tensor],
    batches: Iterator[tuple[Tensor, Tensor]],
    device: torch.device,
    precision: str,
    channels_last: bool,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (float32 logits on CPU, labels) batch by batch. A module runs in eval mode under ``precision``;
    any other callable (an inference engine) is given the batch as it is."""
    if not isinstance(model, nn.Module):
        for x, y in batches:
            yield model(x).float().cpu(), y
        return
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            x, _ = to_device(x, y, device, channels_last)
            with autocast(device, precision):
                logits = model(x)
            yield logits.float().cpu(), y
    finally:
        model.train(was_training)


def evaluate(
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
