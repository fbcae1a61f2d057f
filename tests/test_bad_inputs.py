"""The bad-input corpus: every case goes through the CLI and must give one line on stderr naming the
problem, exit code 2, no traceback, and nothing half-written."""

import gzip
import io
import os
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from googlenet.cli import main
from googlenet.config import Config
from googlenet.model import create_model
from helpers import make_checkpoint

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fashion-mnist.toml"
SENTINEL_NAME = "PWNED"


def png_with_declared_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file whose header declares a huge image: a decompression bomb's calling card."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)))
    return path


class Payload:
    """Unpickling this runs code: it would create a sentinel file."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return (os.system, (f"touch {self.target}",))


def idx_root(tmp: Path, damage: Callable[[bytes], bytes]) -> Path:
    """A data root with four Fashion-MNIST-named IDX .gz files whose train images are damaged."""
    root = tmp / "idx"
    root.mkdir()
    images = struct.pack(">IIII", 0x803, 4, 28, 28) + bytes(4 * 28 * 28)
    labels = struct.pack(">II", 0x801, 4) + bytes(4)
    files = {
        "train-images-idx3-ubyte": damage(images),
        "train-labels-idx1-ubyte": labels,
        "t10k-images-idx3-ubyte": images,
        "t10k-labels-idx1-ubyte": labels,
    }
    for name, data in files.items():
        with gzip.open(root / f"{name}.gz", "wb") as f:
            f.write(data)
    return root


def train_argv(tmp: Path, *sets: str, config: Path = CONFIG) -> list[str]:
    return ["train", "--config", str(config), "--out", str(tmp / "run"), *(a for s in sets for a in ("--set", s))]


# Each case: (setup(tmp, ckpt) -> argv, message regex). Exit code 2 for all: they are the user's errors.
CASES: dict[str, tuple[Callable[[Path, Path], list[str]], str]] = {
    "predict-missing-path": (lambda t, c: ["predict", str(c), str(t / "nope.png")], r"nope\.png does not exist"),
    "predict-empty-folder": (lambda t, c: ["predict", str(c), str(_mkdir(t / "empty"))], r"holds no images"),
    "zero-byte-image": (
        lambda t, c: ["predict", str(c), str(_write(t / "zero.png", b""))],
        r"image .*zero\.png is not an image in a format",
    ),
    "truncated-jpeg": (
        lambda t, c: ["predict", str(c), str(_truncated_jpeg(t))],
        r"image .*cut\.jpg could not be decoded",
    ),
    "corrupt-png": (
        lambda t, c: ["predict", str(c), str(_write(t / "bad.png", b"\x89PNG\r\n\x1a\n" + os.urandom(200)))],
        r"image .*bad\.png (is not an image|could not be decoded)",
    ),
    "text-named-jpg": (
        lambda t, c: ["predict", str(c), str(_write(t / "notes.jpg", b"hello\n"))],
        r"image .*notes\.jpg is not an image in a format",
    ),
    "decompression-bomb": (
        lambda t, c: ["predict", str(c), str(png_with_declared_size(t / "bomb.png", 60_000, 60_000))],
        r"image .*bomb\.png was refused as a decompression bomb",
    ),
    "decompression-bomb-just-over": (
        lambda t, c: ["predict", str(c), str(png_with_declared_size(t / "bomb2.png", 10_000, 10_000))],
        r"image .*bomb2\.png was refused as a decompression bomb",
    ),
    "checkpoint-missing": (lambda t, c: ["evaluate", str(t / "none.pt")], r"none\.pt does not exist"),
    "checkpoint-text-file": (
        lambda t, c: ["predict", str(_write(t / "x.pt", b"not a checkpoint")), str(t)],
        r"not a readable checkpoint",
    ),
    "checkpoint-foreign-state-dict": (
        lambda t, c: [
            "predict",
            str(_torch_save(t / "sd.pt", create_model("small", in_channels=1).state_dict())),
            str(t),
        ],
        r"not a googlenet checkpoint",
    ),
    "checkpoint-future-version": (
        lambda t, c: ["predict", str(_future(t)), str(t)],
        r"format 99; this googlenet reads up to 2: upgrade",
    ),
    "checkpoint-other-variant": (
        lambda t, c: [
            "predict",
            str(make_checkpoint(t / "v.pt", model={"name": "paper", "num_classes": 10, "in_channels": 1})),
            str(t),
        ],
        r"do not fit the paper model",
    ),
    "checkpoint-other-class-count": (
        lambda t, c: [
            "predict",
            str(make_checkpoint(t / "k.pt", model={"name": "small", "num_classes": 7, "in_channels": 1})),
            str(t),
        ],
        r"do not fit the small model",
    ),
    "checkpoint-class-names-mismatch": (
        lambda t, c: ["predict", str(make_checkpoint(t / "n.pt", class_names=["a", "b"])), str(t)],
        r"2 class names for 10 outputs",
    ),
    "checkpoint-old-seeding-resume": (
        lambda t, c: ["train", "--resume", "--out", str(_format_one(t / "run" / "checkpoints" / "last.pt").parents[1])],
        r"older googlenet that drew the train/validation split .*; --resume needs",
    ),
    "checkpoint-old-seeding-val-split": (
        lambda t, c: ["evaluate", str(_format_one(t / "old.pt")), "--split", "val", "--backend", "torch"],
        r"older googlenet .*; --split val needs a checkpoint written by this version",
    ),
    "checkpoint-incomplete": (
        lambda t, c: ["predict", str(_incomplete(t)), str(t)],
        r"lacks 'preprocessing'",
    ),
    "config-missing-file": (
        lambda t, c: train_argv(t, config=t / "none.toml"),
        r"config file .*none\.toml does not exist",
    ),
    "config-bad-toml": (
        lambda t, c: train_argv(t, config=_write_text(t / "bad.toml", "[optim\nlr=")),
        r"not valid TOML",
    ),
    "config-unknown-key": (
        lambda t, c: train_argv(t, "optim.learning_rate=0.1"),
        r"unknown config key 'optim.learning_rate'",
    ),
    "config-unknown-section": (lambda t, c: train_argv(t, "solver.lr=0.1"), r"unknown config section"),
    "config-zero-batch": (lambda t, c: train_argv(t, "data.batch_size=0"), r"data.batch_size must be >= 1"),
    "config-negative-batch": (lambda t, c: train_argv(t, "data.batch_size=-8"), r"data.batch_size must be >= 1"),
    "config-zero-epochs": (lambda t, c: train_argv(t, "train.epochs=0"), r"train.epochs must be >= 1"),
    "config-negative-epochs": (lambda t, c: train_argv(t, "train.epochs=-2"), r"train.epochs must be >= 1"),
    "config-non-numeric-lr": (lambda t, c: train_argv(t, "optim.lr=fast"), r"optim.lr must be a number, got 'fast'"),
    "config-image-too-small": (
        lambda t, c: train_argv(t, "model.name=bn", "data.image_size=28"),
        r"below the bn variant's minimum of 47",
    ),
    "output-not-writable": (
        lambda t, c: ["train", "--config", str(CONFIG), "--out", str(_write(t / "file", b"x") / "run")],
        r"cannot write to output folder",
    ),
    "export-destination-not-writable": (
        lambda t, c: ["export", str(c), "--format", "safetensors", "--out", str(_write(t / "file", b"x") / "m.st")],
        r"cannot write to output folder .*file",
    ),
    "evaluate-destination-not-writable": (
        lambda t, c: ["evaluate", str(c), "--backend", "torch", "--out", str(_write(t / "file", b"x") / "eval")],
        r"cannot write to output folder .*file/eval",
    ),
    "inspect-grid-not-writable": (
        lambda t, c: ["data", "inspect", str(_image_folder(t)), "--grid", str(_write(t / "file", b"x") / "g.png")],
        r"cannot write to output folder .*file",
    ),
    "benchmark-json-not-writable": (
        lambda t, c: ["benchmark", "--json", str(_write(t / "file", b"x") / "r.json")],
        r"cannot write to output folder .*file",
    ),
    "resume-without-run": (lambda t, c: ["train", "--resume", "--out", str(t / "fresh")], r"last\.pt does not exist"),
    "idx-truncated": (
        lambda t, c: train_argv(t, f'data.root="{idx_root(t, lambda b: b[:500])}"'),
        r"cannot read Fashion-MNIST",
    ),
    "idx-garbled": (
        lambda t, c: train_argv(t, f'data.root="{idx_root(t, lambda b: b[:8] + os.urandom(8) + b[16:])}"'),
        r"cannot read Fashion-MNIST",
    ),
    "idx-wrong-magic": (
        lambda t, c: train_argv(t, f'data.root="{idx_root(t, lambda b: struct.pack(">I", 0x1234) + b[4:])}"'),
        r"cannot read Fashion-MNIST",
    ),
    "folder-empty": (
        lambda t, c: train_argv(
            t, "data.dataset=folder", "data.flip=random", f'data.root="{_mkdir(t / "imgs" / "train" / "cat")}"'
        ),
        r"not a usable image folder",
    ),
    "folder-missing": (
        lambda t, c: train_argv(t, "data.dataset=folder", "data.flip=random", f'data.root="{t / "no-such-folder"}"'),
        r"does not exist",
    ),
    "evaluate-folder-without-test": (
        lambda t, c: ["evaluate", str(_folder_checkpoint(t)), "--split", "test"],
        r"has no test/ folder",
    ),
    "report-not-a-run": (lambda t, c: ["report", str(_mkdir(t / "norun"))], r"has no metrics\.jsonl"),
    "predict-top-k-zero": (lambda t, c: ["predict", str(c), str(t), "--top-k", "0"], r"at least 1"),
    "unknown-model-summary": (lambda t, c: ["summary", "--model", "alexnet"], r"unknown model 'alexnet'"),
    "predict-onnxruntime-bf16": (
        lambda t, c: ["predict", str(c), str(t), "--backend", "onnxruntime", "--precision", "bf16"],
        r"onnxruntime cannot run bf16; use --backend torch or openvino",
    ),
    "predict-int8": (lambda t, c: ["predict", str(c), str(t), "--precision", "int8"], r"invalid choice: 'int8'"),
    "evaluate-torch-int8": (
        lambda t, c: ["evaluate", str(c), "--backend", "torch", "--precision", "int8"],
        r"torch cannot run int8; use --backend openvino",
    ),
    "benchmark-unknown-section": (
        lambda t, c: ["benchmark", "--sections", "speed"],
        r"--sections must name some of inference, training, fashion, data; got 'speed'",
    ),
    "benchmark-size-below-minimum": (lambda t, c: ["benchmark", "--size", "10"], r"below .* 15 px"),
}


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _image_folder(tmp: Path) -> Path:
    root = tmp / "pictures"
    for name in ("cat", "dog"):
        Image.new("RGB", (40, 30), (200, 100, 50)).save(_mkdir(root / name) / "a.png")
    return root


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _torch_save(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def _truncated_jpeg(tmp: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return _write(tmp / "cut.jpg", buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _future(tmp: Path) -> Path:
    path = make_checkpoint(tmp / "future.pt")
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)
    return path


def _format_one(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    make_checkpoint(path)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 1
    torch.save(payload, path)
    return path


def _incomplete(tmp: Path) -> Path:
    path = make_checkpoint(tmp / "incomplete.pt")
    payload = torch.load(path, weights_only=True)
    del payload["preprocessing"]
    torch.save(payload, path)
    return path


def _folder_checkpoint(tmp: Path) -> Path:
    root = _mkdir(tmp / "images")
    _mkdir(root / "train" / "a")
    config = Config()
    config.data.dataset, config.data.root = "folder", str(root)
    return make_checkpoint(tmp / "folder.pt", config=config.to_dict())


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    setup, message = CASES[case]
    argv = setup(tmp_path, make_checkpoint(tmp_path / "good.pt"))
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err.count("\n") == 1 and captured.err.startswith("googlenet: error: "), captured.err
    assert "Traceback" not in captured.err
    import re

    assert re.search(message, captured.err), captured.err
    assert not list(tmp_path.rglob("*.tmp")), "a temporary file was left behind"


def test_pickle_with_code_is_refused_without_running_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sentinel = tmp_path / SENTINEL_NAME
    evil = tmp_path / "evil.pt"
    torch.save({"format": "googlenet-checkpoint", "format_version": 1, "x": Payload(str(sentinel))}, evil)
    assert b"system" in evil.read_bytes() or b"posix" in evil.read_bytes()  # the payload really is in there
    code = main(["predict", str(evil), str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "was refused" in err and err.count("\n") == 1
    assert not sentinel.exists(), "unpickling ran the payload"
    # Plain pickle (not a zip) is refused the same way.
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(Payload(str(sentinel))))
    assert main(["evaluate", str(raw)]) == 2
    assert not sentinel.exists()


# Unusual but valid images: converted to the model's channels, never refused.
CONVERTED_MODES = {
    "16-bit": lambda: Image.fromarray(np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50),
    "cmyk": lambda: Image.new("CMYK", (40, 30), (10, 200, 30, 0)),
    "rgba": lambda: Image.new("RGBA", (40, 30), (200, 10, 10, 128)),
    "palette": lambda: Image.new("RGB", (40, 30), (0, 120, 250)).convert("P"),
    "grayscale": lambda: Image.new("L", (40, 30), 77),
    "1-bit": lambda: Image.new("1", (40, 30), 1),
}


@pytest.mark.parametrize("mode", sorted(CONVERTED_MODES))
@pytest.mark.parametrize("channels", [1, 3])
def test_unusual_images_are_converted(
    mode: str, channels: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = CONVERTED_MODES[mode]()
    path = tmp_path / ("img.jpg" if mode == "cmyk" else "img.png")
    image.save(path)
    checkpoint = make_checkpoint(
        tmp_path / "c.pt",
        model={"name": "small", "num_classes": 10, "in_channels": channels},
        state_dict=create_model("small", num_classes=10, in_channels=channels, aux=False).state_dict(),
        preprocessing={
            "image_size": 28,
            "resize": 28,
            "in_channels": channels,
            "mean": [0.5] * channels,
            "std": [0.25] * channels,
        },
    )
    assert main(["predict", str(checkpoint), str(path), "--format", "csv"]) == 0
    assert "class" in capsys.readouterr().out


def test_16_bit_images_keep_their_contrast(tmp_path: Path) -> None:
    from googlenet.data import open_image

    path = tmp_path / "deep.png"
    CONVERTED_MODES["16-bit"]().save(path)
    pixels = np.asarray(open_image(path, 1))
    assert pixels.min() == 0 and pixels.max() == 255  # scaled, not clipped to white


def test_grayscale_photographs_convert_to_rgb(photos: list[Path]) -> None:
    from googlenet.data import open_image

    assert any(Image.open(path).mode == "L" for path in photos)  # the sample holds grayscale JPEGs
    for path in photos:
        image = open_image(path, 3)
        assert image.mode == "RGB" and min(image.size) > 0
