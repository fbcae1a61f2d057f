"""`googlenet benchmark --sections data`: how many training images a second one CPU core decodes and augments,
for each way this package can read ImageNet-size JPEGs. Each path does the same work: decode, random-resized
crop to 224 px, flip, normalise, and batches of 128. The model's own training speed on this machine says
how many cores it takes to keep the model fed.

The paths:
- **folder, PIL**: image folders as they train today, a PIL image through torchvision's transforms;
- **folder, PIL draft**: the same, with libjpeg's DCT scaling when the crop is at least twice the output
  (FFCV and ``PIL.Image.draft`` do this);
- **folder, decode_jpeg + v2**: libjpeg-turbo straight to a uint8 tensor (``torchvision.io``), then the v2
  transforms on it;
- **shards, PIL** and **shards, decode_jpeg + v2**: the same two ways, on shards packed with their longer
  side at 256 px (``googlenet data pack``).

The crops' statistics (mean and std of the normalised pixels) are reported beside the speeds: a faster
path must draw the same images, not cheaper ones.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms
from torchvision.transforms import v2

from googlenet.config import DataConfig
from googlenet.data.augment import decode
from googlenet.data.folders import folder_preprocessing
from googlenet.data.images import open_image
from googlenet.data.pack import PackSettings, pack_folder
from googlenet.data.shards import ShardDataset, read_index

SHARED_PHOTOS = Path("../shared/data/imagenet-sample")
# ImageNet's training images are mostly about 500x375; these scales of the sample photographs span
# roughly 300 to 650 px on the longer side.
SCALES = (0.6, 0.8, 1.0, 1.3)


@dataclass
class PipelineRow:
    name: str
    images_per_second: float  # on one core
    ratio: float  # against the folder's PIL path
    mean: float  # of the normalised output pixels
    std: float


@dataclass
class DataReport:
    images: int
    batch: int
    size: int
    rows: list[PipelineRow]
    model_images_per_second: float  # the bn network's training step at `size`, every core of this machine
    threads: int
    notes: list[str] = field(default_factory=list)


def make_photo_folder(out: Path, count: int, sources: list[Path] | None = None, classes: int = 10) -> Path:
    """``count`` JPEGs in ``classes`` class folders under ``out/train``, re-encoded from real photographs at
    several sizes (quality 90). Without photographs, photo-like images are made (smooth colours with grain)."""
    sources = sources if sources is not None else sorted(SHARED_PHOTOS.glob("*.JPEG"))
    rng = np.random.default_rng(0)
    for index in range(count):
        folder = out / "train" / f"n{index % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        if sources:
            with Image.open(sources[index % len(sources)]) as photo:
                image = photo.convert("RGB")
            scale = SCALES[(index // len(sources)) % len(SCALES)]
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
        else:
            rows, cols = np.mgrid[0:375, 0:500]
            colours = np.stack([cols * 255 / 500, rows * 255 / 375, (rows + cols) * 127 / 875], -1)
            image = Image.fromarray((colours + rng.normal(0, 20, colours.shape)).clip(0, 255).astype(np.uint8))
        image.save(folder / f"{index:06d}.JPEG", quality=90)
    return out


def _draft_crop(size: int) -> Callable[[Path], Image.Image]:
    """A random-resized crop that asks libjpeg for a smaller decode when the crop allows it."""

    def load(path: Path) -> Image.Image:
        with Image.open(path) as image:
            width, height = image.size
            top, left, h, w = transforms.RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3))
            factor = 1
            while min(h, w) // (factor * 2) >= size and factor < 8:  # DCT scaling by 1/2, 1/4 or 1/8
                factor *= 2
            if factor > 1:
                image.draft("RGB", (width // factor, height // factor))
            sx, sy = image.size[0] / width, image.size[1] / height
            box = (round(left * sx), round(top * sy), round((left + w) * sx), round((top + h) * sy))
            return image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR, box=box)

    return load


def _pipelines(files: list[Path], shards: ShardDataset, size: int) -> dict[str, Callable[[int], Tensor]]:
    """Each path's work for the image at a position, ending in a normalised (3, size, size) tensor."""
    cfg = DataConfig(image_size=size, augment="flip")
    prep = folder_preprocessing(cfg, 3, None)
    pil = transforms.Compose(
        [
            transforms.RandomResizedCrop(size, antialias=True),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(prep.mean, prep.std),
        ]
    )
    after_draft = transforms.Compose(
        [transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(prep.mean, prep.std)]
    )
    crop = v2.Compose(
        [
            v2.RandomResizedCrop(size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(prep.mean, prep.std),
        ]
    )
    draft = _draft_crop(size)

    def shard_pil(i: int) -> Tensor:
        with Image.open(io.BytesIO(shards.read(i))) as image:
            return pil(image.convert("RGB"))

    return {
        "folder, PIL (today)": lambda i: pil(open_image(files[i], 3)),
        "folder, PIL draft": lambda i: after_draft(draft(files[i])),
        "folder, decode_jpeg + v2": lambda i: crop(decode(files[i].read_bytes(), 3)),
        "shards, PIL": shard_pil,
        "shards, decode_jpeg + v2": lambda i: crop(decode(shards.read(i), 3)),
    }


def _model_speed(size: int, batch: int = 16, steps: int = 3) -> float:
    """Images a second of the bn network's training step at ``size`` px (bf16 autocast), every core."""
    from googlenet.model import create_model
    from googlenet.training.loss import training_loss

    model = create_model("bn", num_classes=1000, in_channels=3, aux=True).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = training_loss(model, x, y, aux_weight=0.3, label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        times.append(time.perf_counter() - started)
    return batch / statistics.median(times[1:])


def run_data_benchmark(
    work: Path,
    *,
    files: int = 1024,
    images: int = 512,
    batch: int = 128,
    size: int = 224,
    rounds: int = 3,
    log: Callable[[str], None] = lambda _: None,
) -> DataReport:
    """Make ``files`` photo JPEGs in ``work``, pack them, and time ``images`` images through every path on one
    core (``rounds`` interleaved rounds, medians)."""
    folder = work / "photos"
    if not (folder / "train").is_dir():
        log(f"making {files} JPEGs from {SHARED_PHOTOS if SHARED_PHOTOS.is_dir() else 'made photographs'}")
        make_photo_folder(folder, files)
    shard_root = work / "shards"
    if not (shard_root / "index.json").is_file():
        log("packing them into shards (longer side 256 px)")
        pack_folder(folder, shard_root, PackSettings(max_side=256), progress=False)
    paths = sorted((folder / "train").rglob("*.JPEG"))
    shards = ShardDataset(read_index(shard_root).split("train"), None, 3)
    paths = [paths[i] for i in _source_order(shard_root, paths)]
    threads = torch.get_num_threads()
    log("timing the model's training step, every core")
    model_speed = _model_speed(size)
    pipelines = _pipelines(paths, shards, size)
    times: dict[str, list[float]] = {name: [] for name in pipelines}
    moments: dict[str, tuple[float, float]] = {}
    torch.set_num_threads(1)  # one core: the figure a DataLoader worker achieves
    try:
        torch.manual_seed(0)
        for round_ in range(rounds):
            for name, work_on in pipelines.items():
                log(f"round {round_ + 1}/{rounds}: {name}")
                started = time.perf_counter()
                sums = [0.0, 0.0, 0]
                for first in range(0, images, batch):
                    stacked = torch.stack([work_on(i % len(paths)) for i in range(first, min(images, first + batch))])
                    sums[0] += float(stacked.sum())
                    sums[1] += float(stacked.square().sum())
                    sums[2] += stacked.numel()
                times[name].append(time.perf_counter() - started)
                mean = sums[0] / sums[2]
                moments[name] = (mean, (sums[1] / sums[2] - mean**2) ** 0.5)
    finally:
        torch.set_num_threads(threads)
    speed = {name: images / statistics.median(t) for name, t in times.items()}
    base = speed["folder, PIL (today)"]
    rows = [PipelineRow(n, speed[n], speed[n] / base, *moments[n]) for n in pipelines]
    return DataReport(images, batch, size, rows, model_speed, threads)


def _source_order(shard_root: Path, paths: list[Path]) -> list[int]:
    """The folder's files in the shards' order, so both read the same images."""
    import json

    position = {p.name: i for i, p in enumerate(paths)}
    order = []
    for shard in read_index(shard_root).splits["train"]["shards"]:
        rows: list[list[Any]] = json.loads((shard_root / shard["file"].replace(".tar", ".json")).read_text())["samples"]
        order += [position[Path(r[4]).name] for r in rows]
    return order


def format_data_report(report: DataReport, machine: str) -> str:
    lines = [
        f"**data** ({machine}; one core each; {report.images} images at a time in batches of {report.batch}; "
        f"decode, random-resized crop to {report.size} px, flip, normalise)",
        "",
        "| path | img/s per core | ratio | pixel mean | pixel std | cores to feed this CPU's training |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report.rows:
        cores = report.model_images_per_second / r.images_per_second
        lines.append(
            f"| {r.name} | {r.images_per_second:,.1f} | {r.ratio:.2f}x | {r.mean:+.3f} | {r.std:.3f} | {cores:.2f} |"
        )
    lines += [
        "",
        f"The bn network's training step at {report.size} px trains {report.model_images_per_second:,.1f} img/s "
        f"on this machine's {report.threads} threads (bf16, batch 16). A GPU that trains N img/s needs "
        "N / (img/s per core) cores of the chosen path.",
    ]
    return "\n".join(lines)
