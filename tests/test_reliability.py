"""Training survives kill -9 and SIGTERM bit for bit; failed writes leave the previous file intact;
property tests for crop geometry and config parsing."""

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from googlenet import kernels
from googlenet.config import Config, ConfigError, load_config
from googlenet.data import Preprocessing, TensorBatches
from googlenet.run import checkpoint as checkpoint_module
from googlenet.run.checkpoint import load_checkpoint, save_checkpoint
from googlenet.training.loop import resume, train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fashion-mnist.toml"
RUN = [
    "data.train_subset=96",
    "data.val_fraction=0.005",
    "data.batch_size=32",
    "data.eval_batch_size=300",
    "train.epochs=3",
    "train.precision=fp32",
    "model.name=small",
    "data.image_size=28",
    "train.channels_last=true",  # channels_last: the steps run through the C++ kernels where they are built
    "train.deterministic=true",
    "train.ema_decay=0.9",
    "train.save_every_steps=1",
    # Through the run's every piece of state: Muon's and SGD's momentum, the alternating flips' epoch parity.
    "optim.name=muon",
    "data.flip=alternate",
]


def run_args(root: Path) -> list[str]:
    return [f'data.root="{root}"', *RUN]


@pytest.fixture(scope="module")
def reference(fashion_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("reference")
    lines: list[str] = []
    result = train(load_config(CONFIG, run_args(fashion_root)), out, log=lines.append)
    assert result.stopped == "finished" and result.step == 9
    assert kernels.describe() in lines  # the C++ kernels where the set-up built them, else ATen, said once
    return load_checkpoint(out / "checkpoints" / "last.pt")


def start_training(root: Path, out: Path) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "googlenet.cli", "train", "--config", str(CONFIG), "--out", str(out), "--no-progress"]
    for item in run_args(root):
        argv += ["--set", item]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_first_checkpoint(process: subprocess.Popen[str], path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "training never wrote a checkpoint"
        time.sleep(0.05)


def momentum_buffers(optimizer_state: dict[str, Any]) -> list[torch.Tensor]:
    """Every momentum buffer in an optimizer's state dict, whether one optimizer's or several (Muon + SGD)."""
    parts = optimizer_state.get("parts", [optimizer_state])
    return [s["momentum_buffer"] for part in parts for _, s in sorted(part["state"].items())]


def assert_same_weights(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in ("state_dict", "ema_state_dict"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs"
    buffers_a, buffers_b = momentum_buffers(a["optimizer"]), momentum_buffers(b["optimizer"])
    assert len(buffers_a) == len(buffers_b) > 0
    assert all(torch.equal(x, y) for x, y in zip(buffers_a, buffers_b, strict=True))


def kill_9_after_step(process: subprocess.Popen[str], last: Path, step: int) -> None:
    """SIGKILL ``process`` as soon as its last.pt (written every step) shows ``step`` or later: wherever inside
    the next step it then is, mid-batch or mid-write, but decided by the run's progress, not by a timer."""
    wait_for_first_checkpoint(process, last)
    deadline = time.monotonic() + 120
    while load_checkpoint(last)["position"]["step"] < step:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"training never reached step {step}"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate()


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_is_bit_identical(
    fashion_root: Path, reference: dict[str, Any], tmp_path: Path
) -> None:
    process = start_training(fashion_root, tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    kill_9_after_step(process, last, 4)
    assert process.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(last)["position"]
    assert 4 <= killed_at["step"] < 9, killed_at
    resumed = resume(tmp_path, log=lambda _: None)
    assert resumed.stopped == "finished" and resumed.step == 9
    final = load_checkpoint(last)
    assert_same_weights(reference, final)
    assert [h["epoch"] for h in final["history"]] == [1, 2, 3]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # no epoch logged twice


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(fashion_root: Path, reference: dict[str, Any], tmp_path: Path) -> None:
    process = start_training(fashion_root, tmp_path)
    wait_for_first_checkpoint(process, tmp_path / "checkpoints" / "last.pt")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert process.returncode == 130 and "Traceback" not in err
    assert "resume with 'googlenet train --resume" in err
    resume(tmp_path, log=lambda _: None)
    assert_same_weights(reference, load_checkpoint(tmp_path / "checkpoints" / "last.pt"))


def test_a_full_disk_leaves_the_previous_checkpoint_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {}, "state_dict": {"w": torch.ones(3)}, "preprocessing": {}, "class_names": []})
    before = path.read_bytes()

    def full_disk(obj: object, target: str) -> None:
        Path(target).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"state_dict": {"w": torch.zeros(3)}})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(3))


@pytest.mark.slow
def test_nan_loss_keeps_the_last_good_checkpoint(fashion_root: Path, tmp_path: Path) -> None:
    from googlenet.training.loop import TrainingDiverged

    # SGD: Muon's steps are orthogonalised and BatchNorm follows every convolution, so no learning rate makes
    # this loss infinite within a few steps
    sgd = [*run_args(fashion_root), "optim.name=sgd", "train.epochs=1"]
    good = train(load_config(CONFIG, sgd), tmp_path, log=lambda _: None)
    saved = load_checkpoint(good.last_checkpoint)
    # Continue the run with a learning rate that makes the loss infinite: the checkpoint must survive.
    payload = load_checkpoint(good.last_checkpoint)
    payload["config"]["optim"]["lr"] = 1e5
    payload["config"]["schedule"]["name"] = "constant"
    payload["config"]["train"]["save_every_steps"] = 0
    save_checkpoint(good.last_checkpoint, payload)
    with pytest.raises(TrainingDiverged, match="the last good checkpoint is kept"):
        resume(tmp_path, ["train.epochs=3"], log=lambda _: None)
    after = load_checkpoint(good.last_checkpoint)
    assert after["position"] == saved["position"]
    assert all(torch.equal(after["state_dict"][k], saved["state_dict"][k]) for k in saved["state_dict"])


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    size=st.integers(8, 64),
    channels=st.sampled_from([1, 3]),
)
def test_eval_crop_geometry_for_any_image_size(width: int, height: int, size: int, channels: int) -> None:
    prep = Preprocessing(image_size=size, resize=round(size * 256 / 224), in_channels=channels,
                         mean=[0.5] * channels, std=[0.25] * channels)  # fmt: skip
    image = Image.new("RGB" if channels == 3 else "L", (width, height))
    assert prep.eval_transform()(image).shape == (channels, size, size)


@settings(max_examples=30, deadline=None)
@given(side=st.integers(8, 40), padding=st.integers(0, 4), seed=st.integers(0, 2**31))
def test_random_crop_is_a_shifted_window(side: int, padding: int, seed: int) -> None:
    images = torch.arange(side * side, dtype=torch.int64).view(1, side, side).repeat(4, 1, 1)
    images = (images % 251).to(torch.uint8)
    prep = Preprocessing(image_size=side, resize=side, in_channels=1, mean=[0.0], std=[1.0])
    batches = TensorBatches(images, torch.zeros(4, dtype=torch.long), prep, 4,
                            shuffle=True, augment="flip-crop", crop_padding=padding, seed=seed)  # fmt: skip
    x, _ = next(batches.epoch(0))
    assert x.shape == (4, 1, side, side)
    original = images[0].float() / 255
    padded = torch.nn.functional.pad(original, (padding,) * 4)
    for crop in x[:, 0]:
        windows = [
            view[dy : dy + side, dx : dx + side]
            for view in (padded, padded.flip(1))
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
        ]
        assert any(torch.equal(crop, w) for w in windows)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_override_text_parses_or_raises_config_error(text: str) -> None:
    # The property: no other exception type (and so no traceback) for any text a user can type.
    with contextlib.suppress(ConfigError):
        load_config(None, [text])


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["optim.lr", "data.batch_size", "train.epochs", "model.aux", "schedule.name"]),
    st.one_of(st.integers(-(10**6), 10**6), st.floats(allow_nan=True), st.booleans(), st.text(max_size=10)),
)
def test_typed_values_are_accepted_or_refused_by_name(key: str, value: object) -> None:
    text = f"{key}={value!r}".replace("'", '"') if isinstance(value, str) else f"{key}={str(value).lower()}"
    try:
        config = load_config(None, [text])
    except ConfigError as error:
        assert key in str(error) or "section.key=value" in str(error)
    else:
        # Accepted: the value arrived as typed, in the key's own type (no silent default, no coercion of text).
        section, name = key.split(".")
        parsed = getattr(getattr(config, section), name)
        assert type(parsed) is type(getattr(getattr(Config(), section), name))
        assert parsed == value


def test_atomic_write_reaches_the_disk_before_it_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file's bytes are flushed before the rename and the folder after it: a power cut then leaves the old
    file or the new one, never an empty one."""
    from googlenet import files

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        events.append("fsync folder" if target.is_dir() else f"fsync {target.name}")
        real_fsync(fd)

    def replace(src: str, dst: Path) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    files.atomic_write_text(tmp_path / "out.txt", "hello")
    assert (tmp_path / "out.txt").read_text() == "hello"
    assert len(events) == 3 and events[0].startswith("fsync .out.txt.") and events[1:] == ["rename", "fsync folder"]
