"""The training objective: the main cross-entropy plus 0.3 x each auxiliary classifier's, as the paper."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from googlenet.model import GoogLeNet


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
