"""Progressive resizing: the sizes and when they change, the images the model really sees, a budget that counts
cheaper steps as cheaper, a resume that stays exact, and sizes that cannot work."""

import json
from pathlib import Path

import pytest
import torch

from googlenet.config import ConfigError, DataConfig
from googlenet.run.checkpoint import load_checkpoint
from googlenet.training.budget import SAFETY_SHARE, plan_steps, seconds_for
from googlenet.training.loop import Hooks, resume, train
from googlenet.training.planner import MeasuredSpeed
from googlenet.training.resizing import resize_batch, size_at, step_cost, training_sizes
from googlenet.training.state import Run
from test_budget import TIMING, WORK, FixedSpeed, tiny
from test_train import quiet, tiny_config


def test_the_sizes_grow_in_8_px_steps_and_reach_the_full_size_at_grow_until() -> None:
    cfg = DataConfig(image_size=64, start_size=48, grow_until=0.5)
    assert training_sizes(cfg) == [48, 56, 64]
    # The two smaller sizes share the first half of the decay.
    assert [size_at(p, cfg) for p in (0.0, 0.24, 0.25, 0.49, 0.5, 1.0)] == [48, 48, 56, 56, 64, 64]
    assert training_sizes(DataConfig(image_size=64, start_size=60)) == [60, 64]
    thirds = DataConfig(image_size=64, start_size=40, grow_until=0.75)
    assert [size_at(p, thirds) for p in (0.0, 0.26, 0.51, 0.75)] == [40, 48, 56, 64] == training_sizes(thirds)[:4]
    for off in (DataConfig(image_size=64), DataConfig(image_size=64, start_size=64)):
        assert training_sizes(off) == [64] and size_at(0.0, off) == 64


def test_resizing_normalised_images_equals_normalising_resized_ones() -> None:
    x = torch.rand(3, 1, 64, 64)
    small = resize_batch(x, 48)
    assert small.shape == (3, 1, 48, 48) and resize_batch(x, 64) is x
    # Bilinear weights sum to one, so the normalisation may come before or after.
    assert torch.allclose(resize_batch((x - 0.3) / 0.2, 48), (small - 0.3) / 0.2, atol=1e-5)


def test_a_budget_counts_steps_on_smaller_images_as_cheaper() -> None:
    costs = {48: 0.5, 56: 0.75, 64: 1.0}
    timing = TIMING.__class__(**{**TIMING.__dict__, "size_costs": costs})
    cfg = DataConfig(image_size=64, start_size=48, grow_until=0.5)

    def size_for(step: int, total: int) -> int:
        return size_at(step / total, cfg)

    cost = step_cost(0, size_for, costs)
    # A quarter at 48 px (half price), a quarter at 56 (three quarters), half at 64.
    assert cost(1000) == pytest.approx(250 * 0.5 + 250 * 0.75 + 500)
    work = WORK.__class__(**{**WORK.__dict__, "step_cost": cost})
    progressive, plain = plan_steps(28, timing, work), plan_steps(28, TIMING, WORK)
    usable = 20 + (28 * 60 - 20) * (1 - SAFETY_SHARE)
    assert seconds_for(progressive.total_steps, timing, work) <= usable
    assert usable < seconds_for(progressive.total_steps + 1, timing, work)
    assert progressive.total_steps > 1.15 * plain.total_steps and progressive.size_costs == costs
    assert "measured 256 img/s training at 64 px, 512 at 48 px, 341 at 56 px" in progressive.describe(430)


def shapes_seen() -> tuple[Hooks, list[tuple[int, int]]]:
    """Hooks that record (step, image side) of every batch the training loop hands to a training step."""
    seen: list[tuple[int, int]] = []
    return Hooks(before_batch=lambda run, x: seen.append((run.state.step, int(x.shape[-1])))), seen


@pytest.mark.slow
def test_the_model_trains_on_the_growing_sizes_and_validates_at_the_full_size(
    fashion_root: Path, tmp_path: Path
) -> None:
    hooks, seen = shapes_seen()
    lines: list[str] = []
    config = tiny(fashion_root, "data.start_size=48", "train.max_minutes=0")
    result = train(config, tmp_path, log=lines.append, hooks=hooks)
    assert result.stopped == "finished" and result.step == 20
    # By hand: 4 epochs of 5 steps, a 1.5-step warm-up, so the decay's progress is (step - 1.5) / 18.5; 48 px
    # below 0.25 (steps 0-6), 56 below 0.5 (steps 7-10), then 64.
    assert [size for _, size in seen] == [48] * 7 + [56] * 4 + [64] * 9
    logged = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [row["image_size"] for row in logged] == [48, 48, 48, 56, 56, 64, 64, 64, 64, 64]
    assert any("48-56-64 px, growing until 50% of the decay" in line for line in lines)
    assert load_checkpoint(result.last_checkpoint)["preprocessing"]["image_size"] == 64


@pytest.mark.slow
def test_a_budgeted_run_measures_each_size_and_plans_with_them(fashion_root: Path, tmp_path: Path) -> None:
    measured: list[int] = []

    class RecordedSpeed(FixedSpeed):
        """This machine's real measurement before training, each size it times recorded; the epoch ends as
        FixedSpeed's."""

        def measure(self, run: Run) -> tuple[dict[int, float], float]:
            return MeasuredSpeed.measure(self, run)

        def time_size(self, trial: Run, size: int) -> float:
            measured.append(size)
            return super().time_size(trial, size)

    lines: list[str] = []
    config = tiny(fashion_root, "data.start_size=56", "train.max_minutes=10", "train.max_steps=3")
    train(config, tmp_path, log=lines.append, hooks=Hooks(speed=RecordedSpeed()))
    assert measured == [64, 56]  # the full size first, on the throw-away copy
    plan = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["plan"]
    assert set(plan["size_costs"]) == {56, 64} and plan["size_costs"][64] == 1.0
    assert any(line.startswith("measured") and " at 56 px" in line for line in lines)


@pytest.mark.slow
def test_resume_of_a_progressive_run_is_bit_identical(fashion_root: Path, tmp_path: Path) -> None:
    sizes = ("data.start_size=20", "schedule.warmup_epochs=0", "data.grow_until=0.6", "train.log_every_steps=2")
    whole = train(tiny_config(fashion_root, *sizes), tmp_path / "whole", log=quiet)
    train(tiny_config(fashion_root, *sizes, "train.max_steps=2"), tmp_path / "parts", log=quiet)
    resumed = resume(tmp_path / "parts", ["train.max_steps=0"], log=quiet)
    assert whole.step == resumed.step == 6
    a, b = load_checkpoint(whole.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    assert [row["image_size"] for row in b["steps_log"]] == [20, 20, 28]  # both sizes were trained on
    for key in ("state_dict", "ema_state_dict"):
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key]), key


@pytest.mark.parametrize(
    ("start", "message"),
    [("100", r"data\.start_size=100 must lie between .* 47 px and data\.image_size=64"), ("30", r"minimum of 47")],
)
def test_a_start_size_that_cannot_work_is_refused_by_name(
    fashion_root: Path, tmp_path: Path, start: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        train(tiny(fashion_root, f"data.start_size={start}"), tmp_path, log=quiet)
