"""The pictures of the explain tools: map overlays, the CAM grid of a split, the branch-share figure.

Drawn with matplotlib's object-oriented API through googlenet.plots (no pyplot, no global state).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from googlenet.explain.layers import BRANCHES, MODULE_KEYS
from googlenet.plots import labelled_grid_png, new_figure, save_figure


def _pixels(image: Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> what imshow takes: (H, W) for gray, (H, W, 3) for colour."""
    array = image.detach().float().clamp(0, 1).numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def _show(ax: object, image: Tensor, heat: Tensor | None = None) -> None:
    pixels = _pixels(image)
    ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")  # type: ignore[attr-defined]
    if heat is not None:
        ax.imshow(heat.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")  # type: ignore[attr-defined]
    ax.set_xticks([])  # type: ignore[attr-defined]
    ax.set_yticks([])  # type: ignore[attr-defined]


@dataclass
class Panel:
    """One picture of an overlay figure: a map in [0, 1] at the image's size (None: the image alone)."""

    title: str
    heat: Tensor | None


def overlay_png(image: Tensor, rows: list[tuple[str, list[Panel]]], path: str | Path, title: str) -> None:
    """The input image, then each row's maps drawn over it: one row per kind of map, labelled on the left."""
    columns = 1 + max(len(panels) for _, panels in rows)
    fig = new_figure("drawing activation maps", figsize=(2.5 * columns, 2.7 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, (label, panels) in enumerate(rows):
        _show(axes[r][0], image)
        axes[r][0].set_title("input", fontsize=9)
        axes[r][0].set_ylabel(label, fontsize=9)
        for c in range(1, columns):
            ax = axes[r][c]
            if c - 1 < len(panels):
                _show(ax, image, panels[c - 1].heat)
                ax.set_title(panels[c - 1].title, fontsize=9)
            else:
                ax.axis("off")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


@dataclass
class GridCell:
    image: Tensor  # (C, H, W) in [0, 1]
    heat: Tensor  # (H, W) in [0, 1]
    caption: str
    right: bool


def cam_grid_png(rows: list[tuple[str, list[GridCell]]], path: str | Path, title: str) -> None:
    """One row per class: its images with the CAM of the predicted class, captions green when right, red
    when wrong."""

    def draw(ax: Any, cell: GridCell) -> None:
        colour = "tab:green" if cell.right else "tab:red"
        _show(ax, cell.image, cell.heat)
        ax.axis("on")
        for spine in ax.spines.values():
            spine.set_color(colour)
            spine.set_linewidth(2.5)
        ax.set_title(cell.caption, fontsize=7, color=colour)

    labelled_grid_png(
        rows,
        draw,
        path,
        title,
        feature="drawing the CAM grid",
        cell=(1.9, 2.0),
        label_on_left=True,
        layout="constrained",
    )


def branch_shares_png(energy: Tensor, attribution: Tensor, channels: Tensor, path: str | Path, title: str) -> None:
    """Modules (rows, 3a..5b) x branches (columns): each branch's share of activation energy and of
    attribution, with its share of the channels underneath for reference."""
    fig = new_figure("drawing the branch shares", figsize=(10.5, 5.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    top = max(0.5, float(energy.max()), float(attribution.max()))
    for ax, values, label in (
        (axes[0], energy, "share of activation energy"),
        (axes[1], attribution, "share of |gradient x activation|\nfor the predicted class"),
    ):
        data = values.numpy()
        image = ax.imshow(data, cmap="viridis", vmin=0, vmax=top, aspect="auto")
        for m in range(len(MODULE_KEYS)):
            for b in range(len(BRANCHES)):
                colour = "black" if data[m, b] > 0.35 else "white"
                ax.text(b, m - 0.12, f"{data[m, b]:.0%}", ha="center", va="center", fontsize=9, color=colour)
                ax.text(
                    b,
                    m + 0.25,
                    f"({float(channels[m, b]):.0%} ch)",
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color=colour,
                )
        ax.set_xticks(range(len(BRANCHES)), BRANCHES)
        ax.set_yticks(range(len(MODULE_KEYS)), [f"inception{k}" for k in MODULE_KEYS])
        ax.set_title(label, fontsize=10)
    fig.colorbar(image, ax=axes, fraction=0.03, pad=0.02, label="share")
    fig.suptitle(title, fontsize=11)
    save_figure(fig, path)
