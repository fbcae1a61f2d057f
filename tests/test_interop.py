"""torchvision weights in; ONNX, torch.export and safetensors out; torch.hub; fine-tuning."""

from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from googlenet import count_parameters
from googlenet.cli import main
from googlenet.config import load_config
from googlenet.deploy.export import export_checkpoint, load_safetensors
from googlenet.deploy.interop import from_torchvision, import_torchvision
from googlenet.evaluation.predict import predict_paths
from googlenet.run.checkpoint import load_checkpoint, model_from_checkpoint
from googlenet.training.loop import train
from helpers import make_checkpoint, make_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def torchvision_model() -> nn.Module:
    torch.manual_seed(1)
    model = torchvision.models.googlenet(weights=None, aux_logits=True, transform_input=True, init_weights=True)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so their handling is tested too
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_imported_weights_predict_like_torchvision(
    torchvision_model: nn.Module, photos: list[Path], tmp_path: Path
) -> None:
    checkpoint = import_torchvision(torchvision_model.state_dict(), tmp_path / "tv.pt")
    photos = photos[:4]
    reference = torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1.transforms()
    x = torch.stack([reference(Image.open(p).convert("RGB")) for p in photos])
    with torch.no_grad():
        expected = torchvision_model(x).softmax(1)
    predictions = predict_paths(checkpoint, photos, top_k=5)
    categories = torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1.meta["categories"]
    for row, prediction in zip(expected, predictions, strict=True):
        values, indices = row.topk(5)
        assert [c for c, _ in prediction.top] == [categories[i] for i in indices]
        assert [v for _, v in prediction.top] == pytest.approx(values.tolist(), abs=1e-5)
    payload = load_checkpoint(checkpoint)
    assert payload["preprocessing"] == {
        "image_size": 224,
        "resize": 256,
        "in_channels": 3,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }
    assert len(payload["class_names"]) == 1000


def test_from_torchvision_file_and_cli(
    torchvision_model: nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "googlenet-1378be20.pth"
    torch.save(torchvision_model.state_dict(), weights)
    model, prep, names = from_torchvision(weights)
    assert model.variant == "torchvision" and model.has_aux and prep.mean == [0.5] * 3 and names[0] == "tench"
    assert main(["import-torchvision", str(weights), "--out", str(tmp_path / "c.pt")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["import-torchvision", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "d.pt")]) == 2


def test_hub_cache_is_searched(torchvision_model: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    torch.save(torchvision_model.state_dict(), tmp_path / "checkpoints" / "googlenet-1378be20.pth")
    model, _, _ = from_torchvision(None)
    assert count_parameters(model) == 13_004_888


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.pt")


def test_onnx_export_matches_eager_on_random_and_real_images(
    small_checkpoint: Path, photos: list[Path], tmp_path: Path
) -> None:
    result = export_checkpoint(small_checkpoint, "onnx", tmp_path / "m.onnx", check_images=photos[:3])
    assert result.random_inputs == 3 and result.real_inputs == 3 and result.max_abs_diff < 1e-3
    import onnx

    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch axis
    assert not any("aux" in node.name for node in graph.node)
    # One self-contained file: no external weights beside it, and nothing temporary left behind.
    assert [f.name for f in tmp_path.iterdir()] == ["m.onnx"]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)


def test_torch_export_program_reloads(
    small_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(small_checkpoint), "--format", "torch-export", "--out", str(tmp_path / "m.pt2")]) == 0
    assert "max |difference|" in capsys.readouterr().out
    program = torch.export.load(tmp_path / "m.pt2")
    assert program.module()(torch.randn(5, 1, 28, 28)).shape == (5, 10)


def test_safetensors_round_trip_keeps_metadata(small_checkpoint: Path, tmp_path: Path) -> None:
    export_checkpoint(small_checkpoint, "safetensors", tmp_path / "m.safetensors")
    model, prep, names = load_safetensors(tmp_path / "m.safetensors")
    original, original_prep, original_names = model_from_checkpoint(load_checkpoint(small_checkpoint))
    assert names == original_names and prep == original_prep and model.aux1 is None
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=0, atol=0)


def test_hub_entry_point() -> None:
    model = torch.hub.load(str(ROOT), "googlenet", "small", source="local", in_channels=1, num_classes=10)
    assert model.variant == "small" and model(torch.randn(1, 1, 28, 28)).shape == (1, 10)
    paper = torch.hub.load(str(ROOT), "googlenet_paper", source="local", aux=False)
    assert count_parameters(paper) == 6_998_552
    tv = torch.hub.load(str(ROOT), "googlenet_torchvision", source="local", aux=False)
    assert count_parameters(tv) == 6_624_904


def fine_tune(init: Path, root: Path, out: Path, *extra: str) -> Path:
    config = load_config(
        None,
        [
            "data.dataset=folder",
            f'data.root="{root}"',
            "data.image_size=64",
            "data.batch_size=8",
            "data.workers=0",
            "data.augment=flip",
            "model.name=torchvision",
            f'model.init="{init}"',
            "train.epochs=1",
            "train.precision=fp32",
            "train.channels_last=false",
            "train.ema_decay=0",
            "optim.lr=0.05",
            *extra,
        ],
    )
    train(config, out, log=lambda _: None)
    return out / "checkpoints" / "last.pt"


def test_fine_tune_with_frozen_features_changes_only_the_heads(torchvision_model: nn.Module, tmp_path: Path) -> None:
    init = import_torchvision(torchvision_model.state_dict(), tmp_path / "tv.pt")
    before = load_checkpoint(init)["state_dict"]
    after = load_checkpoint(
        fine_tune(init, make_folder(tmp_path / "imgs"), tmp_path / "frozen", "model.freeze_features=true")
    )
    state = after["state_dict"]
    assert state["fc.weight"].shape == (3, 1024) and after["class_names"] == ["blue", "green", "red"]
    assert after["preprocessing"]["mean"] == [0.5] * 3  # inherited from the imported weights
    for key, tensor in state.items():
        if key.startswith(("fc.", "aux1.", "aux2.")):
            continue
        assert torch.equal(tensor, before[key]), f"{key} changed although features were frozen"
    assert not torch.equal(state["aux1.fc1.weight"], before["aux1.fc1.weight"])  # the heads did learn


def test_fine_tune_with_discriminative_learning_rates(torchvision_model: nn.Module, tmp_path: Path) -> None:
    init = import_torchvision(torchvision_model.state_dict(), tmp_path / "tv.pt")
    before = load_checkpoint(init)["state_dict"]
    after = load_checkpoint(
        fine_tune(init, make_folder(tmp_path / "imgs"), tmp_path / "ft", "optim.backbone_lr_mult=0.1")
    )
    groups = after["optimizer"]["param_groups"]
    assert sorted({g["lr_mult"] for g in groups}) == [0.1, 1.0]
    assert not torch.equal(after["state_dict"]["conv1.conv.weight"], before["conv1.conv.weight"])
