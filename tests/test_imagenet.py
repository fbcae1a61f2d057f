"""The ImageNet-scale workflow on small data: crop geometry, multi-crop ensembles, WNID names, inspection."""

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import SHARED_DATA
from googlenet.cli import main
from googlenet.data import class_names_for, read_synset_mapping
from googlenet.data.crops import crop_plan, render, resized_size
from googlenet.data.inspect import inspect_folder
from googlenet.evaluation.multicrop import ensemble_table
from googlenet.model import create_model
from helpers import COLOURS, make_checkpoint, make_folder


def assert_plan_is_valid(width: int, height: int, crops: int, size: int = 224) -> None:
    plan = crop_plan(width, height, crops, size)
    assert len(plan) == crops
    for crop in plan:
        w, h = resized_size(width, height, crop.scale)
        left, top, cw, ch = crop.box
        assert left >= 0 and top >= 0 and left + cw <= w and top + ch <= h, (crop, w, h)
        assert cw == ch  # squares only
    if crops > 1:  # every view also mirrored
        unmirrored = sorted((c.scale, c.box) for c in plan if not c.mirrored)
        assert unmirrored == sorted((c.scale, c.box) for c in plan if c.mirrored)


@pytest.mark.parametrize(("width", "height"), [(333, 211), (181, 403), (257, 257), (1001, 999), (224, 3000)])
def test_144_crops_landscape_portrait_square(width: int, height: int) -> None:
    assert_plan_is_valid(width, height, 144)
    plan = crop_plan(width, height, 144)
    assert sorted({c.scale for c in plan}) == [256, 288, 320, 352]
    # Per scale: three squares of the scale's side (left/centre/right or top/centre/bottom) ...
    squares = {c.box for c in plan if c.box[2] == c.scale and not c.mirrored and c.scale == 288}
    w, h = resized_size(width, height, 288)
    offsets = sorted(b[0] if w >= h else b[1] for b in squares)
    assert offsets == sorted({0, (max(w, h) - 288) // 2, max(w, h) - 288})
    # ... each giving 4 corners + centre at 224 plus the whole square: 6 views, each mirrored.
    assert sum(1 for c in plan if c.box[2] == 224) == 4 * 3 * 5 * 2


@pytest.mark.parametrize("crops", [1, 10])
def test_1_and_10_crops(crops: int) -> None:
    assert_plan_is_valid(500, 375, crops)
    plan = crop_plan(500, 375, crops)
    w, h = resized_size(500, 375, 256)
    assert (w, h) == (341, 256)
    assert centre_box(plan) == ((341 - 224) // 2, (256 - 224) // 2, 224, 224)


def centre_box(plan: list) -> tuple[int, int, int, int]:
    return [c.box for c in plan if not c.mirrored][-1]


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 2500), height=st.integers(1, 2500), crops=st.sampled_from([1, 10, 144]))
def test_crop_geometry_for_any_image_size(width: int, height: int, crops: int) -> None:
    assert_plan_is_valid(width, height, crops)


def test_render_makes_mirrored_views(photos: list[Path]) -> None:
    from torchvision.transforms.functional import to_tensor

    photo = photos[0]
    image = to_tensor(Image.open(photo).convert("RGB"))
    plan = crop_plan(image.shape[2], image.shape[1], 144)
    views = render(image, plan, 224)
    assert views.shape == (144, 3, 224, 224)
    first = plan.index(next(c for c in plan if not c.mirrored))
    twin = next(
        i for i, c in enumerate(plan) if c.mirrored and (c.scale, c.box) == (plan[first].scale, plan[first].box)
    )
    assert torch.equal(views[first].flip(2), views[twin])


@pytest.fixture(scope="module")
def colour_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("colours")
    root = make_folder(tmp / "images")
    torch.manual_seed(0)
    model = create_model("small", num_classes=3, in_channels=3, aux=False)
    checkpoint = make_checkpoint(
        tmp / "c.pt",
        model={"name": "small", "num_classes": 3, "in_channels": 3},
        state_dict=model.state_dict(),
        class_names=sorted(COLOURS),
        preprocessing={"image_size": 32, "resize": 37, "in_channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3},
    )
    return checkpoint, root


def test_ensemble_of_two_copies_equals_the_model(colour_checkpoint: tuple[Path, Path]) -> None:
    checkpoint, root = colour_checkpoint
    rows, images = ensemble_table([checkpoint, checkpoint], root / "val", [1, 144])
    assert images == 9
    table = {(r.models, r.crops): (r.top1_error, r.top5_error) for r in rows}
    assert table[(1, 1)] == table[(2, 1)] and table[(1, 144)] == table[(2, 144)]
    assert rows[0].paper_top5_error == 10.07


def test_multicrop_cli(colour_checkpoint: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint, root = colour_checkpoint
    code = main(
        ["evaluate", str(checkpoint), str(checkpoint), "--crops", "10", "--data-root", str(root), "--split", "val"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "Table 3 form, 9 images" in out and "paper top-5" in out


# The first lines of ImageNet's LOC_synset_mapping.txt, as the 1,000-line table in ../shared/data has them.
SYNSET_LINES = "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"


def test_wnid_names_from_the_synset_mapping(tmp_path: Path) -> None:
    table = SHARED_DATA / "imagenet_synsets.txt"
    if table.is_file():  # the real table: all 1,000 classes
        mapping = read_synset_mapping(table)
        assert len(mapping) == 1000 and mapping["n02097047"] == "miniature schnauzer"
        assert table.read_text().startswith(SYNSET_LINES)
    (tmp_path / "LOC_synset_mapping.txt").write_text(SYNSET_LINES)
    assert read_synset_mapping(tmp_path / "LOC_synset_mapping.txt") == {"n01440764": "tench", "n01443537": "goldfish"}
    assert class_names_for(tmp_path, ["n01440764", "n01443537", "my_class"]) == ["tench", "goldfish", "my_class"]
    assert class_names_for(tmp_path / "elsewhere", ["n01440764"]) == ["n01440764"]  # no mapping: folder names


def test_inspect_reports_counts_sizes_and_corrupt_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_folder(tmp_path / "images")
    (root / "train" / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.new("L", (20, 10)).save(root / "train" / "blue" / "gray.png")
    grid = tmp_path / "grid.png"
    assert main(["data", "inspect", str(root / "train"), "--grid", str(grid), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "25 readable images in 3 classes" in out
    assert "unreadable files: 1" in out and "broken.jpg" in out
    assert "imbalance: largest/smallest class 1.12" in out
    assert "modes: RGB 24, L 1" in out
    assert grid.stat().st_size > 1000
    result = inspect_folder(root / "train")
    assert result.counts == {"blue": 9, "green": 8, "red": 8}
