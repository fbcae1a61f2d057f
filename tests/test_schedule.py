"""Learning-rate schedules are pure functions of the step."""

import pytest

from googlenet.config import ScheduleConfig
from googlenet.training.schedule import lr_factor


def test_paper_schedule_drops_4_percent_every_8_epochs() -> None:
    cfg = ScheduleConfig(name="paper", gamma=0.96, step_epochs=8)
    per_epoch = 100
    assert lr_factor(0, 10_000, per_epoch, cfg) == 1.0
    assert lr_factor(8 * per_epoch - 1, 10_000, per_epoch, cfg) == 1.0
    assert lr_factor(8 * per_epoch, 10_000, per_epoch, cfg) == pytest.approx(0.96)
    assert lr_factor(16 * per_epoch, 10_000, per_epoch, cfg) == pytest.approx(0.96**2)


def test_onecycle_warms_up_then_anneals_to_zero() -> None:
    cfg = ScheduleConfig(name="onecycle", warmup_epochs=1)
    assert lr_factor(0, 1000, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(50, 1000, 100, cfg) == pytest.approx(0.55)
    assert lr_factor(100, 1000, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(550, 1000, 100, cfg) == pytest.approx(0.5)
    assert lr_factor(1000, 1000, 100, cfg) == pytest.approx(0.0)


def test_cosine_and_step() -> None:
    cosine = ScheduleConfig(name="cosine", warmup_epochs=0, min_lr_ratio=0.1)
    assert lr_factor(0, 1000, 100, cosine) == pytest.approx(1.0)
    assert lr_factor(500, 1000, 100, cosine) == pytest.approx(0.55)
    assert lr_factor(1000, 1000, 100, cosine) == pytest.approx(0.1)
    step = ScheduleConfig(name="step", warmup_epochs=0, step_epochs=2, gamma=0.1)
    assert lr_factor(199, 1000, 100, step) == 1.0
    assert lr_factor(200, 1000, 100, step) == pytest.approx(0.1)
