"""A run planned to its wall-clock budget: the arithmetic, the plan a real run follows and stores, early
stops that still validate, the steps log, and budgets that cannot work."""

import itertools
import json
import math
from pathlib import Path

import pytest

from googlenet.cli import main
from googlenet.config import Config, load_config
from googlenet.run.checkpoint import load_checkpoint
from googlenet.training.budget import (
    SAFETY_SHARE,
    BudgetError,
    Timing,
    TrainingPace,
    Workload,
    plan_steps,
    replan,
    seconds_for,
)
from googlenet.training.loop import Hooks, resume, train
from googlenet.training.planner import MeasuredSpeed
from googlenet.training.schedule import decay_progress, lr_factor
from googlenet.training.state import Run

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fashion-mnist.toml"
TIMING = Timing(step_seconds=0.5, images_per_step=128, eval_images_per_second=400.0, overhead_seconds=20.0)
WORK = Workload(steps_per_epoch=430, max_steps=30 * 430, done_steps=0, val_images=10_000, test_images=20_000)


def test_the_plan_is_the_most_steps_that_fit() -> None:
    plan = plan_steps(28, TIMING, WORK)
    usable = 20 + (28 * 60 - 20) * (1 - SAFETY_SHARE)  # the safety share is kept back from the time left
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
    resumed = plan_steps(28, later, done).total_steps
    # The same speed gives the same run, less the 3% share of the time already spent, no longer kept back:
    # (572 - 20) s x 0.03 = 16.6 s, 33 steps of 0.5 s.
    assert resumed - plan_steps(28, TIMING, WORK).total_steps == 33
    usable = 572 + (28 * 60 - 572) * (1 - SAFETY_SHARE)
    assert seconds_for(resumed, later, done) <= usable < seconds_for(resumed + 1, later, done)


def test_a_replan_plans_with_the_last_epochs_pace_blended_with_the_whole_runs() -> None:
    pace = TrainingPace()
    # The first epoch: its own pace is the whole run's.
    assert pace.add_epoch(200.0, 400) == pytest.approx(0.5)
    # A second epoch 10% slower moves the plan's step time by 7.5%, not 10%: (0.55 + 420 / 800) / 2.
    assert pace.add_epoch(220.0, 400) == pytest.approx((0.55 + 0.525) / 2)
    # A slow-down that lasts pulls the step time towards it epoch by epoch.
    paces = [pace.add_epoch(240.0, 400) for _ in range(6)]
    assert all(a < b < 0.6 for a, b in itertools.pairwise(paces)) and paces[-1] > 0.57
    # Steps at smaller sizes count as their share of a full-size step (a float).
    assert TrainingPace().add_epoch(90.0, 180.5) == pytest.approx(90 / 180.5)


def test_a_replan_refits_the_rest_of_the_schedule_to_the_speed_measured() -> None:
    plan = plan_steps(28, TIMING, WORK)
    # After the first epoch (430 steps, one validation) the clock says what the plan assumed, but the steps
    # now take 10% longer: fewer steps fit, and the decay is refitted from step 430.
    done = Workload(**{**WORK.__dict__, "done_steps": 430})
    now = 20 + 430 * 0.5 + 26
    slower = Timing(**{**TIMING.__dict__, "step_seconds": 0.55, "overhead_seconds": now})
    progress = decay_progress(430, plan.total_steps, 0.3 * 430)
    fewer = replan(plan, slower, done, progress)
    assert fewer.total_steps < plan.total_steps and fewer.replans == 1
    assert fewer.anchor == (430, progress) and fewer.budget_minutes == 28
    assert fewer.total_steps == plan_steps(28, slower, done).total_steps
    # The same speed as planned: the 3% kept back on the 241 s spent since is freed, 14 steps of 0.5 s.
    same = Timing(**{**TIMING.__dict__, "overhead_seconds": now})
    refitted = replan(plan, same, done, progress)
    assert refitted.total_steps - plan.total_steps == 14
    # A plan that still fits comes back itself, not re-anchored.
    assert replan(refitted, same, done, progress) is refitted
    # Faster: more steps, at most the configured epochs.
    faster = replan(plan, Timing(**{**same.__dict__, "step_seconds": 0.3}), done, progress)
    assert plan.total_steps < faster.total_steps <= WORK.max_steps
    # Over budget already: the schedule ends where the run stands.
    late = Timing(**{**same.__dict__, "overhead_seconds": 28 * 60 - 10})
    assert replan(plan, late, done, progress).total_steps == 430


def test_the_learning_rate_stays_continuous_across_a_replan() -> None:
    config = load_config(CONFIG).schedule
    old_total, new_total, anchor_step = 3000, 2600, 860
    progress = decay_progress(anchor_step, old_total, config.warmup_epochs * 430)
    anchor = (anchor_step, progress)
    before = lr_factor(anchor_step, old_total, 430, config)
    after = lr_factor(anchor_step, new_total, 430, config, anchor)
    assert after == pytest.approx(before) and 0 < progress < 1
    # From the anchor on, the decay goes down in even steps to the floor at the new total.
    rest = [lr_factor(step, new_total, 430, config, anchor) for step in range(anchor_step, new_total + 1)]
    assert all(a > b for a, b in itertools.pairwise(rest))
    assert rest[-1] == pytest.approx(config.min_lr_ratio)
    # An anchor inside the warm-up changes nothing: the decay starts where the warm-up ends.
    early = (50, decay_progress(50, old_total, config.warmup_epochs * 430))
    assert lr_factor(1000, new_total, 430, config, early) == lr_factor(1000, new_total, 430, config)


def tiny(root: Path, *extra: str) -> Config:
    return load_config(
        CONFIG,
        [
            f'data.root="{root}"',
            "data.image_size=64",  # the size these tests' steps and progressive sizes are worked out for
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


class FixedSpeed(MeasuredSpeed):
    """A machine of known speed, so the plan does not depend on the load: 2 s a step, 300 validation images x 2
    (model and EMA) at 600 img/s = 1 s; with ``epoch_ends`` the epoch-end re-plans measure the same, without
    them they time the epochs on the run's clock."""

    def __init__(self, epoch_ends: bool = True) -> None:
        self.epoch_ends = epoch_ends

    def measure(self, run: Run) -> tuple[dict[int, float], float]:
        return {run.cfg.data.image_size: 2.0}, 1 / 600

    def at_epoch_end(self, run: Run, step_seconds: float, val_seconds: float) -> tuple[float, float]:
        if self.epoch_ends:
            return 2.0, 1 / 600
        return super().at_epoch_end(run, step_seconds, val_seconds)


@pytest.fixture
def fixed_speed() -> Hooks:
    return Hooks(speed=FixedSpeed())


@pytest.mark.slow
def test_a_budgeted_run_fits_its_whole_schedule_into_the_plan(
    fashion_root: Path, tmp_path: Path, fixed_speed: Hooks
) -> None:
    lines: list[str] = []
    # 1 minute x 0.97 = 58.2 s: set-up (a few s) + 1 s per epoch end + 20,000 test views at 600 img/s (33 s)
    # leave room for about 10 steps of 2 s: two whole epochs of 5 and part of a third, or fewer.
    result = train(tiny(fashion_root, "train.max_minutes=1"), tmp_path, log=lines.append, hooks=fixed_speed)
    payload = load_checkpoint(result.last_checkpoint)
    plan = payload["plan"]
    first = next(line for line in lines if line.startswith("measured 16 img/s training, 600 img/s evaluating"))
    assert "fit in 1 min" in first and 1 <= int(first.split(" steps ")[0].split()[-1]) < 20
    assert result.stopped == "finished" and result.step == plan["total_steps"] <= 20
    # The schedule ran to its end in exactly the planned steps (the last plan, when an epoch end refitted it:
    # this machine's clock runs faster than the 2 s a step it is told): the last lr is the floor's neighbour.
    config, anchor = tiny(fashion_root), (plan["anchor_step"], plan["anchor_progress"])
    assert payload["history"][-1]["planned_steps"] == plan["total_steps"]
    last_lr = config.optim.lr * lr_factor(plan["total_steps"] - 1, plan["total_steps"], 5, config.schedule, anchor)
    assert payload["history"][-1]["lr"] == pytest.approx(last_lr)
    every = [lr_factor(s, plan["total_steps"], 5, config.schedule, anchor) for s in range(plan["total_steps"])]
    decay = every[math.ceil(config.schedule.warmup_epochs * 5) :]  # after the warm-up (which starts at 0.1 x)
    assert last_lr == pytest.approx(config.optim.lr * min(decay))  # the decay reached its lowest point
    # Whether the plan ended inside an epoch or at its end, the last row is validated and best.pt exists.
    assert "val_top1" in payload["history"][-1] and (tmp_path / "checkpoints" / "best.pt").is_file()
    if plan["total_steps"] % 5:
        assert payload["history"][-1]["partial"] is True


@pytest.mark.slow
def test_a_run_stopped_inside_an_epoch_validates_and_resumes_to_the_same_plan(
    fashion_root: Path, tmp_path: Path, fixed_speed: Hooks
) -> None:
    config = tiny(fashion_root, "train.max_minutes=10", "train.max_steps=7")
    stopped = train(config, tmp_path, log=lambda _: None, hooks=fixed_speed)
    assert stopped.stopped == "max_steps" and stopped.step == 7
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1, 1.4] and history[-1]["partial"] is True
    assert "val_top1" in history[-1] and (tmp_path / "checkpoints" / "best.pt").is_file()
    planned = load_checkpoint(stopped.last_checkpoint)["plan"]
    assert planned["total_steps"] == 20  # 4 epochs: the ceiling, since 10 minutes hold more
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [row["step"] for row in steps] == [2, 4, 6] and all(row["train_loss"] > 0 for row in steps)

    finished = resume(tmp_path, ["train.max_steps=0"], log=lambda _: None, hooks=fixed_speed)
    assert finished.stopped == "finished" and finished.step == 20
    after = load_checkpoint(finished.last_checkpoint)
    assert after["plan"] == planned  # the same budget: the stored plan, not a new measurement
    assert [row["epoch"] for row in after["history"]] == [1, 1.4, 2, 3, 4]
    assert [row["step"] for row in after["steps_log"]] == list(range(2, 21, 2))


class SlowMachine(Hooks):
    """A machine that measured 2 s a step before training but then takes 4 s a step and 1 s a validation: the
    run's clock reads simulated seconds only, so the test takes seconds and its plans never depend on the load."""

    def __init__(self) -> None:
        self.seconds = 0.0
        super().__init__(
            now=lambda: self.seconds,
            speed=FixedSpeed(epoch_ends=False),
            after_step=lambda _run: self.wait(4.0),
            after_validation=lambda _run: self.wait(1.0),
        )

    def wait(self, seconds: float) -> None:
        self.seconds += seconds


@pytest.mark.slow
def test_a_machine_that_slows_down_gets_a_shorter_schedule_that_still_ends(fashion_root: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    # No test evaluation to keep time for: the plan then hangs on the simulated seconds, not this machine's.
    slow = ("train.max_minutes=1.5", "train.epochs=8", "train.budget_test_views=0")
    config = tiny(fashion_root, *slow)
    result = train(config, tmp_path, log=lines.append, hooks=SlowMachine())
    first = int(next(line for line in lines if line.startswith("measured")).split(" steps ")[0].split()[-1])
    payload = load_checkpoint(result.last_checkpoint)
    plan, history = payload["plan"], payload["history"]
    # The first epoch end sees 4 s a step and refits the rest to about half the steps; the run then ends its
    # (last) plan exactly, inside the budget.
    assert any(line.startswith("re-planned at step 5 (-") for line in lines), "\n".join(lines)
    assert history[0]["planned_steps"] <= first * 0.6 and plan["replans"] >= 1
    assert result.stopped == "finished" and result.step == plan["total_steps"] == history[-1]["planned_steps"]
    # The learning rate the run used (steps.jsonl) is the schedule chained through every re-plan: continuous
    # at each epoch end, falling all the way, and at its floor's neighbour on the last step.
    warmup, total, anchor = config.schedule.warmup_epochs * 5, first, (0, 0.0)
    rates = []
    for step in range(result.step):
        if step and step % 5 == 0 and history[step // 5 - 1]["planned_steps"] != total:
            before = lr_factor(step, total, 5, config.schedule, anchor)
            anchor = (step, decay_progress(step, total, warmup, anchor))
            total = history[step // 5 - 1]["planned_steps"]
            assert lr_factor(step, total, 5, config.schedule, anchor) == pytest.approx(before, abs=1e-12)
        rates.append(config.optim.lr * lr_factor(step, total, 5, config.schedule, anchor))
    assert (plan["anchor_step"], plan["anchor_progress"]) == pytest.approx(anchor)
    logged = {row["step"]: row["lr"] for row in payload["steps_log"]}
    assert logged and all(logged[step] == pytest.approx(rates[step - 1]) for step in logged)
    after_warmup = rates[math.ceil(warmup) :]
    assert all(a > b for a, b in itertools.pairwise(after_warmup))
    # One step more would be the floor: the last step is the decay's last before it.
    assert lr_factor(result.step, total, 5, config.schedule, anchor) == config.schedule.min_lr_ratio
    assert rates[-1] == pytest.approx(config.optim.lr * (1 - anchor[1]) / (total - anchor[0]))
    # Without re-planning, the same machine runs into the budget's hard limit before the schedule's end.
    off = train(
        tiny(fashion_root, *slow, "train.replan=false"), tmp_path / "off", log=lambda _: None, hooks=SlowMachine()
    )
    assert off.stopped == "max_minutes" and off.step < first
    assert load_checkpoint(off.last_checkpoint)["plan"]["replans"] == 0


@pytest.mark.slow
def test_a_budget_too_small_fails_before_training(fashion_root: Path, tmp_path: Path, fixed_speed: Hooks) -> None:
    with pytest.raises(BudgetError, match=r"train\.max_minutes=0\.2 is too small .* needs at least"):
        train(tiny(fashion_root, "train.max_minutes=0.2"), tmp_path, log=lambda _: None, hooks=fixed_speed)
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
