"""Data: real Fashion-MNIST (batched in memory) and image folders (torchvision ImageFolder), one interface.

Fashion-MNIST comes from Debian's `dataset-fashion-mnist` package where it is installed, from a copy
already under the data root, or from torchvision's download; its IDX files are read by torchvision's
own reader. The 60,000 training images are split (seeded) into train and validation; the official
10,000-image test set is used only for final numbers.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision import transforms

from googlenet.errors import GoogLeNetError
from googlenet.training.config import DataConfig

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(GoogLeNetError):
    """Data that is missing or cannot be read."""


@dataclass
class Preprocessing:
    """How an image becomes a model input: kept in every checkpoint so predict/evaluate need nothing else."""

    image_size: int  # the square crop the model sees
    resize: int  # shorter side before the centre crop at evaluation
    in_channels: int  # 1: grayscale, 3: RGB
    mean: list[float]
    std: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> Preprocessing:
        return cls(
            image_size=int(table["image_size"]),
            resize=int(table["resize"]),
            in_channels=int(table["in_channels"]),
            mean=[float(v) for v in table["mean"]],
            std=[float(v) for v in table["std"]],
        )

    def eval_transform(self) -> transforms.Compose:
        return transforms.Compose(
            [
                transforms.Resize(self.resize),
                transforms.CenterCrop(self.image_size),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )

    def load_image(self, path: str | Path) -> Tensor:
        """One image file -> a normalised (C, H, W) tensor, converted to the model's channel count."""
        tensor: Tensor = self.eval_transform()(open_image(path, self.in_channels))
        return tensor


def open_image(path: str | Path, in_channels: int = 3) -> Image.Image:
    """Decode an image file into 8-bit grayscale (1 channel) or RGB (3), whatever its mode: 16-bit, CMYK,
    RGBA, palette and grayscale files are converted. Unreadable files and decompression bombs (images
    declaring more than PIL's MAX_IMAGE_PIXELS) raise DataError naming the file."""
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its pixel limit; a declared size that large is refused outright.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return to_8bit(image).convert("L" if in_channels == 1 else "RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DataError(f"refusing {path}: {error}") from None
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(f"cannot read image {path}: {error}") from None


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit single-channel images, scaled to 0-255 by their own range (PIL would clip)."""
    if image.mode not in ("I", "I;16", "I;16B", "I;16L", "F"):
        return image
    pixels = np.asarray(image, dtype=np.float64)
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
    return Image.fromarray(scaled.round().astype(np.uint8), mode="L")


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


def _generator(*seeds: int) -> torch.Generator:
    # One generator per (seed, epoch, batch): any batch can be regenerated exactly, e.g. on resume. NumPy's
    # SeedSequence mixes the tuple into one well-spread 64-bit seed, the same on every Python and machine.
    g = torch.Generator()
    entropy = [s % 2**64 for s in seeds]  # -1 names the train/validation split's own stream
    g.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]))
    return g


# ------------------------------------------------------------------------------------- Fashion-MNIST


def fashion_mnist_raw_dir(root: str | Path) -> Path:
    return Path(root) / "FashionMNIST" / "raw"


def ensure_fashion_mnist(root: str | Path, allow_download: bool = True) -> Path:
    """Make sure the four uncompressed IDX files are in ``root``/FashionMNIST/raw, the layout torchvision
    reads. Sources, in order: already there; .gz files there, in ``root`` or from Debian's package;
    torchvision's download. Returns the raw folder."""
    raw = fashion_mnist_raw_dir(root)
    if all((raw / name).is_file() for name in FASHION_MNIST_FILES):
        return raw
    for source in (raw, Path(root), DEBIAN_FASHION_MNIST):
        if all((source / f"{name}.gz").is_file() for name in FASHION_MNIST_FILES):
            raw.mkdir(parents=True, exist_ok=True)
            for name in FASHION_MNIST_FILES:
                _gunzip(source / f"{name}.gz", raw / name)
            return raw
    if allow_download:
        try:
            torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
            torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
        except Exception as error:  # any network or file failure ends in the same advice
            raise DataError(
                f"Fashion-MNIST is not in {raw} nor {DEBIAN_FASHION_MNIST}, and torchvision's download failed "
                f"({type(error).__name__}: {error}); install it with 'apt-get install -y dataset-fashion-mnist' "
                f"or copy the four .gz files into {root}"
            ) from None
        return raw
    raise DataError(
        f"Fashion-MNIST is not in {raw} nor {DEBIAN_FASHION_MNIST}; install it with "
        f"'apt-get install -y dataset-fashion-mnist' or copy the four .gz files into {root}"
    )


def _gunzip(source: Path, target: Path) -> None:
    """Decompress to a temporary name, then rename: an interrupted copy never looks complete."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with gzip.open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, target)
    except (OSError, EOFError) as error:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"cannot decompress {source}: {error}") from None


def load_fashion_mnist(root: str | Path, train: bool, allow_download: bool = True) -> tuple[Tensor, Tensor, list[str]]:
    """(images (N, 28, 28) uint8, labels (N,) int64, class names) through torchvision's IDX reader."""
    ensure_fashion_mnist(root, allow_download)
    try:
        dataset = torchvision.datasets.FashionMNIST(str(root), train=train, download=False)
    except (RuntimeError, ValueError, OSError, AssertionError) as error:
        raise DataError(
            f"cannot read Fashion-MNIST from {fashion_mnist_raw_dir(root)}: {error}; "
            "delete that folder to have it prepared again"
        ) from None
    images, labels = dataset.data, dataset.targets.long()
    if images.dim() != 3 or images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise DataError(f"Fashion-MNIST files in {fashion_mnist_raw_dir(root)} are inconsistent: {tuple(images.shape)}")
    return images, labels, list(dataset.classes)


class TensorBatches:
    """An in-memory split of uint8 images (N, H, W) batched with tensor ops: shuffling, flips and padded
    random crops cost next to nothing beside the network, and every batch is reproducible from
    (seed, epoch, index), which makes resuming mid-epoch exact. `to` moves the images to a GPU, where the
    batches are then cut, augmented and normalised: the random draws stay on the CPU's generator (the same
    batches on any device) and travel as a few small asynchronous copies."""

    def __init__(
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
        return self

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        order = (
            torch.randperm(self.num_samples, generator=_generator(self.seed, epoch))
            if self.shuffle
            else torch.arange(self.num_samples)
        )
        order = _on(order, self.device)
        for index in range(start_batch, len(self)):
            picked = order[index * self.batch_size : (index + 1) * self.batch_size]
            x = self.images[picked].float().div_(255)  # (B, C, H, W)
            if self.augment != "none" or self.erase > 0:
                x = self._augment(x, _generator(self.seed, epoch, index))
            # Every process draws the whole batch's augmentation, then keeps its share: together they
            # see exactly what one process would.
            own = slice(self.rank, None, self.world_size)
            yield self._finish(x[own]), self.labels[picked][own]

    def _augment(self, x: Tensor, g: torch.Generator) -> Tensor:
        b, _, h, w = x.shape
        device = x.device
        if self.augment != "none":
            flip = _on(torch.rand(b, generator=g) < 0.5, device)
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
    order = torch.randperm(n, generator=_generator(seed, -1))
    n_val = round(n * val_fraction)
    return order[n_val:].sort().values, order[:n_val].sort().values


def _fashion_mnist_bundle(
    cfg: DataConfig,
    seed: int,
    allow_download: bool,
    norm: tuple[list[float], list[float]] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> DataBundle:
    images, labels, classes = load_fashion_mnist(cfg.root, train=True, allow_download=allow_download)
    train_idx, val_idx = split_indices(len(labels), cfg.val_fraction, seed)
    if cfg.train_subset:
        train_idx = train_idx[: cfg.train_subset]
    train_pixels = images[train_idx].float().div_(255)
    mean, std = float(train_pixels.mean()), float(train_pixels.std())  # from the training split only
    mean_std = norm or ([mean], [std])
    prep = Preprocessing(
        image_size=cfg.image_size, resize=cfg.image_size, in_channels=1, mean=mean_std[0], std=mean_std[1]
    )
    train = TensorBatches(
        images[train_idx],
        labels[train_idx],
        prep,
        cfg.batch_size,
        shuffle=True,
        augment=cfg.augment if cfg.augment in ("none", "flip", "flip-crop") else "flip-crop",
        crop_padding=cfg.crop_padding,
        erase=cfg.erase,
        seed=seed,
        shard=shard,
    )
    val = TensorBatches(images[val_idx], labels[val_idx], prep, cfg.eval_batch_size) if len(val_idx) else None
    return DataBundle(train, val, classes, prep)


def fashion_mnist_test(cfg: DataConfig, prep: Preprocessing, allow_download: bool = True) -> TensorBatches:
    images, labels, _ = load_fashion_mnist(cfg.root, train=False, allow_download=allow_download)
    return TensorBatches(images, labels, prep, cfg.eval_batch_size)


# ----------------------------------------------------------------------------------------- image folders


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
        order = torch.randperm(self.n, generator=_generator(self.seed, self.epoch)) if self.shuffle else range(self.n)
        return iter([int(i) for i in order][self.rank :: self.world_size][self.start :])

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size)) - self.start


class LoaderBatches:
    """A split of an image folder through a DataLoader (workers, pinned memory for CUDA)."""

    def __init__(
        self,
        dataset: Dataset[Any],
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        workers: int,
        pin_memory: bool,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.num_samples = len(dataset)  # type: ignore[arg-type]
        self.batch_size = batch_size  # the global batch; each of world_size processes loads its share
        self.sampler = EpochSampler(self.num_samples, shuffle, seed, shard)
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size // shard[1],
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=workers > 0,  # no worker start-up cost at every epoch
        )

    def __len__(self) -> int:
        return (self.num_samples + self.batch_size - 1) // self.batch_size

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        self.sampler.set(epoch, start_batch * (self.batch_size // self.sampler.world_size))
        yield from self.loader


def train_transform(cfg: DataConfig, prep: Preprocessing) -> transforms.Compose:
    """The training augmentation named by cfg.augment, ending in the model's normalisation."""
    size = prep.image_size
    if cfg.augment == "paper":
        # The paper: 8%-100% of the area, aspect ratio 3/4-4/3, photometric distortions, random interpolation.
        modes = (transforms.InterpolationMode.BILINEAR, transforms.InterpolationMode.BICUBIC,
                 transforms.InterpolationMode.NEAREST, transforms.InterpolationMode.BOX)  # fmt: skip
        crops = [transforms.RandomResizedCrop(size, (0.08, 1.0), (3 / 4, 4 / 3), interpolation=m) for m in modes]
        steps: list[Any] = [transforms.RandomChoice(crops), transforms.ColorJitter(0.4, 0.4, 0.4, 0.05)]
    elif cfg.augment == "modern":
        steps = [transforms.RandomResizedCrop(size, antialias=True), transforms.TrivialAugmentWide()]
    else:
        steps = [transforms.Resize(prep.resize), transforms.CenterCrop(size)]
    flip = [transforms.RandomHorizontalFlip()] if cfg.augment != "none" else []
    # After Normalize, erasing to 0 sets the rectangle to the mean pixel, as the in-memory batcher does.
    erase = [transforms.RandomErasing(p=cfg.erase, value=0)] if cfg.erase > 0 else []
    return transforms.Compose([*steps, *flip, transforms.ToTensor(), transforms.Normalize(prep.mean, prep.std), *erase])


SYNSET_MAPPING = "LOC_synset_mapping.txt"


def read_synset_mapping(path: str | Path) -> dict[str, str]:
    """LOC_synset_mapping.txt ('n01440764 tench, Tinca tinca' per line) -> {WNID: first lemma}."""
    mapping = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        wnid, _, lemmas = line.strip().partition(" ")
        if not (wnid.startswith("n") and wnid[1:].isdigit()) or not lemmas:
            raise DataError(f"{path}:{number} is not 'WNID lemma, lemma, ...': {line[:60]!r}")
        mapping[wnid] = lemmas.split(",")[0].strip()
    return mapping


def _devkit_mapping(root: Path) -> dict[str, str] | None:
    """WNID -> name from an ImageNet devkit's meta.mat, parsed by torchvision."""
    for devkit in (root, root / "ILSVRC2012_devkit_t12"):
        if (devkit / "data" / "meta.mat").is_file():
            from torchvision.datasets.imagenet import parse_meta_mat

            _, wnid_to_classes = parse_meta_mat(str(devkit))
            return {wnid: names[0] for wnid, names in wnid_to_classes.items()}
    return None


def class_names_for(root: Path, folder_names: list[str]) -> list[str]:
    """Human-readable names for class folders: WNID folders (n02097047) are named from the dataset's own
    LOC_synset_mapping.txt or devkit meta.mat when it brings one; other folders keep their names."""
    mapping = read_synset_mapping(root / SYNSET_MAPPING) if (root / SYNSET_MAPPING).is_file() else _devkit_mapping(root)
    if not mapping:
        return list(folder_names)
    return [mapping.get(name, name) for name in folder_names]


def _image_folder(path: Path, transform: Any, in_channels: int) -> torchvision.datasets.ImageFolder:
    if not path.is_dir():
        raise DataError(f"image folder {path} does not exist")
    try:
        return torchvision.datasets.ImageFolder(
            str(path), transform=transform, loader=functools.partial(open_image, in_channels=in_channels)
        )
    except (FileNotFoundError, OSError) as error:
        raise DataError(f"{path} is not a usable image folder (one sub-folder of images per class): {error}") from None


def _folder_bundle(
    cfg: DataConfig,
    in_channels: int,
    seed: int,
    pin_memory: bool,
    norm: tuple[list[float], list[float]] | None,
    shard: tuple[int, int] = (0, 1),
) -> DataBundle:
    root = Path(cfg.root)
    train_dir = root / "train" if (root / "train").is_dir() else root
    mean, std = norm or ((IMAGENET_MEAN, IMAGENET_STD) if in_channels == 3 else ((0.5,), (0.5,)))
    prep = Preprocessing(
        image_size=cfg.image_size,
        resize=round(cfg.image_size * 256 / 224),
        in_channels=in_channels,
        mean=list(mean),
        std=list(std),
    )
    train_set = _image_folder(train_dir, train_transform(cfg, prep), in_channels)
    eval_tf = prep.eval_transform()
    if (root / "val").is_dir():
        train_part: Dataset[Any] = train_set
        val_part: Dataset[Any] | None = _image_folder(root / "val", eval_tf, in_channels)
    else:
        train_idx, val_idx = split_indices(len(train_set), cfg.val_fraction, seed)
        train_part = Subset(train_set, train_idx.tolist())
        val_part = Subset(_image_folder(train_dir, eval_tf, in_channels), val_idx.tolist()) if len(val_idx) else None
    if cfg.train_subset:
        train_part = Subset(train_part, list(range(min(cfg.train_subset, len(train_part)))))  # type: ignore[arg-type]
    common = {"seed": seed, "workers": cfg.workers, "pin_memory": pin_memory}
    train = LoaderBatches(train_part, cfg.batch_size, shuffle=True, shard=shard, **common)  # type: ignore[arg-type]
    val = LoaderBatches(val_part, cfg.eval_batch_size, shuffle=False, **common) if val_part else None  # type: ignore[arg-type]
    return DataBundle(train, val, class_names_for(root, list(train_set.classes)), prep)


def folder_split(cfg: DataConfig, prep: Preprocessing, split: str) -> LoaderBatches:
    """An evaluation split (test, val or train) of an image folder, with the checkpoint's preprocessing."""
    path = Path(cfg.root) / split
    dataset = _image_folder(path, prep.eval_transform(), prep.in_channels)
    return LoaderBatches(dataset, cfg.eval_batch_size, shuffle=False, seed=0, workers=cfg.workers, pin_memory=False)


def build_data(
    cfg: DataConfig,
    *,
    in_channels: int,
    seed: int,
    pin_memory: bool = False,
    norm: tuple[list[float], list[float]] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> DataBundle:
    """The train and validation splits named by ``cfg``; ``norm`` (mean, std) replaces the data's own
    normalisation, as when fine-tuning weights trained with another one; ``shard`` = (rank, world size)
    gives this process its share of every training batch."""
    if shard[1] > 1 and cfg.batch_size % shard[1]:
        raise DataError(f"data.batch_size={cfg.batch_size} must divide evenly among {shard[1]} processes")
    if cfg.dataset == "fashion-mnist":
        return _fashion_mnist_bundle(cfg, seed, allow_download=True, norm=norm, shard=shard)
    return _folder_bundle(cfg, in_channels or 3, seed, pin_memory, norm, shard)


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """Files and folders (searched recursively) -> the image files in them, sorted within each folder."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not images:
                raise DataError(f"folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            found += images
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"{path} does not exist")
    return found


FASHION_MNIST_TEST_IMAGES = 10_000


def test_split_size(cfg: DataConfig) -> int:
    """How many images `evaluate --split test` will read: Fashion-MNIST's 10,000 or the folder's test/ (0 if none)."""
    if cfg.dataset == "fashion-mnist":
        return FASHION_MNIST_TEST_IMAGES
    test = Path(cfg.root) / "test"
    try:
        return len(collect_images([test])) if test.is_dir() else 0
    except DataError:  # an empty test/: nothing to keep time for
        return 0


def eval_split(cfg: DataConfig, prep: Preprocessing, split: str, seed: int) -> Batches:
    """A split for evaluation with the checkpoint's preprocessing: 'test' (Fashion-MNIST's official 10,000
    or the folder's test/), 'val' (the run's held-out images) or 'train'."""
    if cfg.dataset == "fashion-mnist":
        if split == "test":
            return fashion_mnist_test(cfg, prep)
        images, labels, _ = load_fashion_mnist(cfg.root, train=True)
        train_idx, val_idx = split_indices(len(labels), cfg.val_fraction, seed)
        picked = val_idx if split == "val" else train_idx
        if not len(picked):
            raise DataError("this run held out no validation images (data.val_fraction = 0)")
        return TensorBatches(images[picked], labels[picked], prep, cfg.eval_batch_size)
    root = Path(cfg.root)
    if (root / split).is_dir():
        return folder_split(cfg, prep, split)
    if split == "test":
        raise DataError(f"{root} has no test/ folder; evaluate --split val instead")
    train_dir = root / "train" if (root / "train").is_dir() else root
    dataset = _image_folder(train_dir, prep.eval_transform(), prep.in_channels)
    train_idx, val_idx = split_indices(len(dataset), cfg.val_fraction, seed)
    subset = Subset(dataset, (val_idx if split == "val" else train_idx).tolist())
    return LoaderBatches(subset, cfg.eval_batch_size, shuffle=False, seed=0, workers=cfg.workers, pin_memory=False)
