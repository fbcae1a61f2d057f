"""The same commands on an image folder (torchvision ImageFolder): the user's own data."""

from pathlib import Path

import pytest

from googlenet.config import load_config
from googlenet.evaluation.evaluate import evaluate_checkpoint
from googlenet.evaluation.predict import predict_paths
from googlenet.run.checkpoint import load_checkpoint
from googlenet.training.loop import train
from helpers import COLOURS, make_folder


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_folder(tmp_path_factory.mktemp("images"))
    out = tmp_path_factory.mktemp("run")
    config = load_config(
        None,
        [
            "data.dataset=folder",
            f'data.root="{root}"',
            "data.image_size=32",
            "data.batch_size=8",
            "data.workers=0",
            "data.augment=flip",
            "model.name=small",
            "train.epochs=2",
            "train.precision=fp32",
            "train.channels_last=false",
            "optim.lr=0.02",
        ],
    )
    result = train(config, out, log=lambda _: None)
    assert result.stopped == "finished" and result.step == 6
    return out


def test_folder_checkpoint_records_classes_and_preprocessing(folder_run: Path) -> None:
    payload = load_checkpoint(folder_run / "checkpoints" / "best.pt")
    assert payload["class_names"] == ["blue", "green", "red"]
    assert payload["preprocessing"]["in_channels"] == 3 and payload["preprocessing"]["image_size"] == 32
    assert payload["preprocessing"]["resize"] == round(32 * 256 / 224)


def test_folder_evaluate_and_predict(folder_run: Path, tmp_path: Path) -> None:
    report = evaluate_checkpoint(folder_run / "checkpoints" / "best.pt", split="val", out_dir=tmp_path)
    assert report.result.num_samples == 9 and report.result.confusion.shape == (3, 3)
    root = Path(load_checkpoint(folder_run / "checkpoints" / "best.pt")["config"]["data"]["root"])
    predictions = predict_paths(folder_run / "checkpoints" / "best.pt", [root / "val" / "red"], top_k=2)
    assert len(predictions) == 3 and all(p.top[0][0] in COLOURS for p in predictions)
