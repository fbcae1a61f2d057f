"""A markdown report of a training run: settings, per-epoch table, test results, curves and confusion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from googlenet.extras import require
from googlenet.files import atomic_write_text
from googlenet.training.checkpoint import load_checkpoint
from googlenet.training.data import DataError
from googlenet.viz.plots import curves_png


def read_history(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{run} is not a training run folder: it has no metrics.jsonl")
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is damaged: {error}") from None


def read_steps(run: Path) -> list[dict[str, Any]]:
    """steps.jsonl: training loss, accuracy and lr every few dozen steps; empty for runs that did not log it."""
    path = run / "steps.jsonl"
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is damaged: {error}") from None


def _settings(run: Path) -> list[str]:
    checkpoint = run / "checkpoints" / "best.pt"
    if not checkpoint.is_file():
        return []
    payload = load_checkpoint(checkpoint)
    config, plan = payload["config"], payload.get("plan")
    d, m, o, s, t = (config[k] for k in ("data", "model", "optim", "schedule", "train"))
    length = f"{t['epochs']} epochs"
    if plan:
        length = (
            f"{plan['total_steps']:,} steps planned to a {plan['budget_minutes']:g}-minute budget at a measured "
            f"{plan['images_per_step'] / plan['step_seconds']:.0f} img/s"
        )
    return [
        "## Settings",
        "",
        f"- data: {d['dataset']} at {d['image_size']} px, batch {d['batch_size']}, augmentation {d['augment']}",
        f"- model: `{m['name']}`, auxiliary heads {'on' if m['aux'] else 'off'} (loss weight {m['aux_weight']})",
        f"- optimizer: SGD lr {o['lr']}, momentum {o['momentum']} (Nesterov {o['nesterov']}), "
        f"weight decay {o['weight_decay']}, label smoothing {o['label_smoothing']}",
        f"- schedule: {s['name']}, warm-up {s['warmup_epochs']} epochs; {length}, "
        f"{t['precision']}, EMA decay {t['ema_decay']}",
        "",
    ]


def _evaluations(run: Path) -> list[str]:
    lines: list[str] = []
    for path in sorted(run.glob("eval_*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        split = result["split"]
        lines += [
            f"## Evaluation on {split} ({result['num_samples']:,} images, {result['weights']} weights"
            + (", flip test-time augmentation)" if result.get("tta") == "flip" else ")"),
            "",
            f"**top-1 {result['top1']:.4f}**, top-5 {result['top5']:.4f}, loss {result['loss']:.4f}",
            "",
            "| class | accuracy |",
            "|---|---:|",
            *(f"| {name} | {acc:.4f} |" for name, acc in result["per_class"].items()),
            "",
        ]
        if (run / f"confusion_{split}.png").is_file():
            lines += [f"![confusion matrix, {split}](confusion_{split}.png)", ""]
    return lines


def write_report(run: str | Path) -> Path:
    """Write RUN/report.md and RUN/curves.png; returns the report's path."""
    require("matplotlib", "viz", "googlenet report")  # before any work: the curves are half the report
    run = Path(run)
    history = read_history(run)
    if not history:
        raise DataError(f"{run / 'metrics.jsonl'} has no finished epoch yet")
    epochs = history[-1]["epoch"]
    curves_png(history, run / "curves.png", f"{run.name}: {epochs:g} epochs", read_steps(run))
    has_ema = "ema_val_top1" in history[0]
    header = "| epoch | train loss | train top-1 | val loss | val top-1 |" + (" EMA val top-1 |" if has_ema else "")
    header += " img/s | lr | minutes |"
    rows = []
    for h in history:
        partial = " (partial)" if h.get("partial") else ""
        ema = f" {h.get('ema_val_top1', float('nan')):.4f} |" if has_ema else ""
        rows.append(
            f"| {h['epoch']}{partial} | {h['train_loss']:.4f} | {h['train_top1']:.4f} "
            f"| {h.get('val_loss', float('nan')):.4f} "
            f"| {h.get('val_top1', float('nan')):.4f} |{ema} {h['img_per_s']:.0f} | {h['lr']:.4g} "
            f"| {h['elapsed_minutes']:.1f} |"
        )
    lines = [
        f"# Training report: {run.name}",
        "",
        *_settings(run),
        "## Curves",
        "",
        "![loss, accuracy and learning rate per epoch](curves.png)",
        "",
        "## Per epoch",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
        *rows,
        "",
        *_evaluations(run),
    ]
    path = run / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
