"""The explain tools on a checkpoint: for image files, or for a split of the run's data.

``explain_images`` writes, for each image, a PNG of the exact CAMs and the Grad-CAM maps of its top-k
classes drawn over it and an .npz of the raw maps and branch shares; and for the set, explanations.json and
the branch-share figure. ``explain_split`` measures the early exits, averages the branch shares per class
and draws the CAMs of right and wrong answers for every class: what ``googlenet report`` shows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from googlenet.data import Batches, Preprocessing, collect_images
from googlenet.explain.branches import BranchShares, ClassShareAccumulator, ClassShares, branch_shares
from googlenet.explain.cam import (
    FINER_LAYER,
    TopK,
    cam_cells,
    cells,
    class_activation_maps,
    grad_cam,
    normalise,
    top_k,
    upsample,
)
from googlenet.explain.early_exits import HeadAccuracy, head_accuracy
from googlenet.explain.figures import GridCell, Panel, branch_shares_png, cam_grid_png, overlay_png
from googlenet.explain.layers import MODULE_KEYS, resolve_layer
from googlenet.extras import MissingExtraError, require
from googlenet.files import atomic_write, atomic_write_text, writable_dir
from googlenet.model import GoogLeNet
from googlenet.run.checkpoint import checkpoint_split, load_checkpoint, model_from_checkpoint

Progress = Callable[[Iterable[Any], int, str], Iterable[Any]]


def _no_progress(stream: Iterable[Any], _total: int, _label: str) -> Iterable[Any]:
    return stream


def pixels(x: Tensor, prep: Preprocessing) -> Tensor:
    """Normalised model input (N, C, H, W) -> the images as a person sees them, in [0, 1]."""
    mean = torch.tensor(prep.mean).view(1, -1, 1, 1)
    std = torch.tensor(prep.std).view(1, -1, 1, 1)
    return (x.float() * std + mean).clamp(0, 1)


@dataclass
class ImageExplanation:
    path: Path
    top: list[tuple[str, float]]  # (class, probability), most likely first
    overlay: Path
    maps: Path


def _unique_names(files: Sequence[Path]) -> list[str]:
    """File stems, made unique where two folders hold the same name (or a name the set's own files take)."""
    taken = {"branch_shares", "explanations"}
    names = []
    for f in files:
        name, count = f.stem, 1
        while name in taken:
            count += 1
            name = f"{f.stem}-{count}"
        taken.add(name)
        names.append(name)
    return names


@dataclass
class BatchExplanation:
    """What the model shows for one batch of images: its top classes, the exact CAMs and the Grad-CAMs (raw and
    scaled to 0-1 over the image), the branch shares, and the images as pixels."""

    best: TopK
    cams: Tensor  # (n, k, h, w): exact CAM in logit units
    grads: Tensor  # (n, k, h', w'): Grad-CAM at the chosen layer
    cam_heat: Tensor  # (n, k, H, W): cams upsampled to the image and normalised
    grad_heat: Tensor  # (n, k, H, W)
    shares: BranchShares
    images: Tensor  # (n, H, W, C) pixels for drawing

    def labels(self, i: int, class_names: list[str]) -> list[tuple[str, float]]:
        """(class name, probability) of image ``i``'s top classes."""
        classes, probabilities = self.best.classes[i].tolist(), self.best.probabilities[i].tolist()
        return [(class_names[c], p) for c, p in zip(classes, probabilities, strict=True)]


def explain_batch(
    model: GoogLeNet, x: Tensor, prep: Preprocessing, k: int, layer: str, method: str
) -> BatchExplanation:
    """Compute, draw nothing: the top ``k`` classes of ``x`` with their CAMs and ``method`` maps at ``layer``."""
    model.check_input(x)
    best = top_k(model, x, k)
    size = (x.shape[2], x.shape[3])
    cams = class_activation_maps(model, x, best.classes)
    grads = grad_cam(model, x, layer, best.classes, method)
    cam_heat, grad_heat = normalise(upsample(cams, size)), normalise(upsample(grads, size))
    return BatchExplanation(best, cams, grads, cam_heat, grad_heat, branch_shares(model, x), pixels(x, prep))


def explain_images(  # eight arguments: the image sources and output, then keyword-only `googlenet explain` flags
    checkpoint: str | Path,
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    top: int = 3,
    layer: str = FINER_LAYER,
    method: str = "gradcam",
    batch_size: int = 16,
    progress: Progress = _no_progress,
) -> list[ImageExplanation]:
    """Explain each image of ``paths`` (files or folders) with the checkpoint's model; see the module doc."""
    for module in ("captum", "matplotlib"):  # before any work: Grad-CAM and the pictures are the output
        require(module, "explain", "googlenet explain")
    model, prep, class_names = model_from_checkpoint(load_checkpoint(checkpoint))
    layer_path = resolve_layer(model, layer)  # a bad name fails before any image is read
    files = collect_images(paths)
    out = writable_dir(out)
    names = _unique_names(files)
    k = min(top, len(class_names))
    results: list[ImageExplanation] = []
    records: list[dict[str, Any]] = []
    energy_sum = torch.zeros(len(MODULE_KEYS), 4)
    attribution_sum, channels = torch.zeros_like(energy_sum), torch.zeros_like(energy_sum)
    starts = range(0, len(files), batch_size)
    for start in progress(starts, len(starts), "explain"):
        chunk = files[start : start + batch_size]
        batch = explain_batch(model, torch.stack([prep.load_image(f) for f in chunk]), prep, k, layer_path, method)
        energy_sum += batch.shares.energy.sum(0)
        attribution_sum += batch.shares.attribution.sum(0)
        channels = batch.shares.channels
        for i, f in enumerate(chunk):
            labels = batch.labels(i, class_names)
            grad_title = f"{method} at {layer_path} ({cells(batch.grads)})"
            result = _write_image(batch, i, f, out / names[start + i], labels, grad_title)
            results.append(result)
            records.append(_image_record(result, batch, i))
    count = max(1, len(files))
    title = f"branch shares over {len(files)} image(s)"
    branch_shares_png(energy_sum / count, attribution_sum / count, channels, out / "branch_shares.png", title)
    summary = {
        "checkpoint": str(checkpoint),
        "layer": layer_path,
        "method": method,
        "cam": "exact CAM at inception5b in logit units (its mean plus the fc bias is the logit)",
        "images": records,
    }
    atomic_write_text(out / "explanations.json", json.dumps(summary, indent=2))
    return results


def _write_image(
    batch: BatchExplanation, i: int, source: Path, stem: Path, labels: list[tuple[str, float]], grad_title: str
) -> ImageExplanation:  # six arguments: one image of a batch, where it came from and goes, and its titles
    """STEM.png (the image under both maps, per top class) and STEM.npz (the raw maps) for image ``i``."""
    overlay, maps = stem.with_suffix(".png"), stem.with_suffix(".npz")
    rows = [
        (
            f"CAM (exact, inception5b: {cells(batch.cams)}, upsampled)",
            [Panel(f"{c} {p:.1%}", batch.cam_heat[i, j]) for j, (c, p) in enumerate(labels)],
        ),
        (grad_title, [Panel(f"{c} {p:.1%}", batch.grad_heat[i, j]) for j, (c, p) in enumerate(labels)]),
    ]
    overlay_png(batch.images[i], rows, overlay, f"{source.name}: {labels[0][0]} ({labels[0][1]:.1%})")
    arrays = {
        "classes": batch.best.classes[i].numpy(),
        "probabilities": batch.best.probabilities[i].numpy(),
        "cam": batch.cams[i].float().numpy(),
        "grad_cam": batch.grads[i].numpy(),
        "branch_energy": batch.shares.energy[i].numpy(),
        "branch_attribution": batch.shares.attribution[i].numpy(),
    }
    atomic_write(maps, lambda tmp: _save_arrays(tmp, arrays))
    return ImageExplanation(source, labels, overlay, maps)


def _image_record(result: ImageExplanation, batch: BatchExplanation, i: int) -> dict[str, Any]:
    """One image's entry of explanations.json."""
    return {
        "path": str(result.path),
        "top": [{"class": c, "probability": round(p, 6)} for c, p in result.top],
        "overlay": result.overlay.name,
        "maps": result.maps.name,
        "branch_shares": _share_table(batch.shares.energy[i], batch.shares.attribution[i]),
    }


def _save_arrays(path: str, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]


def _share_table(energy: Tensor, attribution: Tensor) -> dict[str, dict[str, list[float]]]:
    return {
        f"inception{key}": {
            "energy": [round(float(v), 6) for v in energy[m]],
            "attribution": [round(float(v), 6) for v in attribution[m]],
        }
        for m, key in enumerate(MODULE_KEYS)
    }


@dataclass
class SplitExplanation:
    split: str
    heads: HeadAccuracy
    shares: ClassShares
    cam_grid: Path
    shares_figure: Path
    json_path: Path
    cam_resolution: str  # inception5b's map, "HxW": what every drawn CAM is, upsampled
    grad_cam_grid: Path | None  # the same examples' Grad-CAM at FINER_LAYER; None without captum


def _examples(heads: HeadAccuracy, per_class: int) -> list[int]:
    """Indices (in the split's order) of the first ``per_class`` right and ``per_class`` wrong answers of every
    class: wrong ones are the most confident mistakes, the ones worth looking at."""
    chosen: list[int] = []
    for c in range(len(heads.class_names)):
        mine = (heads.labels == c).nonzero().flatten()
        right = mine[heads.predicted[mine] == c][:per_class]
        wrong = mine[heads.predicted[mine] != c]
        wrong = wrong[heads.confidence[wrong].argsort(descending=True)][:per_class]
        chosen += right.tolist() + wrong.tolist()
    return chosen


def _sharing(
    batches: Iterable[tuple[Tensor, Tensor]], model: GoogLeNet, accumulator: ClassShareAccumulator, per_class: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """``batches`` passed on unchanged, after adding the branch shares of each class's first ``per_class``
    images to ``accumulator``."""
    taken = torch.zeros(len(accumulator.class_names), dtype=torch.long)
    for x, labels in batches:
        keep = torch.zeros(len(labels), dtype=torch.bool)
        for i, label in enumerate(labels.tolist()):
            if taken[label] < per_class:
                taken[label] += 1
                keep[i] = True
        if keep.any():
            accumulator.add(branch_shares(model, x[keep]), labels[keep])
        yield x, labels


def _gather(batches: Iterable[tuple[Tensor, Tensor]], wanted: list[int]) -> dict[int, Tensor]:
    """The images at ``wanted`` positions of a split read in order."""
    remaining, found, offset = set(wanted), {}, 0
    for x, _ in batches:
        for i in range(len(x)):
            if offset + i in remaining:
                found[offset + i] = x[i]
        offset += len(x)
        if len(found) == len(remaining):
            break
    return found


@dataclass
class SplitData:
    model: GoogLeNet  # eval mode, with its auxiliary heads when the checkpoint has them
    prep: Preprocessing
    class_names: list[str]
    batches: Batches


def open_split(checkpoint: str | Path, split: str, data_root: str | None = None) -> SplitData:
    """A checkpoint's model (auxiliary heads kept) and a split of its run's data, preprocessed for evaluation."""
    checkpoint = Path(checkpoint)
    payload = load_checkpoint(checkpoint)
    model, prep, class_names = model_from_checkpoint(payload, aux=True)
    _, batches = checkpoint_split(payload, checkpoint, prep, split, data_root)
    return SplitData(model, prep, class_names, batches)


def early_exits(
    checkpoint: str | Path, split: str, *, data_root: str | None = None, progress: Progress = _no_progress
) -> HeadAccuracy:
    """The top-1 of every head of ``checkpoint`` on ``split``, overall and per class."""
    data = open_split(checkpoint, split, data_root)
    stream = progress(data.batches.epoch(0), len(data.batches), f"early exits on {split}")
    return head_accuracy(data.model, stream, data.class_names)


def explain_split(  # the split, then keyword-only `googlenet explain --split` flags
    checkpoint: str | Path,
    split: str,
    out: str | Path,
    *,
    data_root: str | None = None,
    per_class: int = 2,
    share_images: int = 50,
    progress: Progress = _no_progress,
) -> SplitExplanation:
    """Early exits over the whole ``split``; branch shares averaged per class over up to ``share_images``
    images of each class; a CAM grid of ``per_class`` right and wrong answers for every class."""
    require("matplotlib", "explain", "googlenet explain --split")
    split_data = open_split(checkpoint, split, data_root)
    model, prep, class_names, batches = split_data.model, split_data.prep, split_data.class_names, split_data.batches
    out = writable_dir(out)
    # One pass over the split for the early exits and the branch shares; a second gathers the CAM examples.
    accumulator = ClassShareAccumulator(model, class_names)
    stream = _sharing(batches.epoch(0), model, accumulator, share_images)
    heads = head_accuracy(
        model, progress(stream, len(batches), f"early exits and branch shares on {split}"), class_names
    )
    shares = accumulator.result()
    energy, attribution = shares.overall()
    shares_figure = out / "branch_shares.png"
    branch_shares_png(
        energy,
        attribution,
        shares.channels,
        shares_figure,
        f"branch shares on {split} ({int(shares.counts.sum()):,} images)",
    )

    wanted = _examples(heads, per_class)
    images = _gather(batches.epoch(0), wanted)
    x = torch.stack([images[i] for i in wanted]) if wanted else torch.empty(0)
    predicted = heads.predicted[wanted].view(-1, 1)

    def grid(maps: Tensor) -> list[tuple[str, list[GridCell]]]:
        """The examples under ``maps`` (one per example), one row per true class."""
        heat = normalise(upsample(maps, (x.shape[2], x.shape[3])))
        shown = pixels(x, prep)
        by_class: dict[int, list[GridCell]] = {}
        for j, index in enumerate(wanted):
            true, guess = int(heads.labels[index]), int(predicted[j])
            caption = f"{class_names[guess]} {float(heads.confidence[index]):.0%}"
            by_class.setdefault(true, []).append(GridCell(shown[j], heat[j, 0], caption, true == guess))
        return [(class_names[c], cells) for c, cells in sorted(by_class.items())]

    legend = "right (green) and most confident wrong (red)"
    cam_grid, resolution = out / "cams.png", cam_cells(model, prep.image_size)
    rows = grid(class_activation_maps(model, x, predicted)) if wanted else []
    cam_grid_png(rows, cam_grid, f"CAM of the predicted class on {split} (inception5b's {resolution} map): {legend}")
    # Beside it, where captum is installed, Grad-CAM at a finer layer of the same examples: what a coarse
    # CAM (2x2 at 64 px) cannot show.
    grad_grid: Path | None = out / "gradcams.png"
    try:
        maps = grad_cam(model, x, FINER_LAYER, predicted) if wanted else torch.empty(0)
    except MissingExtraError:
        grad_grid = None
    if grad_grid is not None:
        resolution_note = f" ({cells(maps)})" if wanted else ""
        title = f"Grad-CAM of the predicted class at {FINER_LAYER} on {split}{resolution_note}: {legend}"
        cam_grid_png(grid(maps) if wanted else [], grad_grid, title)

    json_path = out / "explain.json"
    record = {
        "checkpoint": str(checkpoint),
        "split": split,
        "early_exits": heads.as_dict(),
        "branch_shares": shares.as_dict(),
    }
    atomic_write_text(json_path, json.dumps(record, indent=2))
    return SplitExplanation(split, heads, shares, cam_grid, shares_figure, json_path, resolution, grad_grid)
