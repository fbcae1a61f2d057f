"""torchrun + DistributedDataParallel: two gloo processes on CPU take the same steps as one process on the
same global batch."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from googlenet.config import load_config
from googlenet.run.checkpoint import load_checkpoint
from googlenet.training.loop import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fashion-mnist.toml"


def settings(root: Path) -> list[str]:
    # The paper variant has no BatchNorm (whose statistics would be per process without SyncBatchNorm,
    # which needs GPUs); dropout 0 and no auxiliary loss make one step a deterministic function of the batch.
    return [
        f'data.root="{root}"',
        "data.train_subset=64",
        "data.val_fraction=0.005",
        "data.batch_size=16",
        "data.eval_batch_size=300",
        "data.image_size=48",
        "model.name=paper",
        "model.aux=false",
        # SGD: Muon's Newton-Schulz iterations run in bf16, where the all-reduce's summation order would show
        # in the comparison; what is tested here is the gradient averaging, the same for any optimizer.
        "optim.name=sgd",
        "model.dropout=0",
        "train.epochs=1",
        "train.precision=fp32",
        "train.channels_last=false",
        "train.ema_decay=0",
        "train.threads=1",
        "optim.lr=0.01",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_processes_match_one_on_the_same_global_batch(fashion_root: Path, tmp_path: Path) -> None:
    single = train(load_config(CONFIG, settings(fashion_root)), tmp_path / "one", log=lambda _: None)
    assert single.step == 4
    argv = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "googlenet.cli", "train", "--config", str(CONFIG), "--out", str(tmp_path / "two"), "--no-progress",
    ]  # fmt: skip
    for item in settings(fashion_root):
        argv += ["--set", item]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "2 processes" in result.stdout
    one = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")
    two = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")
    assert two["position"] == one["position"] == {"epoch": 1, "batch": 0, "step": 4}
    initial = load_config(CONFIG, settings(fashion_root))
    torch.manual_seed(initial.train.seed)
    from googlenet.training.loop import build_model

    start = build_model(initial, 10, 1).state_dict()
    for name, tensor in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][name], tensor, rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.equal(one["state_dict"]["fc.weight"], start["fc.weight"])  # the steps did change weights
    assert one["history"][0]["val_top1"] == pytest.approx(two["history"][0]["val_top1"], abs=1e-3)


@pytest.mark.slow
def test_two_processes_plan_and_replan_a_budget_together(fashion_root: Path, tmp_path: Path) -> None:
    # Each process measures its own speed, and each epoch end refits the plan: every process must take the
    # same plan (by the slowest), or one would stop while the other waits for it in an all-reduce.
    argv = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "googlenet.cli", "train", "--config", str(CONFIG), "--out", str(tmp_path), "--no-progress",
    ]  # fmt: skip
    budgeted = ["data.train_subset=192", "train.epochs=3", "train.max_minutes=2", "train.budget_test_views=0"]
    for item in settings(fashion_root) + budgeted:
        argv += ["--set", item]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    payload = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert payload["plan"]["total_steps"] == payload["position"]["step"] >= 1
    assert payload["history"][-1]["planned_steps"] == payload["plan"]["total_steps"]


def test_batch_must_divide_among_processes(fashion_root: Path) -> None:
    from googlenet.data import DataError, build_data

    config = load_config(CONFIG, settings(fashion_root))
    config.data.batch_size = 15
    with pytest.raises(DataError, match="must divide evenly among 2 processes"):
        build_data(config.data, in_channels=0, seed=0, shard=(0, 2))


def test_shards_partition_each_global_batch(fashion_root: Path) -> None:
    from googlenet.data import build_data

    config = load_config(CONFIG, settings(fashion_root))
    whole = list(build_data(config.data, in_channels=0, seed=0).train.epoch(0))
    parts = [list(build_data(config.data, in_channels=0, seed=0, shard=(r, 2)).train.epoch(0)) for r in (0, 1)]
    for k, (x, y) in enumerate(whole):
        (x0, y0), (x1, y1) = parts[0][k], parts[1][k]
        assert torch.equal(torch.sort(torch.cat([y0, y1])).values, torch.sort(y).values)
        assert torch.equal(x0, x[0::2]) and torch.equal(x1, x[1::2])


@pytest.mark.slow
def test_gradient_accumulation_matches_one_large_batch(fashion_root: Path, tmp_path: Path) -> None:
    # Augmentation draws are made per batch, so they differ between 8- and 16-image batches: compare without.
    plain = [*settings(fashion_root), "data.augment=none"]
    large = train(load_config(CONFIG, plain), tmp_path / "large", log=lambda _: None)
    small = train(
        load_config(CONFIG, [*plain, "data.batch_size=8", "train.global_batch=16"]),
        tmp_path / "accumulated",
        log=lambda _: None,
    )
    assert large.step == small.step == 4  # 64 images, 16 per optimizer step
    a = load_checkpoint(tmp_path / "large" / "checkpoints" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "accumulated" / "checkpoints" / "last.pt")["state_dict"]
    # Summing two half-batch gradients rounds differently from one whole-batch gradient, so a few weights near
    # zero differ in the last float32 digits; whole tensors must agree to float32 rounding (measured ~1e-6).
    for name, tensor in a.items():
        if tensor.is_floating_point():
            assert (b[name] - tensor).norm() <= 1e-5 * tensor.norm(), name
        else:
            assert torch.equal(b[name], tensor), name


def test_global_batch_must_be_a_multiple(fashion_root: Path, tmp_path: Path) -> None:
    from googlenet.config import ConfigError

    config = load_config(CONFIG, [*settings(fashion_root), "train.global_batch=20"])
    with pytest.raises(ConfigError, match=r"must be a multiple of data\.batch_size=16"):
        train(config, tmp_path, log=lambda _: None)
