"""`googlenet data pack` and training from shards: identical shards on every run, resuming an interrupted pack,
clear refusals, each process reading its own shards, and a run killed with -9 resuming bit for bit."""

import json
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from googlenet.cli import main
from googlenet.config import load_config
from googlenet.data.pack import PackSettings, pack_folder
from googlenet.data.shards import ShardDataset, ShardSampler, read_index
from googlenet.run.checkpoint import load_checkpoint
from googlenet.training.loop import resume, train
from test_reliability import assert_same_weights, kill_9_after_step

SMALL_SHARDS = PackSettings(max_side=256, quality=90, shard_bytes=2**16)


@pytest.fixture(scope="module")
def photo_folder(photos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ and val/ of two classes made from 8 of the photographs, each at four sizes (32 training images
    wherever the tests run), plus a file that is not an image and one that claims to be a JPEG but is not."""
    root = tmp_path_factory.mktemp("photos")
    for split, scales in (("train", (1.0, 0.8, 0.6, 0.45)), ("val", (0.7,))):
        for name, group in (("cats", photos[:4]), ("dogs", photos[4:8])):
            folder = root / split / name
            folder.mkdir(parents=True)
            for photo in group[: len(group) if split == "train" else 1]:
                with Image.open(photo) as image:
                    picture = image.convert("RGB")
                for scale in scales:
                    size = (round(picture.width * scale), round(picture.height * scale))
                    picture.resize(size).save(folder / f"{photo.stem}-{scale}.jpg", quality=90)
    (root / "train" / "cats" / "notes.txt").write_text("not an image")
    (root / "train" / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    return root


@pytest.fixture(scope="module")
def packed(photo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    result = pack_folder(photo_folder, out, SMALL_SHARDS, workers=2, progress=False)
    assert result.shards["train"] > 2  # several shards, for the tests below
    return out


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "pack.json"}


def test_packing_twice_gives_identical_shards_and_names_what_it_skipped(
    packed: Path, photo_folder: Path, tmp_path: Path
) -> None:
    again = pack_folder(photo_folder, tmp_path / "again", SMALL_SHARDS, workers=1, progress=False)
    assert files_of(tmp_path / "again") == files_of(packed)  # one process or two, the same bytes
    assert again.samples == {"train": 32, "val": 2}
    index = json.loads((packed / "index.json").read_text())
    assert [c["folder"] for c in index["classes"]] == ["cats", "dogs"]
    assert index["splits"]["train"]["per_class"] == [16, 16]
    assert {s["path"] for s in index["skipped"]} == {"train/cats/notes.txt", "train/dogs/broken.jpg"}
    # The shards are WebDataset tar files: KEY.jpg and KEY.cls, in order, matching the index.
    with tarfile.open(packed / "train-000000.tar") as tar:
        names = tar.getnames()
        shard_index = json.loads((packed / "train-000000.json").read_text())["samples"]
        assert names[:2] == [f"{shard_index[0][0]}.jpg", f"{shard_index[0][0]}.cls"]
        member = tar.extractfile(names[1])
        assert member is not None and int(member.read()) == shard_index[0][1]
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
        member = tar.extractfile(names[0])  # the index's offset finds the JPEG's own bytes
        assert member is not None and member.read() == ShardDataset(read_index(packed).split("train"), None, 3).read(0)


def test_the_webdataset_library_streams_the_shards(packed: Path) -> None:
    webdataset = pytest.importorskip("webdataset")
    split = read_index(packed).split("train")
    urls = [str(path) for path in split.files]
    samples = list(webdataset.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("jpg", "cls"))
    assert [int(label) for _, label in samples] == split.label.tolist()
    assert all(max(image.size) <= 256 for image, _ in samples)


def test_an_interrupted_pack_resumes_after_its_last_complete_shard(
    packed: Path, photo_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "interrupted"
    shutil.copytree(packed, out)
    shards = read_index(packed).splits["train"]["shards"]
    for shard in shards[2:]:  # as if killed while writing the third train shard
        (out / shard["file"]).unlink()
        (out / shard["file"].replace(".tar", ".json")).unlink()
    for split in ("val",):
        for path in out.glob(f"{split}-*"):
            path.unlink()
    (out / "index.json").unlink()
    (out / shards[2]["file"].replace(".tar", ".tar.partial")).write_bytes(b"half a shard")
    result = pack_folder(photo_folder, out, SMALL_SHARDS, workers=1, progress=False)
    assert result.resumed_shards == 2
    assert files_of(out) == files_of(packed)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("empty", "has no class folders"),
        ("mixed", "mixes files (loose.jpg, ...) with class folders"),
        ("foreign class", "is a class that train/ does not have"),
        ("no images", "holds no JPEG or PNG images"),
    ],
)
def test_bad_folders_get_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str, message: str
) -> None:
    folder = tmp_path / "folder"
    (folder / "train" / "a").mkdir(parents=True)
    if layout == "mixed":
        (folder / "train" / "loose.jpg").write_bytes(b"x")
    if layout == "foreign class":
        (folder / "val" / "b").mkdir(parents=True)
    if layout == "empty":
        shutil.rmtree(folder / "train" / "a")
    if layout == "no images":
        (folder / "train" / "a" / "readme.txt").write_text("x")
    assert main(["data", "pack", str(folder), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_shard_folders_that_cannot_be_read_are_refused(packed: Path, tmp_path: Path) -> None:
    from googlenet.errors import DataError

    with pytest.raises(DataError, match=r"has no index\.json: pack an image folder into it"):
        read_index(tmp_path)
    other = tmp_path / "other"
    shutil.copytree(packed, other)
    index = json.loads((other / "index.json").read_text())
    (other / "index.json").write_text(json.dumps({**index, "version": 99}))
    with pytest.raises(DataError, match="format version 99; this googlenet reads version 1: pack the folder again"):
        read_index(other)
    (other / "index.json").write_text(json.dumps(index))
    (other / "train-000001.tar").unlink()
    with pytest.raises(DataError, match=r"train-000001\.tar is missing"):
        read_index(other).split("train")
    assert main(["data", "pack", str(packed), "--out", str(tmp_path / "x"), "--max-side", "8"]) == 2


def test_each_process_reads_its_own_shards_and_as_many_samples_as_the_others(packed: Path) -> None:
    split = read_index(packed).split("train")
    orders = []
    for rank in (0, 1):
        sampler = ShardSampler(split, shuffle=True, seed=3, shard=(rank, 2))
        sampler.set(epoch=1, start=0)
        orders.append([draw.sample for draw in sampler])
    shards = [{int(split.shard[i]) for i in order} for order in orders]
    assert not shards[0] & shards[1] and len(orders[0]) == len(orders[1]) > 0
    sampler = ShardSampler(split, shuffle=True, seed=3)
    sampler.set(epoch=1, start=0)
    whole = [d.sample for d in sampler]
    assert sorted(whole) == list(range(len(split.label)))  # one process: every sample once
    sampler.set(epoch=1, start=5)
    assert [d.sample for d in sampler] == whole[5:] and {d.epoch for d in sampler} == {1}


RUN = [
    "data.dataset=shards",
    "data.image_size=32",
    "data.batch_size=4",
    "data.workers=2",
    "data.augment=modern",
    "model.name=small",
    "train.epochs=3",
    "train.precision=fp32",
    "train.channels_last=false",
    "train.deterministic=true",
    "train.save_every_steps=1",
    "optim.lr=0.02",
]


@pytest.mark.slow
def test_training_from_shards_survives_kill_9_bit_for_bit(packed: Path, tmp_path: Path) -> None:
    settings = [f'data.root="{packed}"', *RUN]
    reference = tmp_path / "reference"
    result = train(load_config(None, settings), reference, log=lambda _: None)
    assert result.stopped == "finished" and result.step >= 6
    config = tmp_path / "shards.toml"
    config.write_text("# every setting comes from --set\n")
    argv = [sys.executable, "-m", "googlenet.cli", "train", "--config", str(config), "--out", str(tmp_path / "killed")]
    argv.append("--no-progress")
    for item in settings:
        argv += ["--set", item]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "killed" / "checkpoints" / "last.pt"
    kill_9_after_step(process, last, 4)
    assert process.returncode == -signal.SIGKILL
    resumed = resume(tmp_path / "killed", log=lambda _: None)
    assert resumed.stopped == "finished" and resumed.step == result.step
    assert_same_weights(load_checkpoint(reference / "checkpoints" / "last.pt"), load_checkpoint(last))


def test_evaluate_and_a_folder_without_val_hold_out_part_of_train(photo_folder: Path, tmp_path: Path) -> None:
    from googlenet.evaluation.evaluate import evaluate_checkpoint

    train_only = tmp_path / "train-only"
    shutil.copytree(photo_folder / "train", train_only / "train", symlinks=True)
    out = tmp_path / "shards"
    pack_folder(train_only, out, SMALL_SHARDS, workers=1, progress=False)
    settings = [f'data.root="{out}"', *RUN[:-2], "data.val_fraction=0.25", "data.workers=0", "train.epochs=1"]
    run = tmp_path / "run"
    train(load_config(None, settings), run, log=lambda _: None)
    report = evaluate_checkpoint(run / "checkpoints" / "best.pt", split="val", out_dir=tmp_path)
    samples = read_index(out).splits["train"]["samples"]
    assert report.result.num_samples == round(samples * 0.25) and 0 <= report.result.top1 <= 1


def test_the_tensor_path_gives_the_pil_paths_pixels(photos: list[Path]) -> None:
    """Deterministic preprocessing (resize, centre crop) through both paths: the same pixels to within
    resampling differences, so the random crops of one draw what the other's do."""
    from googlenet.config import DataConfig
    from googlenet.data.augment import decode, tensor_train_transform
    from googlenet.data.folders import folder_preprocessing, train_transform
    from googlenet.data.images import open_image

    cfg = DataConfig(image_size=96, augment="none")
    prep = folder_preprocessing(cfg, 3, None)
    pil, tensor = train_transform(cfg, prep), tensor_train_transform(cfg, prep)
    for photo in photos[:6]:  # JPEGs
        from_tensor, from_pil = tensor(decode(photo.read_bytes(), 3)), pil(open_image(photo, 3))
        assert from_tensor.shape == from_pil.shape == (3, 96, 96)
        assert (from_tensor - from_pil).abs().mean() < 0.05 and abs(from_tensor.mean() - from_pil.mean()) < 0.02


def test_the_data_benchmark_times_every_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from googlenet.benchmark_data import format_data_report, run_data_benchmark

    report = run_data_benchmark(tmp_path, files=24, images=16, batch=8, size=64, rounds=1)
    names = [r.name for r in report.rows]
    assert names[0] == "folder, PIL (today)" and report.rows[0].ratio == 1.0 and len(names) == 5
    assert all(r.images_per_second > 0 and 0.3 < r.std < 3 for r in report.rows)
    assert report.model_images_per_second > 0
    text = format_data_report(report, "this machine")
    assert "shards, decode_jpeg + v2" in text and "cores to feed" in text
    assert main(["benchmark", "--sections", "data,bogus"]) == 2
    assert "--sections must name some of" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_trains_from_shards_each_process_on_its_own(packed: Path, tmp_path: Path) -> None:
    from test_distributed import free_port

    config = tmp_path / "shards.toml"
    config.write_text("# every setting comes from --set\n")
    argv = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "googlenet.cli", "train", "--config", str(config), "--out", str(tmp_path / "two"), "--no-progress",
    ]  # fmt: skip
    for item in [f'data.root="{packed}"', *RUN[:-2], "train.epochs=1", "train.threads=1"]:
        argv += ["--set", item]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "2 processes" in result.stdout
    split = read_index(packed).split("train")
    each = [ShardSampler(split, shuffle=True, seed=0, shard=(rank, 2)) for rank in (0, 1)]
    steps = -(-len(list(each[0])) // 2)  # the global batch of 4: 2 images a process
    assert len(list(each[0])) == len(list(each[1]))
    assert load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")["position"]["step"] == steps
