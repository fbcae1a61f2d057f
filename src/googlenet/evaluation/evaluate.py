"""Evaluate a checkpoint on a split: metrics, per-class accuracy, a JSON record and a confusion matrix."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor
from tqdm import tqdm

from googlenet.config import Config
from googlenet.data import Preprocessing, eval_split
from googlenet.engines import check_choice, select_engine
from googlenet.extras import MissingExtraError
from googlenet.files import atomic_write_text, writable_dir
from googlenet.plots import confusion_png  # imports matplotlib only when it draws
from googlenet.run.checkpoint import checkpoint_split, load_checkpoint, model_from_checkpoint, run_folder
from googlenet.run.metrics import TTA_CHOICES, TTA_NAMES, EvalResult, evaluate_batches, tta_scorer


@dataclass
class EvalReport:
    checkpoint: Path
    split: str
    weights: str
    class_names: list[str]
    result: EvalResult
    json_path: Path
    confusion_path: Path | None  # None: not drawn (see confusion_note)
    engine: str = "torch fp32"
    tta: str = "none"  # test-time augmentation: one of TTA_CHOICES
    confusion_note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint),
            "split": self.split,
            "weights": self.weights,
            "engine": self.engine,
            "tta": self.tta,
            "num_samples": self.result.num_samples,
            "top1": self.result.top1,
            "top5": self.result.top5,
            "loss": self.result.loss,
            "per_class": dict(zip(self.class_names, self.result.per_class, strict=True)),
            "confusion": self.result.confusion.tolist(),
        }


CALIBRATION_IMAGES = 512  # int8 ranges: a few hundred images settle them; more only costs time


def calibration_batches(config: Config, prep: Preprocessing) -> list[Tensor]:
    """The first CALIBRATION_IMAGES (rounded up to whole batches) of the run's training split, preprocessed as
    for evaluation: what int8 quantization sets its ranges from."""
    train = eval_split(config.data, prep, "train", config.train.seed)
    per_batch = -(-train.num_samples // max(1, len(train)))
    return list(itertools.islice((x for x, _ in train.epoch(0)), -(-CALIBRATION_IMAGES // per_batch)))


def evaluate_checkpoint(  # nine arguments: the checkpoint, then keyword-only `googlenet evaluate` flags
    checkpoint: str | Path,
    *,
    split: str = "test",
    data_root: str | None = None,
    out_dir: str | Path | None = None,
    json_path: str | Path | None = None,
    progress: bool = False,
    backend: str = "torch",
    precision: str = "fp32",
    tta: str = "none",
) -> EvalReport:
    """Metrics of ``checkpoint`` on ``split``, run by ``backend`` (a name, or "auto" to measure) at
    ``precision``; int8 is calibrated on the first CALIBRATION_IMAGES training images. ``tta="flip"``
    averages each image's prediction with its mirror image's."""
    check_choice(backend, precision)
    if tta not in TTA_CHOICES:
        raise ValueError(f"tta must be one of {', '.join(TTA_CHOICES)}; got {tta!r}")
    checkpoint = Path(checkpoint)
    payload = load_checkpoint(checkpoint)
    out = writable_dir(out_dir if out_dir else run_folder(checkpoint))  # before the evaluation, not after
    if json_path:
        writable_dir(Path(json_path).parent)
    model, prep, class_names = model_from_checkpoint(payload)
    config, batches = checkpoint_split(payload, checkpoint, prep, split, data_root)

    engine, how = select_engine(
        model,
        backend,
        precision,
        image_size=prep.image_size,
        probe=lambda: next(iter(batches.epoch(0)))[0],
        workload=batches.num_samples,
        calibration=lambda: calibration_batches(config, prep),
    )

    def bar(stream: Any, total: int) -> Any:
        return tqdm(stream, total=total, desc=f"evaluate {split}", disable=not progress, leave=False)

    scorer = tta_scorer(engine, tta)
    result = evaluate_batches(scorer, batches, len(class_names), progress=bar)
    report = EvalReport(
        checkpoint=checkpoint,
        split=split,
        weights=str(payload.get("weights", "model")),
        class_names=class_names,
        result=result,
        json_path=out / f"eval_{split}.json",
        confusion_path=out / f"confusion_{split}.png",
        engine=how,
        tta=tta,
    )
    _write(report, Path(json_path) if json_path else None)
    return report


def _write(report: EvalReport, json_path: Path | None) -> None:
    """eval_SPLIT.json (and a copy at ``json_path``) and the confusion matrix picture beside it."""
    text = json.dumps(report.as_dict(), indent=2)
    for path in {report.json_path, *([json_path] if json_path else [])}:
        atomic_write_text(path, text)
    result = report.result
    title = f"{report.split}: top-1 {result.top1:.4f} over {result.num_samples:,} images"
    title += f", {report.tta} TTA" if report.tta != "none" else ""
    assert report.confusion_path is not None
    try:
        confusion_png(result.confusion, report.class_names, report.confusion_path, title)
    except MissingExtraError as error:  # the metrics are the result; the picture is a bonus
        report.confusion_path, report.confusion_note = None, f"no confusion matrix picture: {error}"


def format_result(report: EvalReport) -> str:
    r = report.result
    width = max(len(n) for n in report.class_names)
    lines = [
        f"{report.checkpoint} on {report.split} ({r.num_samples:,} images, {report.weights} weights)",
        f"engine: {report.engine}" + (f", {TTA_NAMES[report.tta]}" if report.tta != "none" else ""),
        f"top-1 {r.top1:.4f}   top-5 {r.top5:.4f}   loss {r.loss:.4f}",
        "",
        "per-class accuracy:",
        *(f"  {name:<{width}}  {acc:.4f}" for name, acc in zip(report.class_names, r.per_class, strict=True)),
        "",
        f"wrote {report.json_path}" + (f" and {report.confusion_path}" if report.confusion_path else ""),
        *([report.confusion_note] if report.confusion_note else []),
    ]
    return "\n".join(lines)
