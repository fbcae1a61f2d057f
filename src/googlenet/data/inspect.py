"""`googlenet data inspect DIR`: look at a dataset before training on it.

Per-class counts with imbalance figures, image size and mode statistics, unreadable files, and a PNG grid
of samples per class.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from googlenet.data import IMAGE_EXTENSIONS, DataError, class_names_for, open_image


@dataclass
class Inspection:
    root: Path
    counts: dict[str, int]  # class folder -> number of readable images
    names: dict[str, str]  # class folder -> human-readable name
    sizes: list[tuple[int, int]]
    modes: Counter[str]
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    samples: dict[str, list[Path]] = field(default_factory=dict)
    decode_seconds: float = 0.0  # total time spent fully decoding the readable images

    @property
    def imbalance(self) -> float:
        """Largest class over smallest class (1.0 = balanced)."""
        counts = [c for c in self.counts.values() if c]
        return max(counts) / min(counts) if counts else 0.0


def inspect_folder(root: str | Path, samples_per_class: int = 6, progress: bool = False) -> Inspection:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} does not exist or is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root} has no class folders (expected one sub-folder of images per class)")
    names = dict(zip(classes, class_names_for(root, classes), strict=True))
    result = Inspection(root, {}, names, [], Counter())
    for name in tqdm(classes, desc="inspect", disable=not progress, leave=False):
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        readable = []
        for path in files:
            try:
                with Image.open(path) as image:
                    size, mode = image.size, image.mode
                tick = time.perf_counter()
                open_image(path)  # a full decode: truncated files pass a header check
                result.decode_seconds += time.perf_counter() - tick
            except (OSError, SyntaxError, ValueError, DataError, Image.DecompressionBombError) as error:
                result.unreadable.append((path, str(error).splitlines()[0] if str(error) else type(error).__name__))
                continue
            readable.append(path)
            result.sizes.append(size)
            result.modes[mode] += 1
        result.counts[name] = len(readable)
        result.samples[name] = readable[:samples_per_class]
    return result


def format_inspection(result: Inspection) -> str:
    total = sum(result.counts.values())
    lines = [f"{result.root}: {total:,} readable images in {len(result.counts)} classes", ""]
    width = max(len(f"{k} ({v})") if k != v else len(k) for k, v in result.names.items())
    ordered = sorted(result.counts.items(), key=lambda item: (-item[1], item[0]))
    for folder, count in ordered:
        label = f"{folder} ({result.names[folder]})" if result.names[folder] != folder else folder
        share = count / total if total else 0.0
        lines.append(
            f"  {label:<{width}}  {count:>7,}  {share:6.1%}  {'#' * round(40 * count / max(1, ordered[0][1]))}"
        )
    counts = list(result.counts.values())
    if counts:
        lines += [
            "",
            f"imbalance: largest/smallest class {result.imbalance:.2f}; "
            f"mean {statistics.mean(counts):.1f}, std {statistics.pstdev(counts):.1f} images per class",
        ]
    if result.sizes:
        widths = [w for w, _ in result.sizes]
        heights = [h for _, h in result.sizes]
        lines.append(
            f"image sizes: width {min(widths)}-{max(widths)} (median {statistics.median(widths):g}), "
            f"height {min(heights)}-{max(heights)} (median {statistics.median(heights):g})"
        )
        lines.append("modes: " + ", ".join(f"{m} {n:,}" for m, n in result.modes.most_common()))
    if total:
        per_image = result.decode_seconds / total
        lines.append(
            f"decoding: {1000 * per_image:.2f} ms per image on one core ({1 / max(per_image, 1e-9):,.0f} img/s): "
            "size data.workers so that workers x this rate exceeds the training speed"
        )
    lines.append(f"unreadable files: {len(result.unreadable)}")
    lines += [f"  {path}: {reason}" for path, reason in result.unreadable]
    return "\n".join(lines)


def sample_grid_png(result: Inspection, path: str | Path, max_classes: int = 20) -> None:
    """A grid: one row per class (up to max_classes), its first sample images across."""
    from googlenet.extras import require
    from googlenet.plots import image_grid_png

    require("matplotlib", "viz", "the sample grid of 'googlenet data inspect'")
    rows = []
    for folder in sorted(result.samples)[:max_classes]:
        images = [open_image(p) for p in result.samples[folder]]
        rows.append((result.names[folder], images))
    image_grid_png(rows, path, f"{result.root.name}: samples per class")
