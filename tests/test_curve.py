"""The time-to-accuracy curve (bench/curve.py): which preset each budget trains, and the picture it draws."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def load_curve():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("curve", ROOT / "bench" / "curve.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_budget_trains_the_longest_preset_that_fits_it() -> None:
    curve = load_curve()
    assert [curve.preset_for(b) for b in (5, 10, 15, 29, 30, 60)] == [
        "fashion-mnist-10min",
        "fashion-mnist-10min",
        "fashion-mnist-15min",
        "fashion-mnist-15min",
        "fashion-mnist",
        "fashion-mnist",
    ]
    assert all((ROOT / "configs" / f"{name}.toml").is_file() for _, name in curve.PRESETS)


def test_the_curve_is_redrawn_from_its_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    rows = [
        {"who": "preset", "budget_minutes": b, "minutes": b - 0.4, "test_top1": top1}
        for b, top1 in ((5, 0.921), (10, 0.935), (15, 0.94))
    ] + [
        {"who": "peer", "budget_minutes": b, "minutes": b - 0.2, "test_top1": top1}
        for b, top1 in ((5, 0.9), (10, 0.92))
    ]
    table = tmp_path / "curve.json"
    table.write_text(json.dumps({"cpu": "test CPU", "date": "2026-12-05", "seed": 0, "rows": rows}))
    picture = tmp_path / "curve.png"
    argv = ["curve.py", "--plot-only", "--json", str(table), "--plot", str(picture)]
    monkeypatch.setattr(sys, "argv", argv)
    load_curve().main()
    with Image.open(picture) as image:
        assert image.size == (840, 504)
    assert not list(tmp_path.glob(".*tmp*"))  # written through a temp file, then renamed


def test_a_preset_runs_as_it_is_at_its_own_budget_and_scaled_elsewhere() -> None:
    curve = load_curve()
    assert curve.training_minutes("fashion-mnist-10min", 10) is None
    assert curve.training_minutes("fashion-mnist", 30) is None
    assert curve.training_minutes("fashion-mnist-10min", 5) == pytest.approx(4.5)  # its max_minutes: 9 of 10


def test_a_finished_benchmark_run_is_taken_as_its_budgets_point(tmp_path: Path) -> None:
    curve = load_curve()
    run = tmp_path / "fashion-mnist-10min-seed1"
    run.mkdir()
    (run / "eval_test.json").write_text(json.dumps({"top1": 0.9387, "top5": 0.999}))
    assert curve.benchmark_row("fashion-mnist-10min", 10, 1, tmp_path) is None  # no wall-clock: not finished
    (run / "wallclock.txt").write_text("wall-clock, training to test evaluation: 546 s\n")
    row = curve.benchmark_row("fashion-mnist-10min", 10, 1, tmp_path)
    assert row["who"] == "preset" and row["test_top1"] == 0.9387 and row["minutes"] == pytest.approx(9.1)
    assert curve.benchmark_row("fashion-mnist-10min", 10, 2, tmp_path) is None  # another seed
    assert curve.benchmark_row("fashion-mnist-10min", 5, 1, tmp_path) is None  # another budget: trained anew
