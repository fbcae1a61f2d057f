"""Do GoogLeNet's auxiliary heads help at test time? The three heads of one checkpoint, averaged.

The paper discards the auxiliary classifiers at inference. They cost little to run (an average pool and two
small fully connected layers after 4a and 4d), so averaging their class probabilities with the main head's is
a free three-member ensemble, if it helps. This script measures it on a checkpoint trained with the
auxiliary heads: every weighting of a grid on the validation split and on the test split, each image seen
as itself and mirrored (as `googlenet evaluate --tta flip`), in bf16. It then names the weighting that
validates best and gives its test top-1 beside the main head's alone, so the choice never looks at the test
set. The run must have held out a validation split (data.val_fraction > 0).

    python bench/head_ensemble.py runs/fashion-mnist-seed0/checkpoints/best.pt [more checkpoints]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor

from googlenet.errors import GoogLeNetError
from googlenet.explain.run import open_split
from googlenet.run.device import autocast
from googlenet.run.metrics import ViewAverage

HEADS = ("main", "aux2", "aux1")
# (main, aux2, aux1) weights of the averaged probabilities; (1, 0, 0) is the main head alone.
GRID = [(1.0, a2, a1) for a2 in (0.0, 0.25, 0.5, 0.75, 1.0) for a1 in (0.0, 0.25, 0.5)]


@torch.no_grad()
def head_probabilities(checkpoint: Path, split: str) -> tuple[dict[str, Tensor], Tensor]:
    """Each head's class probabilities over ``split``, averaged over the image and its mirror image."""
    data = open_split(checkpoint, split)
    if data.model.aux1 is None:
        raise GoogLeNetError(f"{checkpoint} has no auxiliary heads (trained with model.aux off)")
    model = data.model.to(memory_format=torch.channels_last)
    flip = ViewAverage(model)  # only for its views: the image and its mirror image, as evaluate --tta flip
    per_head: dict[str, list[Tensor]] = {head: [] for head in HEADS}
    labels = []
    for x, y in data.batches.epoch(0):
        x = x.contiguous(memory_format=torch.channels_last)
        views = []
        for view in flip.views(x):
            with autocast(torch.device("cpu"), "bf16"):
                main, aux1, aux2 = model.forward_train(view)
            assert aux1 is not None and aux2 is not None
            views.append({"main": main, "aux1": aux1, "aux2": aux2})
        for head in HEADS:
            per_head[head].append(sum(v[head].float().softmax(1) for v in views) / len(views))
        labels.append(y)
    return {head: torch.cat(p) for head, p in per_head.items()}, torch.cat(labels)


def top1(probabilities: dict[str, Tensor], labels: Tensor, weights: tuple[float, float, float]) -> float:
    mixed = sum(w * probabilities[head] for w, head in zip(weights, HEADS, strict=True))
    assert isinstance(mixed, Tensor)
    return float((mixed.argmax(1) == labels).float().mean())


def measure(checkpoint: Path) -> None:
    splits = {split: head_probabilities(checkpoint, split) for split in ("val", "test")}
    print(f"{checkpoint}: top-1 with flip TTA, probabilities weighted main / aux2 (after 4d) / aux1 (after 4a)")
    print("weights          val     test")
    scores = []
    for weights in GRID:
        val, test = (top1(*splits[s], weights) for s in ("val", "test"))
        scores.append((val, test, weights))
        print(f"{weights[0]:.2f} {weights[1]:.2f} {weights[2]:.2f}   {val:.4f}  {test:.4f}")
    val, test, weights = max(scores, key=lambda s: s[0])  # the first best on validation: ties keep fewer heads
    alone = scores[0]
    print(
        f"best on validation: {weights[0]:.2f} / {weights[1]:.2f} / {weights[2]:.2f}, test {test:.4f}; "
        f"the main head alone: test {alone[1]:.4f} ({test - alone[1]:+.4f})\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="+", type=Path, help="checkpoints trained with the auxiliary heads")
    args = parser.parse_args()
    try:
        for checkpoint in args.checkpoint:
            measure(checkpoint)
    except (GoogLeNetError, OSError) as error:
        print(f"head_ensemble: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
