"""Reading packed shards (``data.dataset = "shards"``): each sample is read by its offset in its tar file,
decoded and augmented as an image folder's would be.

An epoch's order is seeded by (seed, epoch), as for folders, so resuming mid-epoch is exact. Under torchrun
each process reads only its own shards: every epoch the shards are dealt out to the processes in a seeded
order, and each process shuffles the samples of its own shards. Every process takes as many samples as the
one with the fewest, so all of them run the same number of steps. Its DataLoader workers share out its
batches.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset

from googlenet.config import DataConfig
from googlenet.data.augment import decode, tensor_train_transform
from googlenet.data.batches import DataBundle, EpochSampler, LoaderBatches, seeded_generator, split_indices
from googlenet.data.folders import folder_preprocessing
from googlenet.data.pack import FORMAT, INDEX, VERSION
from googlenet.data.preprocessing import Preprocessing
from googlenet.errors import DataError


@dataclass
class ShardSplit:
    """One split's samples across its shards: where each sample's JPEG is and its class."""

    files: list[Path]  # the split's shards, in order
    shard: np.ndarray  # (N,) the shard of each sample
    offset: np.ndarray  # (N,) its JPEG's first byte in the tar file
    size: np.ndarray  # (N,) its JPEG's length
    label: np.ndarray  # (N,) its class
    shard_starts: np.ndarray  # (shards + 1,) the first sample of each shard, then N


@dataclass
class ShardIndex:
    root: Path
    class_folders: list[str]
    class_names: list[str]
    splits: dict[str, dict[str, Any]]
    settings: dict[str, Any]

    def split(self, name: str) -> ShardSplit:
        if name not in self.splits:
            raise DataError(f"{self.root} has no {name} split (it has {', '.join(self.splits)})")
        files, shard, offset, size, label, starts = [], [], [], [], [], [0]
        for number, entry in enumerate(self.splits[name]["shards"]):
            tar = self.root / entry["file"]
            index = tar.with_suffix(".json")
            if not tar.is_file() or not index.is_file():
                raise DataError(f"{tar if not tar.is_file() else index} is missing: pack {self.root} again")
            rows = json.loads(index.read_text(encoding="utf-8"))["samples"]
            files.append(tar)
            shard += [number] * len(rows)
            offset += [r[2] for r in rows]
            size += [r[3] for r in rows]
            label += [r[1] for r in rows]
            starts.append(starts[-1] + len(rows))
        arrays = (np.array(a, dtype=np.int64) for a in (shard, offset, size, label, starts))
        return ShardSplit(files, *arrays)


def read_index(root: str | Path) -> ShardIndex:
    """The index of a shard folder written by `googlenet data pack`, checked."""
    root = Path(root)
    path = root / INDEX
    if not path.is_file():
        raise DataError(
            f"{root} has no {INDEX}: pack an image folder into it with 'googlenet data pack FOLDER --out {root}'"
        )
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is damaged ({error}): pack the folder again") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{path} was not written by 'googlenet data pack'")
    if index.get("version") != VERSION:
        raise DataError(
            f"{root} holds shards of format version {index.get('version')}; this googlenet reads version {VERSION}: "
            "pack the folder again"
        )
    classes = index["classes"]
    return ShardIndex(
        root, [c["folder"] for c in classes], [c["name"] for c in classes], index["splits"], index["settings"]
    )


class Draw(NamedTuple):
    """A sample as the training sampler asks for it: its augmentation is drawn from (seed, epoch, index), so
    it is the same whichever worker reads it and whether or not the run was resumed."""

    sample: int
    epoch: int


class ShardDataset(Dataset[tuple[Any, int]]):
    """A split's samples, each decoded from its shard and passed through ``transform``. File handles are
    opened per process (DataLoader workers each open their own). Asked for a :class:`Draw`, it seeds the
    transform's random draws from (seed, epoch, index)."""

    def __init__(
        self, split: ShardSplit, transform: Any, in_channels: int, seed: int = 0, *, tensors: bool = False
    ) -> None:
        self.split, self.transform, self.mode = split, transform, "L" if in_channels == 1 else "RGB"
        self.seed = seed
        self.tensors = tensors  # decode to a uint8 tensor for a v2 transform, instead of a PIL image
        self._handles: dict[int, BinaryIO] = {}

    def __len__(self) -> int:
        return len(self.split.label)

    def read(self, index: int) -> bytes:
        shard = int(self.split.shard[index])
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = open(self.split.files[shard], "rb")  # noqa: SIM115 (kept open)
        handle.seek(int(self.split.offset[index]))
        data = handle.read(int(self.split.size[index]))
        if len(data) != int(self.split.size[index]):
            raise DataError(f"{self.split.files[shard]} is shorter than its index says: pack the folder again")
        return data

    def __getitem__(self, item: int | Draw) -> tuple[Any, int]:
        index = int(item.sample if isinstance(item, Draw) else item)
        if isinstance(item, Draw):  # torchvision's transforms draw from torch's and Python's generators
            state = int(np.random.SeedSequence([self.seed, item.epoch, index]).generate_state(1, np.uint64)[0])
            torch.manual_seed(state)
            random.seed(state)
        data, label = self.read(index), int(self.split.label[index])
        if self.tensors:  # libjpeg-turbo straight to a uint8 tensor (data/augment.py)
            return self.transform(decode(data, 1 if self.mode == "L" else 3)), label
        with Image.open(io.BytesIO(data)) as image:
            picture = image.convert(self.mode)
        return self.transform(picture), label

    def __getstate__(self) -> dict[str, Any]:  # workers open their own files
        return {**self.__dict__, "_handles": {}}


class ShardSampler(EpochSampler):
    """Each epoch: the shards dealt to the processes in a seeded order (process r takes every world-th), then
    the samples of a process's shards in a seeded order. Any batch can be the first (resume)."""

    def __init__(
        self,
        split: ShardSplit,
        shuffle: bool,
        seed: int,
        shard: tuple[int, int] = (0, 1),
        keep: Tensor | None = None,
    ) -> None:
        super().__init__(len(split.label) if keep is None else int(keep.sum()), shuffle, seed, shard)
        self.starts = split.shard_starts
        self.keep = keep  # (N,) bool: the samples to train on (the rest held out for validation); None: all

    def _order(self) -> Tensor:
        shards = len(self.starts) - 1
        g = seeded_generator(self.seed, self.epoch)
        dealt = torch.randperm(shards, generator=g) if self.shuffle else torch.arange(shards)
        ranges = [torch.arange(int(self.starts[s]), int(self.starts[s + 1])) for s in range(shards)]
        if self.keep is not None:  # the samples held out for validation are not trained on
            ranges = [r[self.keep[r]] for r in ranges]
        counts = torch.tensor([len(r) for r in ranges])
        # Every process runs as many samples as the one dealt the fewest.
        each = min(int(counts[dealt[r :: self.world_size]].sum()) for r in range(self.world_size))
        samples = torch.cat([ranges[s] for s in dealt[self.rank :: self.world_size].tolist()])
        if self.shuffle:
            samples = samples[
                torch.randperm(len(samples), generator=seeded_generator(self.seed, self.epoch, self.rank))
            ]
        return samples[:each]

    def __iter__(self) -> Iterator[Draw]:  # type: ignore[override]
        return iter([Draw(i, self.epoch) for i in self._order()[self.start :].tolist()])

    def __len__(self) -> int:
        return len(self._order()) - self.start


def shard_bundle(
    cfg: DataConfig,
    in_channels: int,
    seed: int,
    pin_memory: bool,
    norm: tuple[list[float], list[float]] | None,
    shard: tuple[int, int] = (0, 1),
) -> DataBundle:
    """Training and validation from packed shards: the same preprocessing and augmentation as image folders.
    Without a packed val split, ``data.val_fraction`` of the training samples is held out (seeded)."""
    index = read_index(cfg.root)
    prep = folder_preprocessing(cfg, in_channels, norm)
    train_split = index.split("train")
    # Training decodes and augments on uint8 tensors: the fastest path measured, with the crops' statistics
    # of the PIL path (docs/performance.md); evaluation keeps the checkpoint's PIL preprocessing.
    train_set = ShardDataset(train_split, tensor_train_transform(cfg, prep), in_channels, seed, tensors=True)
    common: dict[str, Any] = {"seed": seed, "workers": cfg.workers, "pin_memory": pin_memory}
    keep = None
    if "val" in index.splits:
        val_set: Dataset[Any] | None = ShardDataset(index.split("val"), prep.eval_transform(), in_channels)
    else:
        train_idx, val_idx = split_indices(len(train_set), cfg.val_fraction, seed)
        held_out = ShardDataset(train_split, prep.eval_transform(), in_channels)
        val_set = Subset(held_out, val_idx.tolist()) if len(val_idx) else None
        keep = torch.zeros(len(train_set), dtype=torch.bool)
        keep[train_idx] = True
    sampler = ShardSampler(train_split, shuffle=True, seed=seed, shard=shard, keep=keep)
    train = LoaderBatches(train_set, cfg.batch_size, shuffle=True, shard=shard, sampler=sampler, **common)
    val = LoaderBatches(val_set, cfg.eval_batch_size, shuffle=False, **common) if val_set is not None else None
    return DataBundle(train, val, index.class_names, prep)


def shard_eval_split(cfg: DataConfig, prep: Preprocessing, split: str, seed: int) -> LoaderBatches:
    """An evaluation split of packed shards with the checkpoint's preprocessing: a packed split, or the
    held-out part ("val") or the rest ("train") of the training samples when no val split was packed."""
    index = read_index(cfg.root)
    common: dict[str, Any] = {"shuffle": False, "seed": 0, "workers": cfg.workers, "pin_memory": False}
    if split in index.splits:
        dataset = ShardDataset(index.split(split), prep.eval_transform(), prep.in_channels)
        return LoaderBatches(dataset, cfg.eval_batch_size, **common)
    if split == "test":
        raise DataError(f"{cfg.root} has no test split packed; evaluate --split val instead")
    train = ShardDataset(index.split("train"), prep.eval_transform(), prep.in_channels)
    train_idx, val_idx = split_indices(len(train), cfg.val_fraction, seed)
    picked = Subset(train, (val_idx if split == "val" else train_idx).tolist())
    return LoaderBatches(picked, cfg.eval_batch_size, **common)
