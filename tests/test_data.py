"""Real Fashion-MNIST through torchvision's reader, and the in-memory batcher."""

import gzip
from pathlib import Path

import pytest
import torch

from googlenet.config import DataConfig
from googlenet.data import (
    DataError,
    Preprocessing,
    TensorBatches,
    build_data,
    ensure_fashion_mnist,
    erasing_masks,
    eval_split,
    load_fashion_mnist,
    split_indices,
    train_transform,
)


def test_real_fashion_mnist(fashion_root: Path) -> None:
    images, labels, classes = load_fashion_mnist(fashion_root, train=True, allow_download=False)
    assert images.shape == (60_000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (60_000,) and set(labels.tolist()) == set(range(10))
    assert classes[0] == "T-shirt/top" and classes[9] == "Ankle boot"
    test_images, _, _ = load_fashion_mnist(fashion_root, train=False, allow_download=False)
    assert test_images.shape == (10_000, 28, 28)


def test_split_is_seeded_and_disjoint() -> None:
    train, val = split_indices(1000, 0.1, seed=3)
    assert len(val) == 100 and len(train) == 900
    assert not set(train.tolist()) & set(val.tolist())
    again, _ = split_indices(1000, 0.1, seed=3)
    other, _ = split_indices(1000, 0.1, seed=4)
    assert torch.equal(train, again) and not torch.equal(train, other)


def test_bundle_and_eval_splits(fashion_root: Path) -> None:
    cfg = DataConfig(root=str(fashion_root), val_fraction=0.1, batch_size=64)
    bundle = build_data(cfg, in_channels=0, seed=0)
    assert bundle.train.num_samples == 54_000 and bundle.val is not None and bundle.val.num_samples == 6_000
    assert bundle.preprocessing.in_channels == 1 and 0.2 < bundle.preprocessing.mean[0] < 0.4
    x, y = next(iter(bundle.train.epoch(0)))
    assert x.shape == (64, 1, 28, 28) and y.shape == (64,)
    assert abs(float(x.mean())) < 0.5  # normalised
    assert eval_split(cfg, bundle.preprocessing, "test", seed=0).num_samples == 10_000
    assert eval_split(cfg, bundle.preprocessing, "val", seed=0).num_samples == 6_000


def make_batches(augment: str = "flip-crop", n: int = 100, erase: float = 0.0, flip: str = "random") -> TensorBatches:
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    prep = Preprocessing(image_size=28, resize=28, in_channels=1, mean=[0.5], std=[0.25])
    return TensorBatches(
        images, torch.arange(n), prep, 16, shuffle=True, augment=augment, crop_padding=2, erase=erase, flip=flip, seed=7
    )


def mirrored(batches: TensorBatches, epoch: int) -> dict[int, bool]:
    """Which images (by label, which is their index) ``epoch`` shows mirrored."""
    plain = make_batches("none")
    originals = {int(y): x for xs, ys in plain.epoch(0) for x, y in zip(xs, ys, strict=True)}
    seen = {int(y): x for xs, ys in batches.epoch(epoch) for x, y in zip(xs, ys, strict=True)}
    assert all(torch.equal(seen[i], originals[i]) or torch.equal(seen[i], originals[i].flip(2)) for i in seen)
    return {i: not torch.equal(seen[i], originals[i]) for i in seen}


def test_alternating_flips_show_each_image_both_ways_in_every_pair_of_epochs() -> None:
    batches = make_batches("flip", flip="alternate")
    sides = [mirrored(batches, epoch) for epoch in range(4)]
    assert 30 < sum(sides[0].values()) < 70  # the first epoch's sides are drawn: about half mirrored
    assert all(sides[1][i] != sides[0][i] for i in range(100))  # the next epoch shows the other side
    assert sides[2] == sides[0] and sides[3] == sides[1]
    random_sides = [mirrored(make_batches("flip"), epoch) for epoch in range(2)]
    assert any(random_sides[1][i] == random_sides[0][i] for i in range(100))  # a coin each time


def test_batches_are_reproducible_and_resume_mid_epoch() -> None:
    batches = make_batches()
    first = list(batches.epoch(1))
    assert len(first) == len(batches) == 7
    again = list(batches.epoch(1))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    resumed = list(batches.epoch(1, start_batch=3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first[3:], resumed, strict=True))
    other = list(batches.epoch(2))
    assert not torch.equal(first[0][1], other[0][1])  # a new order each epoch
    assert sorted(torch.cat([y for _, y in first]).tolist()) == list(range(100))  # every image once


def test_augmentation_flips_and_shifts_but_keeps_content() -> None:
    plain = make_batches("none")
    augmented = make_batches("flip-crop")
    x0, y0 = next(plain.epoch(0))
    x1, y1 = next(augmented.epoch(0))
    assert torch.equal(y0, y1) and x0.shape == x1.shape == (16, 1, 28, 28)
    assert not torch.equal(x0, x1)
    # A 2-pixel shift keeps the centre: every augmented centre patch appears in the (possibly flipped) original.
    for a, b in zip(x0, x1, strict=True):
        centre = b[0, 4:24, 4:24]
        found = any(
            torch.equal(centre, img[0, 4 + dy : 24 + dy, 4 + dx : 24 + dx])
            for img in (a, a.flip(2))
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        )
        assert found


def test_erasing_masks_are_one_rectangle_of_the_papers_size() -> None:
    g = torch.Generator().manual_seed(0)
    masks = erasing_masks(2000, 28, 28, 0.5, g)
    assert masks.shape == (2000, 1, 28, 28) and masks.dtype == torch.bool
    erased = masks.flatten(1).any(1)
    assert 0.45 < float(erased.float().mean()) < 0.55  # the chance
    areas = masks.flatten(1).sum(1)[erased].float() / (28 * 28)
    assert float(areas.min()) >= 0.015 and float(areas.max()) <= 0.34  # 2%-33%, give or take rounding
    for mask in masks[erased][:50, 0]:  # one filled rectangle: its bounding box is all set
        rows, cols = mask.nonzero(as_tuple=True)
        box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert bool(box.all()) and int(box.sum()) == int(mask.sum())
    again = erasing_masks(2000, 28, 28, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)
    assert not erasing_masks(64, 28, 28, 0.0, g).any()


def test_erasing_keeps_the_flips_and_sets_the_mean_pixel() -> None:
    plain = list(make_batches("flip-crop").epoch(0))
    erased = list(make_batches("flip-crop", erase=1.0).epoch(0))
    erased_again = list(make_batches("flip-crop", erase=1.0).epoch(0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(erased, erased_again, strict=True))  # reproducible
    for (x0, y0), (x1, y1) in zip(plain, erased, strict=True):
        assert torch.equal(y0, y1)
        changed = x0 != x1
        assert bool(changed.flatten(1).any(1).all())  # every image lost a rectangle
        assert bool((x1[changed] == 0).all())  # normalised, the mean pixel is 0
    # Erasing alone, with no flips or shifts, leaves the rest of each image as it was.
    x_plain, _ = next(make_batches("none").epoch(0))
    x_erased, _ = next(make_batches("none", erase=1.0).epoch(0))
    kept = x_plain == x_erased
    assert bool((kept | (x_erased == 0)).all()) and not bool(kept.all())


DEVICES = [
    "meta",  # shapes only, but a tensor left on the CPU next to one on the device is an error there too
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


@pytest.mark.parametrize("device", DEVICES)
def test_batches_kept_on_a_device_are_cut_and_augmented_there(device: str) -> None:
    on_cpu = list(make_batches("flip-crop", erase=0.5).epoch(2, start_batch=1))
    moved = make_batches("flip-crop", erase=0.5).to(torch.device(device))
    on_device = list(moved.epoch(2, start_batch=1))
    assert len(on_device) == len(on_cpu) == 6
    for (x, y), (x_cpu, y_cpu) in zip(on_device, on_cpu, strict=True):
        assert x.device.type == y.device.type == device and x.shape == x_cpu.shape and y.shape == y_cpu.shape
        if device != "meta":  # the same draws from the CPU's generator: the same batches
            assert torch.equal(y.cpu(), y_cpu)
            torch.testing.assert_close(x.cpu(), x_cpu)


def test_folder_training_transform_erases_after_normalising() -> None:
    prep = Preprocessing(image_size=32, resize=36, in_channels=3, mean=[0.5] * 3, std=[0.25] * 3)
    steps = train_transform(DataConfig(dataset="folder", augment="flip", erase=0.5), prep).transforms
    assert type(steps[-1]).__name__ == "RandomErasing" and steps[-1].p == 0.5
    assert type(steps[-2]).__name__ == "Normalize"
    plain = train_transform(DataConfig(dataset="folder", augment="flip"), prep).transforms
    assert not any(type(t).__name__ == "RandomErasing" for t in plain)


def test_resize_to_a_larger_input() -> None:
    images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    prep = Preprocessing(image_size=32, resize=32, in_channels=1, mean=[0.5], std=[0.25])
    x, _ = next(TensorBatches(images, torch.arange(8), prep, 8).epoch(0))
    assert x.shape == (8, 1, 32, 32)


def test_missing_data_gives_advice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("googlenet.data.fashion.DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        ensure_fashion_mnist(tmp_path / "root", allow_download=False)


def test_garbled_idx_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("googlenet.data.fashion.DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        with gzip.open(tmp_path / f"{name}.gz", "wb") as f:
            f.write(b"\x00\x00\x08\x03garbage")
    with pytest.raises(DataError, match="cannot read Fashion-MNIST"):
        load_fashion_mnist(tmp_path, train=True, allow_download=False)
