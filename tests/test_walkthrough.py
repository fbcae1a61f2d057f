"""docs/walkthrough.ipynb runs top to bottom on real Fashion-MNIST, and says what it should."""

import re
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "walkthrough.ipynb"


def _text(cell: dict) -> str:  # type: ignore[type-arg]
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output["text"])
        elif "data" in output:
            parts.append(output["data"].get("text/markdown", "") or output["data"].get("text/plain", ""))
    return "".join(parts)


@pytest.mark.slow
def test_walkthrough_runs_and_its_numbers_hold(
    fashion_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    monkeypatch.setenv("GOOGLENET_DATA", str(fashion_root))
    monkeypatch.setenv("GOOGLENET_MINUTES", "2")  # a third less than the reader's 3: the suite stays short
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    text = [_text(cell) for cell in code]
    everything = "\n".join(text)

    assert "6,998,552 parameters without the auxiliary heads" in everything
    assert "main (1, 1000) aux1 (1, 1000) aux2 (1, 1000)" in everything
    assert "inception (4c)" in everything and "9,408" in everything  # Table 1, with conv1's true count
    assert re.search(r"naive", everything, re.IGNORECASE)  # the cost of naive vs reduced modules
    stopped = re.search(r"stopped: (\w+) after (\d+) steps", everything)
    assert stopped and int(stopped.group(2)) > 20, everything[-2000:]
    top1 = float(re.search(r"top-1 (0\.\d+)", everything).group(1))  # type: ignore[union-attr]
    assert top1 > 0.5  # far above chance (0.1) after two minutes on real data
    cam = re.search(r"CAM mean \+ bias: \[(.*)\]\nlogit: +\[(.*)\]", everything)
    assert cam, everything
    pairs = zip(map(float, cam.group(1).split(",")), map(float, cam.group(2).split(",")), strict=True)
    assert all(abs(a - b) < 1e-3 for a, b in pairs)
    assert "aux1 (after 4a)" in everything and "main (after 5b)" in everything
    vis = re.search(r"(-?[\d.]+) on noise -> (-?[\d.]+)", everything)
    assert vis and float(vis.group(2)) > float(vis.group(1))
    assert re.search(r"on 500 test images: mean -?[\d.]+, the most exciting one -?[\d.]+", everything)
    pictures = sum("image/png" in output.get("data", {}) for cell in code for output in cell.get("outputs", []))
    assert pictures >= 4  # confusion matrix, CAM overlay, branch shares, visualisation
    assert not any(output.get("output_type") == "error" for cell in code for output in cell.get("outputs", []))
