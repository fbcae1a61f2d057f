"""`googlenet benchmark` runs end to end at a tiny size and reports every case it promises."""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from googlenet.cli import main
from googlenet.config import Config
from helpers import make_checkpoint, make_folder


def test_benchmark_command_end_to_end(tmp_path: Path) -> None:
    # In its own process: torch.profiler's and OpenVINO's native state must not outlive the command in the
    # test process (a later test crashed when they shared one).
    out = tmp_path / "bench.json"
    argv = ["benchmark", "--size", "48", "--batch", "2", "--train-batch", "2", "--fashion-batch", "4"]
    argv += ["--fashion-size", "48"]
    argv += ["--rounds", "2", "--roof-size", "64", "--json", str(out), "--no-progress", "--profile"]
    done = subprocess.run([sys.executable, "-m", "googlenet.cli", *argv], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout
    report = json.loads(out.read_text())
    names = {(r["section"].split(",")[0].split(":")[0], r["name"]) for r in report["rows"]}
    expected_peers = {
        "torchvision eager fp32",
        "torchvision eager bf16 + channels_last",
        "ONNX Runtime fp32 (torchvision graph)",
        "OpenVINO fp32 (torchvision graph)",
        "OpenVINO bf16 (torchvision graph)",
    }
    ours = {f"ours: {e}" for e in ("torch fp32", "torch bf16", "onnxruntime fp32", "openvino fp32")}
    ours |= {"ours: openvino bf16", "ours: openvino int8"}
    assert {("inference", n) for n in expected_peers | ours} <= names
    assert ("training", "ours: googlenet train path (bf16, channels_last)") in names
    assert ("Fashion-MNIST training", "ours: eager fp32") in names
    assert ("Fashion-MNIST training", "torchvision eager bf16 + channels_last, same stem and input") in names
    without = "ours without the training kernels (all ATen)"  # what the kernels add, beside the same path on ATen
    assert {("training", without), ("Fashion-MNIST training", without)} <= names
    assert ("Fashion-MNIST inference", "openvino int8") in names
    fashion = {r["section"] for r in report["rows"] if r["section"].startswith("Fashion-MNIST training")}
    assert fashion == {"Fashion-MNIST training: bn variant, 1 x 48 x 48, batch 4, with auxiliary heads"}
    assert set(report["roof_gflops"]) == {"bf16", "fp32"}
    assert all(v > 0 for v in report["roof_gflops"].values())
    for row in report["rows"]:
        assert row["images_per_second"] > 0 and row["gflops"] > 0
        if row["name"] == row["reference"]:
            assert row["ratio"] == pytest.approx(1.0)
        if row["section"].startswith("inference"):
            assert row["latency_ms"] > 0
    best_peer = max((r for r in report["rows"] if r["peer"] and r["section"].startswith("inference")),
                    key=lambda r: r["images_per_second"])  # fmt: skip
    assert all(r["reference"] == best_peer["name"] for r in report["rows"] if r["section"].startswith("inference"))
    assert "| case | img/s | ratio | batch-1 ms | peak MiB | GFLOP/s | of bf16 roof |" in text
    assert "matrix-multiply roof" in text and f"wrote {out}" in text
    assert "where our training step's time goes" in text
    assert sum(report["profile"].values()) == pytest.approx(1.0)
    assert report["profile"]["convolution and linear (forward, backward, and their matrix products)"] > 0
    assert report["profile"]["max-pool (forward and backward)"] > 0  # the kernels' own functions are counted


def test_agreement_on_a_checkpoints_test_split(tmp_path: Path) -> None:
    for engine in ("onnxruntime", "openvino", "nncf"):  # the [deploy] extra
        pytest.importorskip(engine)
    config = Config()
    root = make_folder(tmp_path / "images")
    shutil.copytree(root / "val", root / "test")
    config.data.dataset, config.data.root = "folder", str(root)
    config.data.val_fraction = 0.0
    checkpoint = make_checkpoint(tmp_path / "c.pt", config=config.to_dict())
    # In its own process, for the same reason as above: OpenVINO's native threads crashed a later test.
    code = (
        "import json, sys; from googlenet.engines import installed_backends; "
        "from googlenet.benchmark import agreement_on_test; "
        "print(json.dumps([a.__dict__ for a in agreement_on_test(sys.argv[1], installed_backends(), print)]))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(checkpoint)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {a["engine"]: SimpleNamespace(**a) for a in json.loads(done.stdout.strip().splitlines()[-1])}
    assert set(rows) == {
        "torch fp32",
        "torch bf16",
        "onnxruntime fp32",
        "openvino fp32",
        "openvino bf16",
        "openvino int8",
    }
    assert rows["torch fp32"].agreement == 1.0  # the reference itself
    # Other fp32 engines round differently: an untrained model's near-tie may flip, more than one may not.
    assert rows["openvino fp32"].agreement >= 8 / 9 and rows["onnxruntime fp32"].agreement >= 8 / 9
    assert all(a.images == 9 and 0 <= a.top1 <= 1 for a in rows.values())  # 3 classes x 3 test images


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for machines without a GPU")
def test_benchmark_on_cuda_without_a_gpu_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["benchmark", "--device", "cuda", "--sections", "training"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device is available" in err
