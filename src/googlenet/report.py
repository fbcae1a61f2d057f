"""A markdown report of a training run: settings, per-epoch table, test results, curves and confusion."""

from __future__ import annotations

import json
from pathlib import Path

from googlenet.data import DataError
from googlenet.errors import GoogLeNetError
from googlenet.extras import require
from googlenet.files import atomic_write_text
from googlenet.plots import curves_png
from googlenet.run.checkpoint import load_checkpoint
from googlenet.run.metrics import TTA_NAMES
from googlenet.run.records import read_history, read_steps


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
        if plan.get("replans"):
            length += f" (re-planned at {plan['replans']} epoch ends, the last at step {plan['anchor_step']:,})"
    return [
        "## Settings",
        "",
        f"- data: {d['dataset']} at {d['image_size']} px, batch {d['batch_size']}, augmentation {d['augment']}"
        + (f", random erasing {d['erase']}" if d.get("erase") else ""),  # older runs have no erase key
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
            + (f", {TTA_NAMES[result['tta']]})" if result.get("tta", "none") != "none" else ")"),
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


def _grad_cam_lines(grid: Path | None) -> list[str]:
    """The finer map beside the CAM, or how to get it."""
    if grid is None:
        return ["Grad-CAM at a finer layer, beside it, needs the [explain] extra (captum).", ""]
    return [
        "The same images with Grad-CAM of the predicted class at inception4c, a layer before the last pooling: "
        "four times the cells, deep enough to be about the class.",
        "",
        f"![Grad-CAM at a finer layer](explain/{grid.name})",
        "",
    ]


def write_explain_page(run: Path, checkpoint: Path, split: str = "test") -> list[str]:
    """RUN/explain.md with RUN/explain/ (CAMs of right and wrong answers per class, branch shares, early exits)
    on ``split`` ("test" falls back to the validation split where the data has no test split); the report's
    lines that point at it."""
    from googlenet.explain.early_exits import format_heads
    from googlenet.explain.run import explain_split

    result = None
    for name in (split, "val") if split == "test" else (split,):
        try:
            result = explain_split(checkpoint, name, run / "explain")
            break
        except GoogLeNetError as error:  # no such split, or a checkpoint too old to redraw its validation split
            note = str(error)
    if result is None:
        return ["## Inside the network", "", f"Not drawn: {note}", ""]
    heads = result.heads
    shares = int(result.shares.counts.sum())
    page = [
        f"# Inside the network: {run.name}",
        "",
        f"Checkpoint `{checkpoint.name}` on the {result.split} split.",
        "",
        "## Class activation maps",
        "",
        "The exact CAM of the predicted class (the fc weights applied to inception5b's feature map): for every "
        "class the first right answers (green) and the most confident wrong ones (red). At this input size "
        f"inception5b's map is {result.cam_resolution} cells, drawn upsampled: where the model looked, at that "
        "resolution.",
        "",
        "![class activation maps](explain/cams.png)",
        "",
        *_grad_cam_lines(result.grad_cam_grid),
        "## Branch shares",
        "",
        f"How much of each Inception module's output comes from its 1x1, 3x3, 5x5 and pool branches, averaged over "
        f"{shares:,} images: the share of activation energy, and of |gradient x activation| for the predicted "
        "class. Under each share, the branch's share of the module's channels.",
        "",
        "![branch shares](explain/branch_shares.png)",
        "",
        "## Early exits",
        "",
        "Top-1 of the auxiliary classifiers (after inception4a and inception4d) beside the main head's, per class:"
        + ("" if len(heads.heads) > 1 else " this model has no auxiliary heads."),
        "",
        format_heads(heads, markdown=True),
        "",
        "Raw figures: `explain/explain.json`.",
        "",
    ]
    atomic_write_text(run / "explain.md", "\n".join(page))
    summary = ", ".join(f"{h} {heads.top1[h]:.4f}" for h in heads.heads)
    return [
        "## Inside the network",
        "",
        f"Class activation maps, branch shares and early exits on {result.split}: [explain.md](explain.md). "
        f"Top-1 by head: {summary}.",
        "",
    ]


def write_report(run: str | Path, *, explain: bool = True, explain_split: str = "test") -> Path:
    """Write RUN/report.md and RUN/curves.png, and with ``explain`` RUN/explain.md on ``explain_split``;
    returns the report's path."""
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
    checkpoint = run / "checkpoints" / "best.pt"
    if explain and checkpoint.is_file():
        lines += write_explain_page(run, checkpoint, explain_split)
    path = run / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
