"""Multi-crop and ensemble evaluation, reported in the form of the paper's Table 3.

Every image is decoded once; each model sees every view of the crop plan in one batch, and the softmax
is averaged over views and models. Top-1/top-5 errors are computed for every (models, crops) pair asked
for, so one pass gives the whole table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision.transforms import functional as TF
from tqdm import tqdm

from googlenet.config import config_from_dict
from googlenet.data import DataError, Preprocessing, class_names_for, open_image
from googlenet.data.crops import crop_plan, render
from googlenet.errors import GoogLeNetError
from googlenet.model import GoogLeNet
from googlenet.run.checkpoint import load_checkpoint, model_from_checkpoint
from googlenet.speedups import optimize_for_inference

# The paper's Table 3 (top-5 error on ILSVRC 2012 validation), quoted beside ours.
PAPER_TABLE3 = {(1, 1): 10.07, (1, 10): 9.15, (1, 144): 7.89, (7, 1): 8.09, (7, 10): 7.62, (7, 144): 6.67}


@dataclass
class TableRow:
    models: int
    crops: int
    top1_error: float
    top5_error: float
    paper_top5_error: float | None


def _samples(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    try:
        folder = ImageFolder(str(root))
    except (FileNotFoundError, OSError) as error:
        raise DataError(f"{root} is not a usable image folder: {error}") from None
    names = class_names_for(root, list(folder.classes))
    if names == folder.classes:  # a split folder: the synset mapping lives in the dataset root above it
        names = class_names_for(root.parent, list(folder.classes))
    return [(Path(p), int(c)) for p, c in folder.samples], names


def _check_compatible(models: Sequence[tuple[GoogLeNet, Preprocessing, list[str]]]) -> None:
    _, prep0, names0 = models[0]
    for _, prep, names in models[1:]:
        if names != names0:
            raise GoogLeNetError("the checkpoints of an ensemble must have the same class names in the same order")
        if prep.in_channels != prep0.in_channels:
            raise GoogLeNetError("the checkpoints of an ensemble must take the same number of input channels")


@torch.no_grad()
def view_probabilities(model: GoogLeNet, prep: Preprocessing, image: Tensor, crops: int) -> Tensor:
    """Softmax of every view of one (C, H, W) [0, 1] image: (views, classes)."""
    _, height, width = image.shape
    plan = crop_plan(width, height, crops, prep.image_size)
    views = TF.normalize(render(image, plan, prep.image_size), prep.mean, prep.std)
    return model(views).float().softmax(1)


def ensemble_table(
    checkpoints: Sequence[str | Path],
    root: str | Path,
    crop_counts: Sequence[int],
    *,
    progress: bool = False,
) -> tuple[list[TableRow], int]:
    """Top-1/top-5 error for the first model alone and for all models together, at each crop count, over
    the image folder ``root`` (one sub-folder per class, named as the checkpoints' classes)."""
    loaded = [model_from_checkpoint(load_checkpoint(c)) for c in checkpoints]
    loaded = [(optimize_for_inference(m), p, n) for m, p, n in loaded]
    _check_compatible(loaded)
    samples, folder_classes = _samples(Path(root))
    names = loaded[0][2]
    index = {name: i for i, name in enumerate(names)}
    missing = [c for c in folder_classes if c not in index]
    if missing:
        raise DataError(f"{root} has classes the checkpoints do not know: {', '.join(missing[:5])}")
    model_counts = sorted({1, len(loaded)})
    hits = {(m, c): [0, 0] for m in model_counts for c in crop_counts}
    for path, label in tqdm(samples, desc="multi-crop", disable=not progress, leave=False):
        target = index[folder_classes[label]]
        image = TF.to_tensor(open_image(path, loaded[0][1].in_channels))
        for crops in crop_counts:
            per_model = [view_probabilities(m, p, image, crops).mean(0) for m, p, _ in loaded]
            for count in model_counts:
                top5 = torch.stack(per_model[:count]).mean(0).topk(min(5, len(names))).indices.tolist()
                hits[(count, crops)][0] += int(top5[0] == target)
                hits[(count, crops)][1] += int(target in top5)
    n = len(samples)
    if n == 0:
        raise DataError(f"{root} holds no images")
    rows = [
        TableRow(m, c, 100 * (1 - hits[(m, c)][0] / n), 100 * (1 - hits[(m, c)][1] / n), PAPER_TABLE3.get((m, c)))
        for m in model_counts
        for c in crop_counts
    ]
    return rows, n


def format_table(rows: list[TableRow], images: int) -> str:
    lines = [
        f"Table 3 form, {images:,} images (errors in %; the paper's ILSVRC 2012 top-5 error beside ours)",
        "",
        f"{'models':>6}  {'crops':>5}  {'top-1 err':>9}  {'top-5 err':>9}  {'paper top-5':>11}",
    ]
    for r in rows:
        paper = f"{r.paper_top5_error:.2f}" if r.paper_top5_error is not None else "-"
        lines.append(f"{r.models:>6}  {r.crops:>5}  {r.top1_error:>9.2f}  {r.top5_error:>9.2f}  {paper:>11}")
    return "\n".join(lines)


def default_root(checkpoint: str | Path, split: str) -> Path:
    """The folder split recorded in a checkpoint's config: ROOT/split."""
    config = config_from_dict(load_checkpoint(checkpoint)["config"])
    if config.data.dataset != "folder":
        raise DataError("multi-crop testing reads image folders; pass --data-root DIR with one folder per class")
    return Path(config.data.root) / split
