"""Data: real Fashion-MNIST (batched in memory) and image folders (torchvision ImageFolder), one interface.

Fashion-MNIST comes from Debian's `dataset-fashion-mnist` package where it is installed, from a copy
already under the data root, or from torchvision's download; its IDX files are read by torchvision's
own reader. The 60,000 training images are split (seeded) into train and validation; the official
10,000-image test set is used only for final numbers.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

import torchvision
from torch import Tensor

from googlenet.config import DataConfig
from googlenet.data.batches import DataBundle, TensorBatches, split_indices
from googlenet.data.preprocessing import Preprocessing
from googlenet.errors import DataError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


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
            why = " ".join(str(error).split())  # one line: torchvision's message spans several
            raise DataError(
                f"Fashion-MNIST is not in {raw} nor {DEBIAN_FASHION_MNIST}, and torchvision's download failed "
                f"({type(error).__name__}: {why}); install it with 'apt-get install -y dataset-fashion-mnist' "
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


def fashion_mnist_bundle(
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
        flip=cfg.flip,
        seed=seed,
        shard=shard,
    )
    val = TensorBatches(images[val_idx], labels[val_idx], prep, cfg.eval_batch_size) if len(val_idx) else None
    return DataBundle(train, val, classes, prep)


def fashion_mnist_test(cfg: DataConfig, prep: Preprocessing, allow_download: bool = True) -> TensorBatches:
    images, labels, _ = load_fashion_mnist(cfg.root, train=False, allow_download=allow_download)
    return TensorBatches(images, labels, prep, cfg.eval_batch_size)


FASHION_MNIST_TEST_IMAGES = 10_000
