"""Pictures a person would rather look at than read: training curves and the confusion matrix.

Drawn with matplotlib's object-oriented API (a bare ``Figure`` saved to a file), so neither importing nor
using this module touches pyplot or switches the caller's backend. matplotlib is the [viz] extra: it is
imported when a picture is drawn, and its absence is a MissingExtraError naming the extra.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from torch import Tensor

from googlenet.extras import require
from googlenet.files import atomic_write


def new_figure(feature: str, **kwargs: Any) -> Any:
    """A figure outside pyplot: no window, no global state, nothing for the caller to close."""
    return require("matplotlib.figure", "viz", feature).Figure(**kwargs)


def save_figure(fig: Any, path: str | Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


Item = TypeVar("Item")


def labelled_grid_png(  # the grid, its labels and keyword-only layout options
    rows: Sequence[tuple[str, Sequence[Item]]],
    draw: Callable[[Any, Item], None],
    path: str | Path,
    title: str,
    *,
    feature: str,
    cell: tuple[float, float] = (1.6, 1.6),
    label_on_left: bool = False,
    **figure: Any,
) -> None:
    """Rows of pictures under a label each: ``draw(axes, item)`` fills a cell; the rows may differ in length.
    The label is the row's title, or (``label_on_left``) written to the left of its first cell."""
    columns = max((len(items) for _, items in rows), default=1) or 1
    size = (cell[0] * columns + 1.6, cell[1] * len(rows) + 0.6)
    fig = new_figure(feature, figsize=size, **figure)
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, (label, items) in enumerate(rows):
        for c in range(columns):
            axes[r][c].axis("off")
            if c < len(items):
                draw(axes[r][c], items[c])
        first = axes[r][0]
        if label_on_left:
            first.axis("on")
            first.set_xticks([])
            first.set_yticks([])
            first.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
        else:
            first.set_title(label, fontsize=8, loc="left")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def confusion_png(confusion: Tensor, class_names: list[str], path: str | Path, title: str) -> None:
    """Row-normalised confusion matrix with counts: where the mistakes are, at a glance."""
    counts = confusion.double()
    rates = counts / counts.sum(1, keepdim=True).clamp(min=1)
    n = len(class_names)
    size = max(5.0, 0.6 * n + 2)
    fig = new_figure("drawing the confusion matrix", figsize=(size, size * 0.9))
    ax = fig.subplots()
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), class_names)
        for i in range(n):
            for j in range(n):
                value = int(counts[i, j])
                if value:
                    colour = "white" if rates[i, j] > 0.5 else "black"
                    ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    save_figure(fig, path)


# The training loss includes 0.3 x each auxiliary loss and label smoothing, so it sits above the validation loss.
LABELS = {"train_loss": "train loss (with aux, smoothed)", "train_top1": "train top-1 (augmented)"}


def curves_png(
    history: list[dict[str, Any]], path: str | Path, title: str, steps: list[dict[str, Any]] | None = None
) -> None:
    """Loss, accuracy and learning rate against epoch, from metrics.jsonl entries; with ``steps`` (steps.jsonl
    rows, logged every few dozen steps) the training series and the learning rate are drawn from those, so a
    short run is a curve rather than a few points."""
    epochs = [h["epoch"] for h in history]
    fig = new_figure("drawing the training curves", figsize=(15, 4))
    axes = fig.subplots(1, 3)
    series = (
        (axes[0], "loss", ("train_loss", "val_loss", "ema_val_loss")),
        (axes[1], "top-1 accuracy", ("train_top1", "val_top1", "ema_val_top1")),
        (axes[2], "learning rate", ("lr",)),
    )
    for ax, label, keys in series:
        for key in keys:
            name = LABELS.get(key, key.replace("_", " "))
            if steps and key in steps[0]:  # the training side, every few dozen steps
                ax.plot([r["epoch"] for r in steps], [r[key] for r in steps], linewidth=1.2, label=name)
                continue
            values = [h.get(key) for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    save_figure(fig, path)


def image_grid_png(rows: list[tuple[str, list[Any]]], path: str | Path, title: str) -> None:
    """Labelled rows of PIL images, e.g. samples per class."""

    def draw(ax: Any, image: Any) -> None:
        ax.imshow(image, cmap="gray" if image.mode == "L" else None)

    labelled_grid_png(rows, draw, path, title, feature="drawing the sample grid")
