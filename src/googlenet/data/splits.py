"""The splits a run trains, validates and tests on, whatever the data set."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Subset

from googlenet.config import DataConfig
from googlenet.data.batches import Batches, DataBundle, LoaderBatches, TensorBatches, split_indices
from googlenet.data.fashion import (
    FASHION_MNIST_TEST_IMAGES,
    fashion_mnist_bundle,
    fashion_mnist_test,
    load_fashion_mnist,
)
from googlenet.data.folders import folder_bundle, folder_split, image_folder
from googlenet.data.images import collect_images
from googlenet.data.preprocessing import Preprocessing
from googlenet.data.shards import read_index, shard_bundle, shard_eval_split
from googlenet.errors import DataError


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
        return fashion_mnist_bundle(cfg, seed, allow_download=True, norm=norm, shard=shard)
    if cfg.flip != "random":
        # Folders and shards flip inside torchvision's per-image transforms, which know no epoch.
        raise DataError(f"data.flip={cfg.flip!r} is for Fashion-MNIST; image folders and shards flip at random")
    if cfg.dataset == "shards":
        return shard_bundle(cfg, in_channels or 3, seed, pin_memory, norm, shard)
    return folder_bundle(cfg, in_channels or 3, seed, pin_memory, norm, shard)


def test_split_size(cfg: DataConfig) -> int:
    """How many images `evaluate --split test` will read: Fashion-MNIST's 10,000 or the folder's test/ (0 if none)."""
    if cfg.dataset == "fashion-mnist":
        return FASHION_MNIST_TEST_IMAGES
    if cfg.dataset == "shards":
        try:
            return int(read_index(cfg.root).splits.get("test", {}).get("samples", 0))
        except DataError:
            return 0
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
    if cfg.dataset == "shards":
        return shard_eval_split(cfg, prep, split, seed)
    root = Path(cfg.root)
    if (root / split).is_dir():
        return folder_split(cfg, prep, split)
    if split == "test":
        raise DataError(f"{root} has no test/ folder; evaluate --split val instead")
    train_dir = root / "train" if (root / "train").is_dir() else root
    dataset = image_folder(train_dir, prep.eval_transform(), prep.in_channels)
    train_idx, val_idx = split_indices(len(dataset), cfg.val_fraction, seed)
    subset = Subset(dataset, (val_idx if split == "val" else train_idx).tolist())
    return LoaderBatches(subset, cfg.eval_batch_size, shuffle=False, seed=0, workers=cfg.workers, pin_memory=False)
