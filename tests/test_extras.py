"""The core install and its extras: a feature whose optional package is missing says which extra to install, in
one line; nothing imports an optional package at import time; pyproject's ranges and extras stay as promised."""

import json
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from googlenet.cli import main
from googlenet.config import load_config
from googlenet.errors import GoogLeNetError
from googlenet.extras import MissingExtraError, require
from helpers import make_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# The top-level modules of the extras' packages (tensorboard is reached through torch.utils.tensorboard).
OPTIONAL = (
    "onnx",
    "onnxscript",
    "onnxruntime",
    "openvino",
    "nncf",
    "safetensors",
    "matplotlib",
    "tensorboard",
    "captum",
    "fastapi",
    "uvicorn",
    "multipart",
    "python_multipart",
    "httpx",
    "ray",
)
VIZ = ("matplotlib", "tensorboard")


def block(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make ``names`` (and any of their submodules already loaded) unimportable, as if not installed."""
    for loaded in [m for m in sys.modules if m.split(".")[0] in names]:
        monkeypatch.setitem(sys.modules, loaded, None)
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def run_without(names: tuple[str, ...], code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter in which ``names`` cannot be imported."""
    prelude = f"import sys\nfor name in {names!r}:\n    sys.modules[name] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def test_require_imports_an_installed_submodule() -> None:
    figure = require("matplotlib.figure", "viz", "anything")  # the submodule itself, not its package
    assert figure.__name__ == "matplotlib.figure" and hasattr(figure, "Figure")


def test_require_names_the_extra_of_a_missing_module(monkeypatch: pytest.MonkeyPatch) -> None:
    block(monkeypatch, "onnx")
    with pytest.raises(MissingExtraError) as caught:
        require("onnx", "deploy", "export --format onnx")
    assert str(caught.value) == (
        "export --format onnx needs the [deploy] extra (onnx is not installed): pip install 'googlenet[deploy]'"
    )
    assert isinstance(caught.value, GoogLeNetError) and isinstance(caught.value, ImportError)


def test_require_of_a_submodule_names_the_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    block(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtraError, match=r"^drawing needs the \[viz\] extra \(matplotlib is not installed\)"):
        require("matplotlib.figure", "viz", "drawing")


def test_require_refuses_an_unknown_extra() -> None:
    with pytest.raises(ValueError, match="unknown extra"):
        require("json", "gpu", "anything")


def test_no_module_imports_an_optional_package_at_import_time() -> None:
    """Every module of the package, the CLI's parser (which imports every command's module) and the commands of
    the core install work with none of the extras' packages importable. One module is the [serve] extra's own:
    the server's routes (its own and the Open Inference Protocol's), which FastAPI reads at import and which only
    create_app imports, after checking, and its uvicorn connection."""
    result = run_without(
        OPTIONAL,
        """
        import importlib, pkgutil
        import googlenet
        for info in pkgutil.walk_packages(googlenet.__path__, "googlenet."):
            if not info.name.endswith((".__main__", "serve.routes", "serve.protocol_routes", "serve.connection")):
                importlib.import_module(info.name)
        from googlenet.cli import build_parser, main
        build_parser()
        for argv in (["models"], ["summary", "--model", "small"], ["costs", "--model", "small"]):
            assert main(argv) == 0, argv
        print("ok")
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("ok")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["export", "{ckpt}", "--format", "onnx", "--out", "{tmp}/x.onnx"],
            "export --format onnx needs the [deploy] extra (onnx is not installed): pip install 'googlenet[deploy]'",
        ),
        (
            ["export", "{ckpt}", "--format", "safetensors", "--out", "{tmp}/x.safetensors"],
            "export --format safetensors needs the [deploy] extra",
        ),
        (
            ["predict", "{ckpt}", "{tmp}", "--backend", "onnxruntime"],
            "--backend onnxruntime needs the [deploy] extra (onnxruntime is not installed)",
        ),
        (["predict", "{ckpt}", "{tmp}", "--backend", "openvino"], "--backend openvino needs the [deploy] extra"),
        (
            ["explain", "{ckpt}", "{tmp}", "--out", "{tmp}/x.explained"],
            "googlenet explain needs the [explain] extra (captum is not installed): pip install 'googlenet[explain]'",
        ),
        (
            ["serve", "{ckpt}"],
            "googlenet serve needs the [serve] extra (fastapi is not installed): pip install 'googlenet[serve]'",
        ),
    ],
)
def test_a_command_that_needs_a_missing_extra_says_so_in_one_line(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    ckpt = make_checkpoint(tmp_path / "model.pt")
    argv = [a.format(ckpt=ckpt, tmp=tmp_path) for a in argv]
    result = run_without(OPTIONAL, "from googlenet.cli import main\nsys.exit(main(sys.argv[1:]))", *argv)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"googlenet: error: {message}"), result.stderr
    assert not list(tmp_path.glob("x.*"))


def test_report_without_matplotlib_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    block(monkeypatch, *VIZ)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "googlenet: error: googlenet report needs the [viz] extra (matplotlib is not installed): " + (
        "pip install 'googlenet[viz]'\n"
    )
    assert not (tmp_path / "report.md").exists()


def test_evaluate_without_matplotlib_writes_the_json_and_skips_the_picture(
    tmp_path: Path, fashion_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(None, ["data.val_fraction=0.005"])  # 300 validation images: quick
    ckpt = make_checkpoint(tmp_path / "checkpoints" / "best.pt", config=config.to_dict())
    block(monkeypatch, *VIZ)
    argv = ["evaluate", str(ckpt), "--split", "val", "--data-root", str(fashion_root), "--backend", "torch"]
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "eval_val.json").read_text())
    assert result["num_samples"] == 300
    assert not (tmp_path / "confusion_val.png").exists()
    assert f"wrote {tmp_path / 'eval_val.json'}\n" in out
    assert "no confusion matrix picture: drawing the confusion matrix needs the [viz] extra" in out


def test_the_plots_leave_the_callers_matplotlib_backend_alone(tmp_path: Path) -> None:
    """Importing and drawing with googlenet.plots neither switches the backend nor touches pyplot."""
    result = run_without(
        (),
        """
        import matplotlib
        matplotlib.use("svg")
        import torch
        from PIL import Image
        from googlenet import plots
        out = sys.argv[1]
        plots.confusion_png(torch.eye(3, dtype=torch.long) * 5, ["a", "b", "c"], out + "/c.png", "confusion")
        plots.curves_png([{"epoch": 1, "train_loss": 1.0, "lr": 0.1}, {"epoch": 2, "train_loss": 0.5, "lr": 0.05}],
                         out + "/curves.png", "curves")
        plots.image_grid_png([("grey", [Image.new("L", (8, 8))]), ("red", [Image.new("RGB", (8, 8), "red")] * 2)],
                             out + "/grid.png", "grid")
        print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
        """,
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["svg", "False"]
    for name in ("c", "curves", "grid"):
        assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG")


def _requirements(entries: list[str]) -> dict[str, str]:
    return {re.split(r"[<>=!~\[; ]", e, maxsplit=1)[0].lower(): e for e in entries}


def test_pyproject_has_a_small_core_lower_bounds_and_the_promised_extras() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _requirements(project["dependencies"])
    assert sorted(core) == ["numpy", "pillow", "torch", "torchvision", "tqdm"]
    extras = {name: _requirements(reqs) for name, reqs in project["optional-dependencies"].items()}
    assert sorted(extras["deploy"]) == ["nncf", "onnx", "onnxruntime", "onnxscript", "openvino", "safetensors"]
    assert sorted(extras["viz"]) == ["matplotlib", "tensorboard"]
    assert {"pytest", "ruff", "mypy", "hypothesis"} <= set(extras["dev"])
    assert sorted(extras["explain"]) == ["captum", "matplotlib"]
    assert {"nbclient", "nbformat", "ipykernel"} <= set(extras["dev"])  # the walkthrough notebook's test
    assert sorted(extras["serve"]) == ["fastapi", "httpx", "python-multipart", "uvicorn"]
    assert "playwright" in extras["dev"]  # the browser test of the server's page
    assert sorted(extras["ray"]) == ["googlenet", "ray"] and "ray[serve]" in extras["ray"]["ray"]
    assert project["optional-dependencies"]["all"] == ["googlenet[deploy,viz,explain,serve,ray]"]
    pinned = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pinned[name.strip().lower()] = version.strip()
    groups = (core, extras["deploy"], extras["viz"], extras["explain"], extras["serve"], extras["dev"])
    for group in (*groups, {"ray": extras["ray"]["ray"]}):
        for name, requirement in group.items():
            # a lower bound and no cap (caps in a library make resolver conflicts), and an exact pin for set-up and CI
            assert ">=" in requirement and "<" not in requirement and "==" not in requirement, requirement
            assert name in pinned, f"constraints.txt does not pin {name}"
