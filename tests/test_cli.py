"""The command line: output, one-line errors, exit codes."""

import json
import subprocess
import sys

import pytest

from googlenet.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models")
    assert code == 0
    assert "6,998,552" in out and "6,624,904" in out


def test_summary_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "summary", "--model", "torchvision", "--format", "json")
    assert code == 0
    payload = json.loads(out)
    assert payload["variant"] == "torchvision" and payload["total_params"] == 6_624_904


def test_summary_small_defaults_to_one_channel(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "summary", "--model", "small", "--format", "csv")
    assert code == 0 and "28x28x64" in out


def test_costs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "costs")
    assert code == 0 and "120,422,400 vs 12,443,648" in out and "138,357,544" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["summary", "--model", "vgg"], "unknown model 'vgg'"),
        (["summary", "--input-size", "20"], "minimum is 47x47"),
        (["summary", "--input-size", "-3"], "at least 1"),
        (["summary", "--format", "xml"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and message in err and err.startswith("googlenet: error:")
    assert "Traceback" not in err


def test_console_script_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "googlenet.cli", "summary", "--model", "nope"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "googlenet: error: unknown model 'nope'; choose one of: bn, paper, small, torchvision"
    )


def test_debug_shows_the_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "googlenet.cli", "--debug", "summary", "--model", "nope"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0 and "Traceback" in result.stderr
