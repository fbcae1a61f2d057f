"""`googlenet data pack`: an image folder's splits as shards of pre-resized JPEGs.

The shards are WebDataset tar files: each sample is ``KEY.jpg`` (the image) and ``KEY.cls`` (its class
index as text). Any tar tool reads them, and WebDataset streams them from a disk, a web server or an object
store. Tar was chosen over litdata's chunk format for three reasons:
- it needs no library to write or to read;
- its members are contiguous bytes, so an index of their offsets gives random access;
- a shard keeps working if this package goes away.

Beside each shard a small index (``SPLIT-NNNNNN.json``) gives every sample's offset, size, class and source
file. ``index.json`` holds the class table, the counts per class, the settings and the files skipped.

Packing is deterministic: files are taken in sorted order and tar headers carry no time or owner, so
packing the same folder twice gives identical bytes. Images are encoded in parallel over the cores, in
order. A shard is written to a temporary file and renamed when complete, with its index written after it.
An interrupted pack resumes after its last complete shard.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from googlenet.data.folders import class_names_for
from googlenet.data.images import decode_image
from googlenet.errors import DataError
from googlenet.files import atomic_write, writable_dir

FORMAT = "googlenet-shards"
VERSION = 1
INDEX = "index.json"
SPLITS = ("train", "val", "test")
PACKED_EXTENSIONS = (".jpg", ".jpeg", ".png")  # what ImageNet-style folders hold; others are skipped by name


@dataclass(frozen=True)
class PackSettings:
    max_side: int = 256  # the longer side is brought down to this (never up)
    quality: int = 90  # JPEG quality of the re-encoded images
    shard_bytes: int = 2**30  # a shard is closed once it holds this much

    def check(self) -> None:
        if not 16 <= self.max_side <= 8192:
            raise DataError(f"--max-side must be from 16 to 8192 px; got {self.max_side}")
        if not 1 <= self.quality <= 100:
            raise DataError(f"--quality must be from 1 to 100; got {self.quality}")
        if self.shard_bytes < 2**16:
            raise DataError(f"--shard-size must be at least 64KB; got {self.shard_bytes:,} bytes")


@dataclass
class Sample:
    source: str  # relative to the packed folder
    label: int


@dataclass
class PackResult:
    out: Path
    samples: dict[str, int]  # per split
    shards: dict[str, int]
    skipped: list[dict[str, str]] = field(default_factory=list)
    resumed_shards: int = 0


def parse_size(text: str) -> int:
    """'1GB', '500MB', '64KB' or a number of bytes -> bytes (powers of 1024)."""
    units = {"KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}
    cleaned = text.strip().upper().replace(" ", "").removesuffix("IB").removesuffix("B")
    factor = 1
    for unit, size in units.items():
        if cleaned.endswith(unit[0]):
            cleaned, factor = cleaned[:-1], size
            break
    try:
        value = float(cleaned)
    except ValueError:
        raise DataError(f"--shard-size {text!r} is not a size such as 1GB or 500MB") from None
    return int(value * factor)


def _layout(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """The splits to pack ({name: folder}) and the class folders, checked: every split holds class folders only."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder: pack an image folder with one sub-folder per class")
    found = {name: folder / name for name in SPLITS if (folder / name).is_dir()}
    splits = found or {"train": folder}
    classes = sorted(p.name for p in splits.get("train", next(iter(splits.values()))).iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{folder} has no class folders: put each class's images in a sub-folder of its own")
    for path in splits.values():
        loose = sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        loose = [n for n in loose if n != "LOC_synset_mapping.txt"]
        if loose:
            raise DataError(
                f"{path} mixes files ({loose[0]}, ...) with class folders: move every image into its class's folder"
            )
        extra = sorted({p.name for p in path.iterdir() if p.is_dir()} - set(classes))
        if extra:
            raise DataError(f"{path / extra[0]} is a class that train/ does not have: the splits must share classes")
    return splits, classes


def _samples(root: Path, split: Path, classes: list[str], skipped: list[dict[str, str]]) -> list[Sample]:
    samples = []
    for label, name in enumerate(classes):
        folder = split / name
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = str(path.relative_to(root))
            if path.suffix.lower() not in PACKED_EXTENSIONS:
                skipped.append({"path": relative, "reason": "not a JPEG or PNG file"})
                continue
            samples.append(Sample(relative, label))
    return samples


def _encode(job: tuple[str, int, int]) -> tuple[bytes | None, str]:
    """(JPEG bytes, "") of one image, its longer side at most max_side; (None, why) if it cannot be read."""
    path, max_side, quality = job
    try:
        image = decode_image(path, 3)
    except DataError as error:
        return None, str(error)
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=False)
    return buffer.getvalue(), ""


def _member(name: str, data: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)  # no time, owner or mode beyond the defaults: the same bytes on every run
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    return info


class _ShardWriter:
    """Writes SPLIT-NNNNNN.tar shards of at most about shard_bytes, each renamed into place when complete and
    followed by its own index."""

    def __init__(self, out: Path, split: str, first: int, shard_bytes: int) -> None:
        self.out, self.split, self.number, self.shard_bytes = out, split, first, shard_bytes
        self.tar: tarfile.TarFile | None = None
        self.entries: list[list[Any]] = []
        self.written: list[dict[str, Any]] = []
        self.labels: list[int] = []  # the class of every sample in the shards written so far

    def add(self, key: str, sample: Sample, image: bytes) -> None:
        if self.tar is None:
            # Open across many add() calls; closed (and renamed) by close().
            self.tar = tarfile.open(self._path(".tar.partial"), "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        label = str(sample.label).encode()
        info = _member(f"{key}.jpg", image)
        # The image's bytes follow its header: their offset is what random access reads.
        offset = self.tar.offset + len(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
        self.tar.addfile(info, io.BytesIO(image))
        self.tar.addfile(_member(f"{key}.cls", label), io.BytesIO(label))
        self.entries.append([key, sample.label, offset, len(image), sample.source])
        if self.tar.fileobj is not None and self.tar.fileobj.tell() >= self.shard_bytes:
            self.close()

    def close(self) -> None:
        if self.tar is None:
            return
        self.tar.close()
        partial = self._path(".tar.partial")
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        size = partial.stat().st_size
        os.replace(partial, self._path(".tar"))
        index = {"file": self._path(".tar").name, "samples": self.entries}
        _write_json(self._path(".json"), index)
        self.written.append({"file": self._path(".tar").name, "samples": len(self.entries), "bytes": size})
        self.labels += [entry[1] for entry in self.entries]
        self.tar, self.entries, self.number = None, [], self.number + 1

    def _path(self, suffix: str) -> Path:
        return self.out / f"{self.split}-{self.number:06d}{suffix}"


def _complete_shards(out: Path, split: str) -> list[dict[str, Any]]:
    """The shards of ``split`` already complete in ``out`` (tar and index both there), in order."""
    done = []
    number = 0
    while (out / f"{split}-{number:06d}.tar").is_file() and (out / f"{split}-{number:06d}.json").is_file():
        index = json.loads((out / f"{split}-{number:06d}.json").read_text(encoding="utf-8"))
        tar = out / f"{split}-{number:06d}.tar"
        done.append({"file": tar.name, "samples": len(index["samples"]), "bytes": tar.stat().st_size, "index": index})
        number += 1
    return done


def pack_folder(
    folder: str | Path,
    out: str | Path,
    settings: PackSettings | None = None,
    *,
    workers: int = 0,
    progress: bool = True,
) -> PackResult:
    """Pack ``folder`` (train/, val/, test/ of class folders, or class folders alone) into shards in ``out``."""
    settings = settings or PackSettings()
    settings.check()
    root, out = Path(folder), Path(out)
    splits, classes = _layout(root)
    writable_dir(out)
    _check_resumable(out, settings)
    _write_json(out / "pack.json", asdict(settings))
    skipped: list[dict[str, str]] = []
    plan = {name: _samples(root, path, classes, skipped) for name, path in splits.items()}
    if not any(plan.values()):
        raise DataError(f"{root} holds no JPEG or PNG images")
    result = PackResult(out, {}, {}, skipped)
    report: dict[str, Any] = {}
    workers = workers or max(1, os.cpu_count() or 1)
    with multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else _Serial() as pool:
        for split, samples in plan.items():
            report[split] = _pack_split(root, out, split, samples, settings, pool, progress, result, len(classes))
    names = class_names_for(root, classes)
    index = {
        "format": FORMAT,
        "version": VERSION,
        "settings": asdict(settings),
        "classes": [{"index": i, "folder": f, "name": n} for i, (f, n) in enumerate(zip(classes, names, strict=True))],
        "splits": report,
        "skipped": skipped,
    }
    _write_json(out / INDEX, index, indent=1)
    return result


def _write_json(path: Path, value: Any, indent: int | None = None) -> None:
    """Written whole or not at all, readable by everyone who may train on the shards."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(value, indent=indent), encoding="utf-8"))
    path.chmod(0o644)


def _pack_split(  # one split's samples through the pool into shards; its part of index.json
    root: Path,
    out: Path,
    split: str,
    samples: list[Sample],
    settings: PackSettings,
    pool: Any,
    progress: bool,
    result: PackResult,
    num_classes: int,
) -> dict[str, Any]:
    from tqdm import tqdm

    done = _complete_shards(out, split)
    keys_done = {entry[0] for shard in done for entry in shard["index"]["samples"]}
    last = max((int(k) for k in keys_done), default=-1)
    result.resumed_shards += len(done)
    # A key is the sample's place in the split's sorted file list: the same on every run, and resuming
    # goes on after the last key a complete shard holds.
    todo = [(f"{i:09d}", s) for i, s in enumerate(samples) if i > last]
    result.skipped += [  # what an earlier, interrupted run skipped before its last complete shard
        {"path": s.source, "reason": "could not be read (found by an earlier, interrupted pack)"}
        for i, s in enumerate(samples[: last + 1])
        if f"{i:09d}" not in keys_done
    ]
    writer = _ShardWriter(out, split, len(done), settings.shard_bytes)
    jobs = ((str(root / s.source), settings.max_side, settings.quality) for _, s in todo)
    bar = tqdm(
        total=len(samples), initial=len(samples) - len(todo), desc=f"packing {split}", unit="img", disable=not progress
    )
    with bar:
        for (key, sample), (image, error) in zip(todo, pool.imap(_encode, jobs, chunksize=8), strict=True):
            bar.update()
            if image is None:
                result.skipped.append({"path": sample.source, "reason": error})
                continue
            writer.add(key, sample, image)
        writer.close()
    shards = [{k: v for k, v in s.items() if k != "index"} for s in done] + writer.written
    per_class = [0] * num_classes
    labels = [entry[1] for shard in done for entry in shard["index"]["samples"]] + writer.labels
    for label in labels:
        per_class[label] += 1
    result.samples[split], result.shards[split] = len(labels), len(shards)
    return {"samples": len(labels), "per_class": per_class, "shards": shards}


def _check_resumable(out: Path, settings: PackSettings) -> None:
    previous = out / "pack.json"
    if previous.is_file():
        try:
            before = json.loads(previous.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            before = None
        if before != asdict(settings):
            raise DataError(
                f"{out} holds shards packed with other settings ({before}): choose another --out or remove it"
            )
    elif any(out.glob("*.tar")):
        raise DataError(f"{out} already holds tar files not written by 'googlenet data pack': choose another --out")


class _Serial:
    """The pool's imap on this process alone (--workers 1)."""

    def imap(self, fn: Any, jobs: Any, chunksize: int = 1) -> Iterator[Any]:
        return map(fn, jobs)

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *_: object) -> None:
        pass
