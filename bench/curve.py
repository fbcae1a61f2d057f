"""Time to accuracy at equal wall-clock: the preset and the peer, each given the same budgets.

For every budget (minutes, start to test result) it trains the longest preset that fits, at the preset's own
budget as it is and elsewhere with train.max_minutes scaled to the budget, and evaluates it with flip TTA, as
`make benchmark-fashion-mnist` does (a finished `make benchmark-fashion-mnist` run of the same preset and seed
is taken as that budget's point instead of training again); then torchvision's googlenet
(bench/peer_torchvision.py --minutes), its epochs fitted to the same budget and its schedule ending there. The
results go to a JSON file, one row per run, and the picture of test top-1 against minutes for both:
docs/images/time-to-accuracy.png.

    python bench/curve.py --budgets 5 10 15 30 --seed 0 --json runs/curve.json --plot docs/images/time-to-accuracy.png

Rows already in the JSON file are kept and not rerun (an interrupted curve goes on where it stopped);
--plot-only redraws the picture from the file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from googlenet.benchmark import machine_name
from googlenet.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]

# The preset each budget trains: the longest whose own budget does not exceed it.
PRESETS = ((30.0, "fashion-mnist"), (15.0, "fashion-mnist-15min"), (0.0, "fashion-mnist-10min"))
PRESET_BUDGETS = {"fashion-mnist": 30.0, "fashion-mnist-15min": 15.0, "fashion-mnist-10min": 10.0}


def preset_for(budget: float) -> str:
    return next(name for minutes, name in PRESETS if budget >= minutes)


def training_minutes(preset: str, budget: float) -> float | None:
    """The train.max_minutes that fits ``preset`` into ``budget`` minutes start to test result: None (the
    preset's own) at its own budget, so that this point is `make benchmark-fashion-mnist`'s run; elsewhere the
    preset's own share of its budget (its max_minutes leave room for the test evaluation's start-up)."""
    own = PRESET_BUDGETS[preset]
    if budget == own:
        return None
    planned = float(tomllib.loads((ROOT / "configs" / f"{preset}.toml").read_text())["train"]["max_minutes"])
    return round(budget * planned / own, 2)


def benchmark_row(preset: str, budget: float, seed: int, runs: Path) -> dict[str, Any] | None:
    """The row of a `make benchmark-fashion-mnist PRESET=preset SEED=seed` run at the preset's own budget, when
    that run finished (its test metrics and wall-clock are in its folder): the same commands, so not rerun."""
    run = runs / f"{preset}-seed{seed}"
    metrics, wallclock = run / "eval_test.json", run / "wallclock.txt"
    if training_minutes(preset, budget) is not None or not (metrics.is_file() and wallclock.is_file()):
        return None
    seconds = float(wallclock.read_text().split(":")[-1].split()[0])
    top1 = float(json.loads(metrics.read_text())["top1"])
    return {"who": "preset", "preset": preset, "budget_minutes": budget, "minutes": seconds / 60,
            "test_top1": top1, "run": str(run)}  # fmt: skip


def run_ours(budget: float, seed: int, data: str, runs: Path) -> dict[str, Any]:
    """The preset in ``budget`` minutes, from the train command's start to the test evaluation's end."""
    preset = preset_for(budget)
    done = benchmark_row(preset, budget, seed, runs)
    if done is not None:
        print(f"{budget:g} min: taking {done['run']} (make benchmark-fashion-mnist, same preset and seed)")
        return done
    out = runs / f"curve-ours-{budget:g}min-seed{seed}"
    started = time.monotonic()
    train = [sys.executable, "-m", "googlenet.cli", "train", "--config", f"configs/{preset}.toml", "--no-progress"]
    train += ["--set", f"train.seed={seed}", "--set", f'data.root="{data}"', "--out", str(out)]
    minutes = training_minutes(preset, budget)
    if minutes is not None:
        train += ["--set", f"train.max_minutes={minutes:g}"]
    subprocess.run(train, check=True)
    metrics = out / "curve-test.json"
    evaluate = [sys.executable, "-m", "googlenet.cli", "evaluate", str(out / "checkpoints" / "best.pt")]
    evaluate += ["--split", "test", "--tta", "flip", "--backend", "torch", "--precision", "bf16", "--no-progress"]
    subprocess.run([*evaluate, "--json", str(metrics)], check=True)
    wall = (time.monotonic() - started) / 60
    top1 = float(json.loads(metrics.read_text())["top1"])
    return {"who": "preset", "preset": preset, "budget_minutes": budget, "minutes": wall, "test_top1": top1}


def run_peer(budget: float, seed: int, data: str, runs: Path) -> dict[str, Any]:
    """torchvision's googlenet, fitted to ``budget`` minutes."""
    result = runs / f"curve-peer-{budget:g}min-seed{seed}.json"
    peer = [sys.executable, "bench/peer_torchvision.py", "--data", data, "--seed", str(seed)]
    subprocess.run([*peer, "--minutes", f"{budget:g}", "--json", str(result)], check=True)
    row = json.loads(result.read_text())
    return {"who": "peer", "budget_minutes": budget, "minutes": row["minutes"], "test_top1": row["test_top1"]}


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Test top-1 against wall-clock minutes, one line for each trainer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for who, label, style in (("preset", "this package's preset", "o-"), ("peer", "torchvision googlenet", "s--")):
        mine = sorted((r for r in rows if r["who"] == who), key=lambda r: r["minutes"])
        if mine:
            xs, ys = [r["minutes"] for r in mine], [r["test_top1"] for r in mine]
            ax.plot(xs, ys, style, label=label)
            for x, y in zip(xs, ys, strict=True):
                ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xlabel("wall-clock minutes, start to test result")
    ax.set_ylabel("Fashion-MNIST test top-1")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[5, 10, 15, 30], help="minutes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="data")
    parser.add_argument("--runs", default="runs", help="where the run folders go")
    parser.add_argument("--json", default="runs/curve.json")
    parser.add_argument("--plot", default="docs/images/time-to-accuracy.png")
    parser.add_argument("--plot-only", action="store_true", help="redraw the picture from --json")
    args = parser.parse_args()
    path = Path(args.json)
    table: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"rows": []}
    rows: list[dict[str, Any]] = table["rows"]
    if not args.plot_only:
        table.update(cpu=machine_name(), date=time.strftime("%Y-%m-%d"), seed=args.seed)
        for budget in args.budgets:
            for who, runner in (("preset", run_ours), ("peer", run_peer)):
                if any(r["who"] == who and r["budget_minutes"] == budget for r in rows):
                    continue  # done in an earlier call
                rows.append(runner(budget, args.seed, args.data, Path(args.runs)))
                print(json.dumps(rows[-1]), flush=True)
                atomic_write_text(path, json.dumps(table, indent=2) + "\n")
    where = f"{table.get('cpu', '?')}, {table.get('date', '')}"
    title = f"Time to accuracy at equal wall-clock, seed {table.get('seed', 0)}: {where}"
    plot(rows, Path(args.plot), title)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
