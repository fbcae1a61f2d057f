"""Splits as batches: the interface the loop reads, in-memory tensors (batched and augmented with tensor ops)
and DataLoader-backed folders; every batch reproducible from (seed, epoch, index)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from googlenet.data.preprocessing import Preprocessing


class Batches(Protocol):
    """One split, as batches of (images (N, C, H, W) float, labels (N,) int64)."""

    num_samples: int

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]: ...


@dataclass
class DataBundle:
    train: Batches
    val: Batches | None
    class_names: list[str]
    preprocessing: Preprocessing


def seeded_generator(*seeds: int) -> torch.Generator:
    # One generator per (seed, epoch, batch): any batch can be regenerated exactly, e.g. on resume. NumPy's
    # SeedSequence mixes the tuple into one well-spread 64-bit seed, the same on every Python and machine.
    g = torch.Generator()
    entropy = [s % 2**64 for s in seeds]  # -1 names the train/validation split's own stream
    g.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]))
    return g


class TensorBatches:
    """An in-memory split of uint8 images (N, H, W) batched with tensor ops: shuffling, flips and padded
    random crops cost next to nothing beside the network, and every batch is reproducible from
    (seed, epoch, index), which makes resuming mid-epoch exact. `to` moves the images to a GPU, where the
    batches are then cut, augmented and normalised: the random draws stay on the CPU's generator (the same
    batches on any device) and travel as a few small asynchronous copies."""

    def __init__(  # the split's tensors, then keyword-only augmentation settings
        self,
        images: Tensor,
        labels: Tensor,
        preprocessing: Preprocessing,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: str = "none",
        crop_padding: int = 0,
        erase: float = 0.0,
        flip: str = "random",
        seed: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.images = images if images.dim() == 4 else images.unsqueeze(1)  # (N, C, H, W)
        self.rank, self.world_size = shard  # this process takes every world_size-th image of each batch
        self.labels = labels
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.crop_padding = crop_padding
        self.erase = erase
        self.seed = seed
        self.num_samples = int(labels.shape[0])
        # flip = "alternate": each image's side in even epochs, drawn once; odd epochs show the other side.
        self.first_sides = (
            torch.rand(self.num_samples, generator=seeded_generator(seed, -2)) < 0.5 if flip == "alternate" else None
        )
        self._mean = torch.tensor(preprocessing.mean).view(1, -1, 1, 1)
        self._std = torch.tensor(preprocessing.std).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return (self.num_samples + self.batch_size - 1) // self.batch_size

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device) -> TensorBatches:
        """Keep the split on ``device`` (60,000 Fashion-MNIST images are 47 MB as uint8); returns self."""
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        self._mean, self._std = self._mean.to(device), self._std.to(device)
        if self.first_sides is not None:
            self.first_sides = self.first_sides.to(device)
        return self

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        order = (
            torch.randperm(self.num_samples, generator=seeded_generator(self.seed, epoch))
            if self.shuffle
            else torch.arange(self.num_samples)
        )
        order = _on(order, self.device)
        for index in range(start_batch, len(self)):
            picked = order[index * self.batch_size : (index + 1) * self.batch_size]
            x = self.images[picked].float().div_(255)  # (B, C, H, W)
            if self.augment != "none" or self.erase > 0:
                x = self._augment(x, seeded_generator(self.seed, epoch, index), self._sides(picked, epoch))
            # Every process draws the whole batch's augmentation, then keeps its share: together they
            # see exactly what one process would.
            own = slice(self.rank, None, self.world_size)
            yield self._finish(x[own]), self.labels[picked][own]

    def _sides(self, picked: Tensor, epoch: int) -> Tensor | None:
        """With alternating flips, which of the batch's images are mirrored in ``epoch``; else None (drawn)."""
        if self.first_sides is None:
            return None
        return self.first_sides[picked] ^ (epoch % 2 == 1)

    def _augment(self, x: Tensor, g: torch.Generator, sides: Tensor | None = None) -> Tensor:
        b, _, h, w = x.shape
        device = x.device
        if self.augment != "none":
            flip = _on(torch.rand(b, generator=g) < 0.5, device) if sides is None else sides
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        p = self.crop_padding
        if self.augment == "flip-crop" and p > 0:
            padded = F.pad(x, (p, p, p, p)).permute(0, 2, 3, 1)  # (B, H+2p, W+2p, C)
            dy = _on(torch.randint(0, 2 * p + 1, (b,), generator=g), device)
            dx = _on(torch.randint(0, 2 * p + 1, (b,), generator=g), device)
            rows = (dy.view(-1, 1) + torch.arange(h, device=device)).view(b, h, 1)
            cols = (dx.view(-1, 1) + torch.arange(w, device=device)).view(b, 1, w)
            x = padded[torch.arange(b, device=device).view(b, 1, 1), rows, cols].permute(0, 3, 1, 2)
        if self.erase > 0:  # drawn last, so that flips and shifts stay what they are without it
            x = torch.where(erasing_masks(b, h, w, self.erase, g, device), self._mean, x)
        return x

    def _finish(self, x: Tensor) -> Tensor:
        size = self.preprocessing.image_size
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return ((x - self._mean) / self._std).contiguous()


def erasing_masks(
    b: int, h: int, w: int, chance: float, g: torch.Generator, device: torch.device | None = None
) -> Tensor:
    """(b, 1, h, w) boolean masks on ``device`` (default: the CPU) for random erasing, drawn for the whole
    batch at once from ``g``: with probability `chance` an image gets one rectangle of 2%-33% of its area
    with aspect ratio 0.3-3.3 (the paper's ranges; torchvision's RandomErasing retries oversized draws where
    this clamps them to the image)."""
    chosen = torch.rand(b, generator=g) < chance
    area = torch.empty(b).uniform_(0.02, 0.33, generator=g) * (h * w)
    aspect = torch.empty(b).uniform_(math.log(0.3), math.log(1 / 0.3), generator=g).exp()
    eh = (area * aspect).sqrt().round().clamp(1, h).long()
    ew = (area / aspect).sqrt().round().clamp(1, w).long()
    y0 = (torch.rand(b, generator=g) * (h - eh + 1)).long()
    x0 = (torch.rand(b, generator=g) * (w - ew + 1)).long()
    # The per-image draws go to the device as one small copy; the (b, h, w) masks are built there.
    chosen, eh, ew, y0, x0 = _on(torch.stack([chosen.long(), eh, ew, y0, x0]), device).unbind()
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    inside = (
        (rows >= y0.view(b, 1, 1)) & (rows < (y0 + eh).view(b, 1, 1))
        & (cols >= x0.view(b, 1, 1)) & (cols < (x0 + ew).view(b, 1, 1))
    )  # fmt: skip
    return (inside & chosen.bool().view(b, 1, 1)).unsqueeze(1)


def _on(tensor: Tensor, device: torch.device | None) -> Tensor:
    """A CPU tensor on ``device``, copied without waiting for the GPU (the copy is staged at once, so the
    source may be freed; a blocking copy would wait for all queued work)."""
    return tensor if device is None or tensor.device == device else tensor.to(device, non_blocking=True)


def keep_on_device(data: DataBundle, device: torch.device) -> DataBundle:
    """Move the in-memory splits to ``device``, so that batches are cut and augmented there; image folders
    stream from disk through their loaders and stay as they are."""
    for split in (data.train, data.val):
        if isinstance(split, TensorBatches):
            split.to(device)
    return data


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded split of range(n) into (train, val) index tensors."""
    order = torch.randperm(n, generator=seeded_generator(seed, -1))
    n_val = round(n * val_fraction)
    return order[n_val:].sort().values, order[:n_val].sort().values


class EpochSampler(Sampler[int]):
    """Seeded per-epoch order that can start at any batch, so a resumed run sees the same order. With
    several processes, each takes every world_size-th index (what DistributedSampler does), so that its
    k-th batch holds its share of the k-th global batch."""

    def __init__(self, n: int, shuffle: bool, seed: int, shard: tuple[int, int] = (0, 1)) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size = shard
        self.epoch, self.start = 0, 0

    def set(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        order = (
            torch.randperm(self.n, generator=seeded_generator(self.seed, self.epoch)) if self.shuffle else range(self.n)
        )
        return iter([int(i) for i in order][self.rank :: self.world_size][self.start :])

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size)) - self.start


class LoaderBatches:
    """A split of an image folder through a DataLoader (workers, pinned memory for CUDA)."""

    def __init__(  # the dataset, then the DataLoader's settings
        self,
        dataset: Dataset[Any],
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        workers: int,
        pin_memory: bool,
        shard: tuple[int, int] = (0, 1),
        sampler: EpochSampler | None = None,
    ) -> None:
        self.batch_size = batch_size  # the global batch; each of world_size processes loads its share
        # The order of an epoch: a seeded shuffle of all samples unless the data brings its own (shards,
        # which may hold some samples out); the sampler knows how many an epoch holds.
        self.sampler = sampler or EpochSampler(len(dataset), shuffle, seed, shard)  # type: ignore[arg-type]
        self.num_samples = self.sampler.n
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size // shard[1],
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=workers > 0,  # no worker start-up cost at every epoch
            # The loader's own generator for its workers' seeds: drawn from the global one, it would shift
            # the model's dropout draws whenever a run resumes mid-epoch.
            generator=seeded_generator(seed, -2),
        )

    def __len__(self) -> int:
        return (self.num_samples + self.batch_size - 1) // self.batch_size

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        self.sampler.set(epoch, start_batch * (self.batch_size // self.sampler.world_size))
        yield from self.loader
