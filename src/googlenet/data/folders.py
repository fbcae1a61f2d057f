"""ImageNet-style class folders (torchvision ImageFolder) with WordNet synset names."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torchvision
from torch.utils.data import Dataset, Subset
from torchvision import transforms

from googlenet.config import DataConfig
from googlenet.data.augment import read_tensor, tensor_train_transform
from googlenet.data.batches import DataBundle, LoaderBatches, split_indices
from googlenet.data.images import open_image
from googlenet.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from googlenet.errors import DataError


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


def image_folder(
    path: Path, transform: Any, in_channels: int, *, tensors: bool = False
) -> torchvision.datasets.ImageFolder:
    """A class folder through ``transform``: images as PIL images, or (``tensors``) as uint8 tensors decoded
    by libjpeg-turbo for a v2 transform (googlenet.data.augment)."""
    if not path.is_dir():
        raise DataError(f"image folder {path} does not exist")
    read = read_tensor if tensors else open_image
    try:
        return torchvision.datasets.ImageFolder(
            str(path), transform=transform, loader=functools.partial(read, in_channels=in_channels)
        )
    except (FileNotFoundError, OSError) as error:
        raise DataError(f"{path} is not a usable image folder (one sub-folder of images per class): {error}") from None


def folder_preprocessing(
    cfg: DataConfig, in_channels: int, norm: tuple[list[float], list[float]] | None
) -> Preprocessing:
    """Photographs' preprocessing: the shorter side to 256/224 of the crop, ImageNet's mean and std (or
    ``norm``)."""
    mean, std = norm or ((IMAGENET_MEAN, IMAGENET_STD) if in_channels == 3 else ((0.5,), (0.5,)))
    return Preprocessing(
        image_size=cfg.image_size,
        resize=round(cfg.image_size * 256 / 224),
        in_channels=in_channels,
        mean=list(mean),
        std=list(std),
    )


def folder_bundle(
    cfg: DataConfig,
    in_channels: int,
    seed: int,
    pin_memory: bool,
    norm: tuple[list[float], list[float]] | None,
    shard: tuple[int, int] = (0, 1),
) -> DataBundle:
    root = Path(cfg.root)
    train_dir = root / "train" if (root / "train").is_dir() else root
    prep = folder_preprocessing(cfg, in_channels, norm)
    # Training decodes and augments uint8 tensors: 1.4x the PIL path per core, the same crops' statistics.
    train_set = image_folder(train_dir, tensor_train_transform(cfg, prep), in_channels, tensors=True)
    eval_tf = prep.eval_transform()
    if (root / "val").is_dir():
        train_part: Dataset[Any] = train_set
        val_part: Dataset[Any] | None = image_folder(root / "val", eval_tf, in_channels)
    else:
        train_idx, val_idx = split_indices(len(train_set), cfg.val_fraction, seed)
        train_part = Subset(train_set, train_idx.tolist())
        val_part = Subset(image_folder(train_dir, eval_tf, in_channels), val_idx.tolist()) if len(val_idx) else None
    if cfg.train_subset:
        train_part = Subset(train_part, list(range(min(cfg.train_subset, len(train_part)))))  # type: ignore[arg-type]
    common = {"seed": seed, "workers": cfg.workers, "pin_memory": pin_memory}
    train = LoaderBatches(train_part, cfg.batch_size, shuffle=True, shard=shard, **common)  # type: ignore[arg-type]
    val = LoaderBatches(val_part, cfg.eval_batch_size, shuffle=False, **common) if val_part else None  # type: ignore[arg-type]
    return DataBundle(train, val, class_names_for(root, list(train_set.classes)), prep)


def folder_split(cfg: DataConfig, prep: Preprocessing, split: str) -> LoaderBatches:
    """An evaluation split (test, val or train) of an image folder, with the checkpoint's preprocessing."""
    path = Path(cfg.root) / split
    dataset = image_folder(path, prep.eval_transform(), prep.in_channels)
    return LoaderBatches(dataset, cfg.eval_batch_size, shuffle=False, seed=0, workers=cfg.workers, pin_memory=False)
