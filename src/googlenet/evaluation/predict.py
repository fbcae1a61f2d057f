"""Predict classes for image files with a checkpoint alone."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from googlenet.data import collect_images
from googlenet.engines import check_choice, select_engine
from googlenet.run.checkpoint import load_checkpoint, model_from_checkpoint


@dataclass
class Prediction:
    path: Path
    top: list[tuple[str, float]]  # (class name, probability), most likely first


@torch.no_grad()
def predict_paths(
    checkpoint: str | Path,
    paths: Sequence[str | Path],
    *,
    top_k: int = 5,
    batch_size: int = 64,
    backend: str = "torch",
    precision: str = "fp32",
) -> list[Prediction]:
    """Images and folders -> top-k classes with softmax probabilities, in the order the files were found,
    run by ``backend`` (a name, or "auto" to measure when there are enough images) at ``precision``."""
    check_choice(backend, precision)
    payload = load_checkpoint(checkpoint)
    plain, prep, class_names = model_from_checkpoint(payload)
    files = collect_images(paths)
    model, _ = select_engine(
        plain,
        backend,
        precision,
        image_size=prep.image_size,
        probe=lambda: torch.stack([prep.load_image(f) for f in files[:batch_size]]),
        workload=len(files),
    )
    k = min(top_k, len(class_names))
    predictions: list[Prediction] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        x = torch.stack([prep.load_image(f) for f in chunk])
        probabilities = model(x).float().softmax(1)
        values, indices = probabilities.topk(k, dim=1)
        for f, v, i in zip(chunk, values.tolist(), indices.tolist(), strict=True):
            predictions.append(Prediction(f, [(class_names[c], p) for c, p in zip(i, v, strict=True)]))
    return predictions


def format_predictions(predictions: list[Prediction], fmt: str) -> str:
    if fmt == "json":
        rows = [
            {"path": str(p.path), "top": [{"class": c, "probability": round(v, 6)} for c, v in p.top]}
            for p in predictions
        ]
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "rank", "class", "probability"])
        for p in predictions:
            writer.writerows([str(p.path), rank, c, f"{v:.6f}"] for rank, (c, v) in enumerate(p.top, 1))
        return buffer.getvalue().rstrip("\n")
    width = max(len(str(p.path)) for p in predictions)
    lines = []
    for p in predictions:
        guesses = "  ".join(f"{c} {v:.1%}" for c, v in p.top)
        lines.append(f"{p.path!s:<{width}}  {guesses}")
    return "\n".join(lines)
