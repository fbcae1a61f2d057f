"""The run folder's records, written by training and read by the report and the server, in one place:
metrics.jsonl (one row per epoch end: losses, accuracies, learning rate, time) and steps.jsonl (one row every
train.log_every_steps optimizer steps)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from googlenet.errors import DataError
from googlenet.files import atomic_write_text

METRICS = "metrics.jsonl"
STEPS = "steps.jsonl"


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """All of ``rows`` as JSON lines, replacing the file atomically (a reader never sees half a row)."""
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file; DataError naming it when it is damaged."""
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is damaged: {error}") from None


def read_history(run: Path) -> list[dict[str, Any]]:
    """metrics.jsonl of the run folder ``run``: one row per epoch end."""
    path = run / METRICS
    if not path.is_file():
        raise DataError(f"{run} is not a training run folder: it has no {METRICS}")
    return read_rows(path)


def read_steps(run: Path) -> list[dict[str, Any]]:
    """steps.jsonl: training loss, accuracy and lr every few dozen steps; empty for runs that did not log it."""
    path = run / STEPS
    return read_rows(path) if path.is_file() else []
