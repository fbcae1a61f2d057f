"""Early exits: the accuracy of the auxiliary heads (after 4a and 4d) beside the main head (after 5b).

The paper adds the two auxiliary classifiers to give the middle of the network "discriminative" features
and extra gradient (section 5). Their accuracy on held-out data shows how much of the decision is already
available a third and two thirds of the way up, and which classes need the whole depth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from googlenet.data import DataError
from googlenet.model import GoogLeNet

HEADS = {"aux1": "aux1 (after 4a)", "aux2": "aux2 (after 4d)", "main": "main (after 5b)"}


@dataclass
class HeadAccuracy:
    """Top-1 of each head, overall and per true class; plus each image's main-head prediction."""

    class_names: list[str]
    heads: list[str]  # keys of HEADS present in the model, shallowest first
    top1: dict[str, float]
    per_class: dict[str, list[float]]  # head -> accuracy per class
    counts: list[int]  # images per class
    labels: Tensor  # (N,) true classes, in the order the split was read
    predicted: Tensor  # (N,) the main head's predictions
    confidence: Tensor  # (N,) the main head's softmax probability of its prediction

    def as_dict(self) -> dict[str, Any]:
        return {
            "heads": {HEADS[h]: round(self.top1[h], 6) for h in self.heads},
            "per_class": {
                name: {"images": n, **{HEADS[h]: round(self.per_class[h][c], 6) for h in self.heads}}
                for c, (name, n) in enumerate(zip(self.class_names, self.counts, strict=True))
            },
        }


@torch.no_grad()
def head_accuracy(
    model: GoogLeNet,
    batches: Iterable[tuple[Tensor, Tensor]],
    class_names: list[str],
    progress: Callable[[Iterable[Any]], Iterable[Any]] = lambda stream: stream,
) -> HeadAccuracy:
    """Run every head of ``model`` (eval mode; built with aux=True for the auxiliary heads) over ``batches``."""
    if model.training:
        raise ValueError("early exits are measured in eval mode (model.eval())")
    heads = (["aux1", "aux2"] if model.aux1 is not None and model.aux2 is not None else []) + ["main"]
    n = len(class_names)
    counts = torch.zeros(n, dtype=torch.long)
    right = {h: torch.zeros(n, dtype=torch.long) for h in heads}
    labels_seen, predicted, confidence = [], [], []
    for x, labels in progress(batches):
        main, aux1, aux2 = model.forward_train(x)
        outputs = {"main": main, "aux1": aux1, "aux2": aux2}
        counts += torch.bincount(labels, minlength=n)
        for head in heads:
            output = outputs[head]
            assert output is not None  # heads lists only the ones the model has
            hits = output.argmax(1) == labels
            right[head] += torch.bincount(labels[hits], minlength=n)
        probabilities = main.float().softmax(1)
        best = probabilities.max(1)
        labels_seen.append(labels)
        predicted.append(best.indices)
        confidence.append(best.values)
    total = int(counts.sum())
    if total == 0:
        raise DataError("the split has no images")
    return HeadAccuracy(
        class_names=class_names,
        heads=heads,
        top1={h: float(right[h].sum()) / total for h in heads},
        per_class={h: (right[h].double() / counts.clamp(min=1)).tolist() for h in heads},
        counts=counts.tolist(),
        labels=torch.cat(labels_seen),
        predicted=torch.cat(predicted),
        confidence=torch.cat(confidence),
    )


def format_heads(result: HeadAccuracy, markdown: bool = False) -> str:
    """The early-exit table: one row per class and a total row, one column per head."""
    names = [HEADS[h] for h in result.heads]
    rows = [
        [name, f"{n:,}", *(f"{result.per_class[h][c]:.4f}" for h in result.heads)]
        for c, (name, n) in enumerate(zip(result.class_names, result.counts, strict=True))
    ]
    rows.append(["all", f"{sum(result.counts):,}", *(f"{result.top1[h]:.4f}" for h in result.heads)])
    header = ["class", "images", *names]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        lines += ["| " + " | ".join(f"**{v}**" if row[0] == "all" else v for v in row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells))
    return "\n".join(lines)
