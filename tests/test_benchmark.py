"""`googlenet benchmark` runs end to end at a tiny size and reports every case it promises."""

import json
from pathlib import Path

import pytest

from googlenet.cli import main


def test_benchmark_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    argv = ["benchmark", "--size", "48", "--batch", "2", "--train-batch", "2", "--fashion-batch", "4"]
    argv += ["--rounds", "2", "--roof-size", "64", "--json", str(out), "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
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
    assert ("Fashion-MNIST training", "eager fp32") in names
    assert ("Fashion-MNIST inference", "openvino int8") in names
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
