"""A run planned to its wall-clock budget: the arithmetic, the plan a real run follows and stores, early
stops that still validate, the steps log, and budgets that cannot work."""

import json
import math
from pathlib import Path

import pytest

from googlenet.cli import main
from googlenet.training import loop
from googlenet.training.budget import SAFETY_SHARE, BudgetError, Timing, Workload, plan_steps, seconds_for
from googlenet.training.checkpoint import load_checkpoint
from googlenet.training.config import Config, load_config
from googlenet.training.loop import resume, train
from googlenet.training.schedule import lr_factor

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fashion-mnist.toml"
TIMING = Timing(step_seconds=0.5, images_per_step=128, eval_images_per_second=400.0, overhead_seconds=20.0)
WORK = Workload(steps_per_epoch=430, max_steps=30 * 430, done_steps=0, val_images=10_000, test_images=20_000)


def test_the_plan_is_the_most_steps_that_fit() -> None:
    plan = plan_steps(28, TIMING, WORK)
    usable = 28 * 60 * (1 - SAFETY_SHARE)
    assert seconds_for(plan.total_steps, TIMING, WORK) <= usable < seconds_for(plan.total_steps + 1, TIMING, WORK)
    assert plan.limited_by == "budget" and plan.val_seconds == 25.0 and plan.test_seconds == 50.0
    # By hand: 20 s set-up + 50 s test, then 0.5 s a step and 25 + 1 s at each of the epoch ends.
    epochs = math.ceil(plan.total_steps / 430)
    assert 20 + 50 + plan.total_steps * 0.5 + epochs * 26 <= usable
    assert "epochs =" in plan.describe(430) and "fit in 28 min" in plan.describe(430)


def test_a_generous_budget_runs_the_configured_epochs() -> None:
    plan = plan_steps(600, TIMING, WORK)
    assert plan.total_steps == WORK.max_steps and plan.limited_by == "epochs"


def test_a_budget_too_small_names_its_minimum() -> None:
    with pytest.raises(BudgetError, match=r"train\.max_minutes=1 is too small.*needs at least 1\.7 minutes"):
        plan_steps(1, TIMING, WORK)
    # The minimum it names is enough.
    assert plan_steps(1.7, TIMING, WORK).total_steps >= 1


def test_a_resumed_run_plans_only_what_is_left() -> None:
    done = Workload(**{**WORK.__dict__, "done_steps": 1000})
    # 1,000 steps (2 epoch ends) later, the clock has run for the set-up, those steps and two validations.
    later = Timing(**{**TIMING.__dict__, "overhead_seconds": 20 + 1000 * 0.5 + 2 * 26})
    assert abs(plan_steps(28, later, done).total_steps - plan_steps(28, TIMING, WORK).total_steps) <= 1


def tiny(root: Path, *extra: str) -> Config:
    return load_config(
        CONFIG,
        [
            f'data.root="{root}"',
            "data.train_subset=160",  # 5 batches of 32 a epoch
            "data.val_fraction=0.005",
            "data.batch_size=32",
            "data.eval_batch_size=300",
            "train.epochs=4",
            "train.precision=fp32",
            "train.channels_last=false",
            "train.log_every_steps=2",
            *extra,
        ],
    )


@pytest.fixture
def fixed_speed(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's measurement replaced by a known one, so the plan does not depend on the load: 2 s a step,
    300 validation images x 2 (model and EMA) at 600 img/s = 1 s."""
    monkeypatch.setattr(loop, "_measure", lambda run: (2.0, 1 / 600))


def test_a_budgeted_run_fits_its_whole_schedule_into_the_plan(
    fashion_root: Path, tmp_path: Path, fixed_speed: None
) -> None:
    lines: list[str] = []
    # 1 minute x 0.97 = 58.2 s: set-up (a few s) + 1 s per epoch end + 20,000 test views at 600 img/s (33 s)
    # leave room for about 10 steps of 2 s: two whole epochs of 5 and part of a third, or fewer.
    result = train(tiny(fashion_root, "train.max_minutes=1"), tmp_path, log=lines.append)
    payload = load_checkpoint(result.last_checkpoint)
    plan = payload["plan"]
    assert plan["limited_by"] == "budget" and 1 <= plan["total_steps"] < 20
    assert result.stopped == "finished" and result.step == plan["total_steps"]
    assert any(line.startswith("measured 16 img/s training, 600 img/s evaluating") for line in lines), lines
    # The schedule ran to its end in exactly the planned steps: the last step's lr is the floor's neighbour.
    config = tiny(fashion_root)
    last_lr = config.optim.lr * lr_factor(plan["total_steps"] - 1, plan["total_steps"], 5, config.schedule)
    assert payload["history"][-1]["lr"] == pytest.approx(last_lr)
    every = [lr_factor(step, plan["total_steps"], 5, config.schedule) for step in range(plan["total_steps"])]
    decay = every[math.ceil(config.schedule.warmup_epochs * 5) :]  # after the warm-up (which starts at 0.1 x)
    assert last_lr == pytest.approx(config.optim.lr * min(decay))  # the decay reached its lowest point
    # Whether the plan ended inside an epoch or at its end, the last row is validated and best.pt exists.
    assert "val_top1" in payload["history"][-1] and (tmp_path / "checkpoints" / "best.pt").is_file()
    if plan["total_steps"] % 5:
        assert payload["history"][-1]["partial"] is True


def test_a_run_stopped_inside_an_epoch_validates_and_resumes_to_the_same_plan(
    fashion_root: Path, tmp_path: Path, fixed_speed: None
) -> None:
    stopped = train(tiny(fashion_root, "train.max_minutes=10", "train.max_steps=7"), tmp_path, log=lambda _: None)
    assert stopped.stopped == "max_steps" and stopped.step == 7
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1, 1.4] and history[-1]["partial"] is True
    assert "val_top1" in history[-1] and (tmp_path / "checkpoints" / "best.pt").is_file()
    planned = load_checkpoint(stopped.last_checkpoint)["plan"]
    assert planned["total_steps"] == 20  # 4 epochs: the ceiling, since 10 minutes hold more
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [row["step"] for row in steps] == [2, 4, 6] and all(row["train_loss"] > 0 for row in steps)

    finished = resume(tmp_path, ["train.max_steps=0"], log=lambda _: None)
    assert finished.stopped == "finished" and finished.step == 20
    after = load_checkpoint(finished.last_checkpoint)
    assert after["plan"] == planned  # the same budget: the stored plan, not a new measurement
    assert [row["epoch"] for row in after["history"]] == [1, 1.4, 2, 3, 4]
    assert [row["step"] for row in after["steps_log"]] == list(range(2, 21, 2))


def test_a_budget_too_small_fails_before_training(fashion_root: Path, tmp_path: Path, fixed_speed: None) -> None:
    with pytest.raises(BudgetError, match=r"train\.max_minutes=0\.2 is too small .* needs at least"):
        train(tiny(fashion_root, "train.max_minutes=0.2"), tmp_path, log=lambda _: None)
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "expected a number of minutes above 0, got '0'"),
        ("-5", "expected a number of minutes above 0, got '-5'"),
        ("soon", "expected a number of minutes, got 'soon'"),
        ("nan", "above 0, got 'nan'"),
    ],
)
def test_bad_max_minutes_is_refused_by_name(
    value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "--config", str(CONFIG), "--out", str(tmp_path / "run"), f"--max-minutes={value}"])
    err = capsys.readouterr().err
    assert code == 2 and "--max-minutes" in err and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()
