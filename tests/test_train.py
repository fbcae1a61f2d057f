"""Training on a small real subset: the loss falls, resume is exact, and a checkpoint alone serves
evaluate, predict and report."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from googlenet.cli import main
from googlenet.config import Config, load_config
from googlenet.data import build_data, load_fashion_mnist
from googlenet.evaluation.evaluate import evaluate_checkpoint
from googlenet.evaluation.predict import predict_paths
from googlenet.report import write_report
from googlenet.run.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from googlenet.run.metrics import evaluate_batches
from googlenet.training.loop import TrainingDiverged, build_model, resume, train
from googlenet.training.loss import training_loss
from googlenet.training.optim import WarmupEMA

TINY = [
    "model.name=small",  # the preset's recipe on the 28 px variant: the cheapest full-width model
    "data.image_size=28",
    "data.train_subset=96",
    "data.val_fraction=0.005",  # 300 validation images
    "data.batch_size=32",
    "data.eval_batch_size=300",
    "train.epochs=2",
    "train.precision=fp32",
    "train.channels_last=false",
    "train.deterministic=true",
    "train.ema_decay=0.9",
    "schedule.warmup_epochs=0.5",
]


def tiny_config(root: Path, *extra: str) -> Config:
    return load_config(
        Path(__file__).resolve().parents[1] / "configs" / "fashion-mnist.toml", [f'data.root="{root}"', *TINY, *extra]
    )


def quiet(_: str) -> None:
    pass


def sgd_groups(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The SGD parameter groups of an optimizer state dict: its own, or those of its SGD part beside Muon's."""
    parts = state.get("parts", [state])
    return [group for part in parts for group in part["param_groups"] if "fused" in group]


@pytest.mark.slow
def test_a_few_steps_lower_the_loss(fashion_root: Path) -> None:
    config = tiny_config(fashion_root, "data.train_subset=64", "data.augment=none", "optim.label_smoothing=0")
    data = build_data(config.data, in_channels=0, seed=0)
    torch.manual_seed(0)
    model = build_model(config, 10, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = list(data.train.epoch(0))
    model.train()
    pass_losses = []
    for _ in range(6):
        losses = []
        for x, y in batches:
            loss, _ = training_loss(model, x, y, aux_weight=0.3, label_smoothing=0.0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        pass_losses.append(sum(losses) / len(losses))
    # The same real images, six passes: the loss (main + 0.3 x both auxiliary losses) must fall well.
    assert pass_losses[-1] < 0.7 * pass_losses[0], pass_losses


@pytest.fixture(scope="module")
def finished_run(fashion_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    # With random erasing, so that the bit-exact resume below also covers the erased rectangles.
    result = train(tiny_config(fashion_root, "data.erase=0.5"), out, log=quiet)
    assert result.stopped == "finished" and result.step == 6
    return out


@pytest.mark.slow
def test_resume_after_n_steps_is_bit_identical(fashion_root: Path, finished_run: Path, tmp_path: Path) -> None:
    stopped = train(tiny_config(fashion_root, "data.erase=0.5", "train.max_steps=4"), tmp_path, log=quiet)
    assert stopped.stopped == "max_steps" and stopped.step == 4
    last = tmp_path / "checkpoints" / "last.pt"
    payload = load_checkpoint(last)
    assert payload["position"] == {"epoch": 1, "batch": 1, "step": 4}
    for group in sgd_groups(payload["optimizer"]):
        group["fused"] = None  # as written by an optimizer without the fused kernel (an older run, another device)
    save_checkpoint(last, payload)
    resumed = resume(tmp_path, ["train.max_steps=0"], log=quiet)
    assert resumed.stopped == "finished" and resumed.step == 6
    a = load_checkpoint(finished_run / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    for key in ("state_dict", "ema_state_dict"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    # The stop at step 4 validated there (a partial row); the epoch rows are the uninterrupted run's.
    assert [h["epoch"] for h in b["history"]] == [1, 1.3333, 2] and b["history"][1]["partial"]
    assert [h["val_top1"] for h in a["history"]] == [h["val_top1"] for h in b["history"] if not h.get("partial")]
    # the resumed optimizer runs the kernel this device supports (fused SGD on CPU), not the checkpoint's
    assert {g["fused"] for g in sgd_groups(b["optimizer"])} == {True}


@pytest.mark.slow
def test_reading_the_loss_back_every_few_steps_changes_nothing(
    fashion_root: Path, finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a GPU the loop reads the statistics back every few dozen steps; here, every 4 (steps 4 and 6 of 6).
    monkeypatch.setattr("googlenet.training.state.settle_interval", lambda device: 4)
    result = train(tiny_config(fashion_root, "data.erase=0.5"), tmp_path, log=quiet)
    a = load_checkpoint(finished_run / "checkpoints" / "last.pt")
    b = load_checkpoint(result.last_checkpoint)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    for every_step, lazily in zip(a["history"], b["history"], strict=True):
        assert every_step["train_top1"] == lazily["train_top1"]
        assert every_step["train_loss"] == pytest.approx(lazily["train_loss"], rel=1e-12)  # summed in another order


@pytest.mark.slow
def test_divergence_is_caught_when_the_loss_is_read_lazily(
    fashion_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("googlenet.training.state.settle_interval", lambda device: 4)
    # SGD for every weight: Muon's orthogonalised steps have a bounded size, so no learning rate makes them overflow
    config = tiny_config(
        fashion_root, "optim.name=sgd", "optim.lr=1e5", "schedule.name=constant", "schedule.warmup_epochs=0"
    )
    with pytest.raises(TrainingDiverged, match=r"the loss became nan by step [34] .*lower optim\.lr"):
        train(config, tmp_path, log=quiet)
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


@pytest.mark.slow
def test_run_folder_contents(finished_run: Path) -> None:
    lines = (finished_run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert {"train_loss", "val_top1", "ema_val_top1", "lr", "img_per_s"} <= set(json.loads(lines[-1]))
    assert any((finished_run / "tensorboard").iterdir())
    best = load_checkpoint(finished_run / "checkpoints" / "best.pt")
    assert "optimizer" not in best and best["class_names"][0] == "T-shirt/top"
    assert best["preprocessing"]["in_channels"] == 1


@pytest.mark.slow
def test_evaluate_from_checkpoint_alone(finished_run: Path, tmp_path: Path) -> None:
    report = evaluate_checkpoint(finished_run / "checkpoints" / "best.pt", split="val", out_dir=tmp_path)
    assert report.result.num_samples == 300
    assert 0.0 <= report.result.top1 <= report.result.top5 <= 1.0
    assert int(report.result.confusion.sum()) == 300
    saved = json.loads((tmp_path / "eval_val.json").read_text())
    assert saved["top1"] == report.result.top1 and len(saved["per_class"]) == 10
    assert (tmp_path / "confusion_val.png").stat().st_size > 1000
    # The same numbers through the library's evaluate on the checkpoint's own model.
    model, prep, names = model_from_checkpoint(load_checkpoint(finished_run / "checkpoints" / "best.pt"))
    assert model.aux1 is None and names[9] == "Ankle boot" and prep.image_size == 28


@pytest.mark.slow
def test_predict_real_images(fashion_root: Path, finished_run: Path, tmp_path: Path) -> None:
    images, _, _ = load_fashion_mnist(fashion_root, train=False, allow_download=False)
    for i in range(3):
        Image.fromarray(images[i].numpy()).save(tmp_path / f"test_{i}.png")
    Image.fromarray(images[3].numpy()).convert("RGB").save(tmp_path / "colour.jpg")  # converted to grayscale
    predictions = predict_paths(finished_run / "checkpoints" / "best.pt", [tmp_path], top_k=3)
    assert [p.path.name for p in predictions] == ["colour.jpg", "test_0.png", "test_1.png", "test_2.png"]
    for p in predictions:
        assert len(p.top) == 3 and p.top[0][1] >= p.top[1][1] >= p.top[2][1]
        assert all(0.0 <= v <= 1.0 for _, v in p.top) and sum(v for _, v in p.top) <= 1.0 + 1e-5
        assert {c for c, _ in p.top} <= set(load_checkpoint(finished_run / "checkpoints" / "best.pt")["class_names"])


@pytest.mark.slow
def test_predict_matches_evaluation_inputs(fashion_root: Path, finished_run: Path, tmp_path: Path) -> None:
    # A PNG of a test image through predict gives the same probabilities as the in-memory test batch.
    checkpoint = finished_run / "checkpoints" / "best.pt"
    model, prep, _ = model_from_checkpoint(load_checkpoint(checkpoint))
    images, _, _ = load_fashion_mnist(fashion_root, train=False, allow_download=False)
    Image.fromarray(images[0].numpy()).save(tmp_path / "zero.png")
    config = tiny_config(fashion_root)
    from googlenet.data import fashion_mnist_test

    x, _ = next(fashion_mnist_test(config.data, prep, allow_download=False).epoch(0))
    with torch.no_grad():
        expected = model(x[:1]).softmax(1)[0]
    top = predict_paths(checkpoint, [tmp_path / "zero.png"], top_k=1)[0].top[0]
    assert top[1] == pytest.approx(float(expected.max()), abs=1e-5)


@pytest.mark.slow
def test_report(finished_run: Path) -> None:
    path = write_report(finished_run, explain=False)  # explain.md has its own tests (test_explain.py)
    text = path.read_text()
    assert "| 2 |" in text and "curves.png" in text and "onecycle" in text
    assert "augmentation flip, random erasing 0.5" in text
    assert (finished_run / "curves.png").stat().st_size > 1000


def test_cli_train_rejects_bad_keys(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = str(Path(__file__).resolve().parents[1] / "configs" / "fashion-mnist.toml")
    code = main(["train", "--config", config, "--set", "optim.lrr=0.1", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "unknown config key 'optim.lrr'" in err and err.count("\n") == 1


@pytest.mark.slow
def test_cli_refuses_to_overwrite_a_run(capsys: pytest.CaptureFixture[str], finished_run: Path) -> None:
    config = str(Path(__file__).resolve().parents[1] / "configs" / "fashion-mnist.toml")
    code = main(["train", "--config", config, "--out", str(finished_run)])
    assert code == 2 and "already holds a run" in capsys.readouterr().err


@pytest.mark.slow
def test_divergence_stops_with_a_clear_message(fashion_root: Path, tmp_path: Path) -> None:
    # SGD for every weight: Muon's orthogonalised steps have a bounded size, so no learning rate makes them overflow
    config = tiny_config(
        fashion_root, "optim.name=sgd", "optim.lr=1e5", "schedule.name=constant", "schedule.warmup_epochs=0"
    )
    with pytest.raises(TrainingDiverged, match=r"lower optim\.lr"):
        train(config, tmp_path, log=quiet)


@pytest.mark.slow
def test_cli_evaluate_and_predict(
    capsys: pytest.CaptureFixture[str], finished_run: Path, fashion_root: Path, tmp_path: Path
) -> None:
    images, _, _ = load_fashion_mnist(fashion_root, train=False, allow_download=False)
    Image.fromarray(images[0].numpy()).save(tmp_path / "boot.png")
    checkpoint = str(finished_run / "checkpoints" / "best.pt")
    assert main(["predict", checkpoint, str(tmp_path / "boot.png"), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["path"].endswith("boot.png") and len(rows[0]["top"]) == 3
    assert main(["evaluate", checkpoint, "--split", "val", "--out", str(tmp_path), "--no-progress"]) == 0
    assert "top-1" in capsys.readouterr().out
    assert main(["predict", checkpoint, str(tmp_path / "missing.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_helper_counts(finished_run: Path, fashion_root: Path) -> None:
    model, prep, names = model_from_checkpoint(load_checkpoint(finished_run / "checkpoints" / "best.pt"))
    config = tiny_config(fashion_root)
    from googlenet.data import eval_split

    split = eval_split(config.data, prep, "val", 0)
    result = evaluate_batches(model, split, len(names))
    labels = torch.cat([y for _, y in split.epoch(0)])
    assert result.confusion.sum(1).tolist() == torch.bincount(labels, minlength=10).tolist()
    assert result.top1 == pytest.approx(float(result.confusion.diag().sum()) / 300)


def test_ema_follows_the_warmup_formula_and_copies_counters() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    ema = WarmupEMA(model, 0.9)
    ema.update_parameters(model)  # the first update copies
    expected = model[0].weight.detach().clone()
    for n in range(1, 5):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model(torch.randn(4, 1, 3, 3))  # training mode: BatchNorm counts a batch
        ema.update_parameters(model)
        d = min(0.9, (1 + n) / (10 + n))
        expected = expected * d + model[0].weight.detach() * (1 - d)
    torch.testing.assert_close(ema.module[0].weight, expected)
    assert int(ema.module[1].num_batches_tracked) == 4
    assert int(ema.n_averaged) == 5 and ema.n_averaged.device.type == "cpu"  # read at every step without a sync
    # BatchNorm's running statistics are averaged like the weights, not copied.
    assert not torch.equal(ema.module[1].running_mean, model[1].running_mean)


@pytest.mark.slow
def test_flip_tta_averages_each_image_with_its_mirror(finished_run: Path, fashion_root: Path, tmp_path: Path) -> None:
    from googlenet.data import eval_split
    from googlenet.run.metrics import ViewAverage

    checkpoint = finished_run / "checkpoints" / "best.pt"
    model, prep, _ = model_from_checkpoint(load_checkpoint(checkpoint))
    model.eval()
    x, _ = next(iter(eval_split(tiny_config(fashion_root).data, prep, "val", 0).epoch(0)))
    with torch.no_grad():
        averaged = ViewAverage(model)(x)
        by_hand = (model(x).softmax(1) + model(x.flip(3)).softmax(1)) / 2
        assert torch.allclose(averaged.exp(), by_hand, atol=1e-6)
        assert torch.allclose(ViewAverage(model)(x.flip(3)), averaged, atol=1e-5)  # a mirror image: same answer
    report = evaluate_checkpoint(checkpoint, split="val", out_dir=tmp_path, tta="flip")
    plain = evaluate_checkpoint(checkpoint, split="val", out_dir=tmp_path / "plain")
    assert json.loads((tmp_path / "eval_val.json").read_text())["tta"] == "flip"
    assert report.result.num_samples == plain.result.num_samples == 300
    assert report.result.loss != plain.result.loss  # the mirrored views changed the predictions
    assert main(["evaluate", str(checkpoint), "--tta", "flip", "--crops", "10"]) == 2


@pytest.mark.slow
def test_without_validation_best_pt_is_the_latest_averaged_model(fashion_root: Path, tmp_path: Path) -> None:
    result = train(tiny_config(fashion_root, "data.val_fraction=0"), tmp_path, log=quiet)
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["position"]["step"] == result.step == 6  # not stuck at the first epoch's
    assert best["weights"] == "ema" and "val_top1" not in best["history"][-1]
