"""The explain tools are right, not just shaped right: CAMs against the fc identity and a planted region,
Grad-CAM against CAM, branch shares against silenced branches, early exits against the heads themselves,
feature visualisation against its own objective; and the commands on real images and real data."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from googlenet.cli import main
from googlenet.config import Config
from googlenet.explain import (
    LayerError,
    branch_shares,
    class_activation_maps,
    deep_dream,
    grad_cam,
    head_accuracy,
    layer_response,
    resolve_layer,
    visualize_feature,
)
from googlenet.explain.cam import normalise, upsample
from googlenet.explain.layers import INCEPTION_LAYERS, capture
from googlenet.model import create_model
from googlenet.report import write_report
from googlenet.run.checkpoint import save_checkpoint

SMALL_PREP = {"image_size": 28, "resize": 28, "in_channels": 1, "mean": [0.29], "std": [0.35]}


def small_model(aux: bool = False) -> nn.Module:
    return create_model("small", num_classes=10, aux=aux).double().eval()


@pytest.mark.parametrize(
    ("spelling", "path"),
    [
        ("inception4c", "inception4c"),
        ("inception_4c/output", "inception4c"),
        ("mixed4c", "inception4c"),
        ("4c", "inception4c"),
        ("Mixed5B", "inception5b"),
        ("conv2/3x3", "conv3"),
        ("conv2d2", "conv3"),
        ("conv1/7x7_s2", "conv1"),
        ("inception_4c/5x5_reduce", "inception4c.branch3.0"),
        ("mixed4c_5x5_bottleneck", "inception4c.branch3.0"),
        ("inception_3a/pool_proj", "inception3a.branch4"),
        ("mixed3a_3x3_pre_relu", "inception3a.branch2.1.bn"),
        ("inception4c.branch2", "inception4c.branch2"),
    ],
)
def test_three_spellings_of_a_layer(spelling: str, path: str) -> None:
    assert resolve_layer(create_model("small", num_classes=10), spelling) == path


def test_unknown_layer_and_channel_name_what_is_valid() -> None:
    model = create_model("small", num_classes=10)
    with pytest.raises(LayerError, match=r"unknown layer 'inception6a'; valid: conv1.*inception3a\.\.inception5b"):
        resolve_layer(model, "inception6a")
    with pytest.raises(LayerError, match="before a ReLU"):
        resolve_layer(model, "mixed4c_pre_relu")  # a module output has no single pre-ReLU value
    with pytest.raises(LayerError, match=r"channels 0\.\.511; got channel 512"):
        visualize_feature(model, "inception4c", channel=512, image_size=28, mean=[0.5], std=[0.5], steps=1)


def test_cam_is_the_fc_identity() -> None:
    """mean over positions of CAM_c + b_c = logit_c, for every class, in float64."""
    model = small_model()
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    classes = torch.arange(10).repeat(3, 1)
    cams = class_activation_maps(model, x, classes)  # (3, 10, 3, 3)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
    assert cams.shape == (3, 10, 3, 3)
    torch.testing.assert_close(cams.mean(dim=(2, 3)) + model.fc.bias, logits, rtol=0, atol=1e-10)
    # and it is the fc-weighted sum of the last feature map, channel by channel
    manual = (model.fc.weight[4].view(1, -1, 1, 1) * features).sum(1)
    torch.testing.assert_close(cams[:, 4], manual, rtol=0, atol=1e-10)


def test_grad_cam_at_the_last_module_is_relu_cam_over_positions() -> None:
    """With a global average pool and one linear layer, Grad-CAM at inception5b = ReLU(CAM) / (h * w)."""
    model = small_model()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    classes = torch.tensor([[1, 7], [3, 0]])
    cams = class_activation_maps(model, x, classes)
    maps = grad_cam(model, x, "mixed5b", classes)  # Lucid's spelling through captum
    torch.testing.assert_close(maps.double(), cams.clamp(min=0) / 9, rtol=1e-5, atol=1e-7)


class Spotlight(nn.Module):
    """Stands in for inception5b: 1024 feature channels that all hold the input image's brightness, pooled
    to inception5b's resolution. With fc weights on channel 0 only, the class's evidence is the bright region."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.image = torch.empty(0)
        model.conv1.register_forward_pre_hook(lambda _m, inputs: setattr(self, "image", inputs[0]))

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool2d(self.image, x.shape[-2:])  # (N, 1, h, w)
        return pooled.expand(-1, 1024, -1, -1) + 0 * x.sum(1, keepdim=True)  # keeps the graph through the net


def test_cam_and_grad_cam_peak_where_the_decisive_region_is() -> None:
    model = create_model("small", num_classes=10, aux=False).eval()
    model.inception5b = Spotlight(model)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.weight[3, 0] = 5.0  # class 3 is decided by channel 0: the brightness
    image = torch.zeros(1, 1, 28, 28)
    image[..., 19:28, 0:9] = 1.0  # a bright patch in the bottom-left corner
    assert model(image).argmax(1).item() == 3
    target = torch.tensor([[3]])
    for maps in (class_activation_maps(model, image, target), grad_cam(model, image, "inception5b", target)):
        heat = normalise(upsample(maps, (28, 28)))[0, 0]
        row, column = divmod(int(heat.argmax()), 28)
        assert row >= 19 and column < 9, (row, column)
        assert heat[:9, 19:].max() < 0.2  # the far corner is cold


def test_branch_shares_sum_to_one_and_see_a_silenced_branch() -> None:
    model = small_model()
    # Silence inception4b's pool branch: zero its 1x1 conv and a negative BN bias, so its ReLU outputs 0.
    block = model.inception4b.branch4[1]
    with torch.no_grad():
        block.conv.weight.zero_()
        block.bn.bias.fill_(-1.0)
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    shares = branch_shares(model, x)
    for values in (shares.energy, shares.attribution):
        assert values.shape == (4, 9, 4)
        assert bool((values >= 0).all())
        torch.testing.assert_close(values.sum(2), torch.ones(4, 9), rtol=0, atol=1e-5)
        assert float(values[:, 3, 3].abs().max()) == 0.0  # 4b's pool branch carries nothing
    torch.testing.assert_close(shares.channels.sum(1), torch.ones(9))
    assert shares.channels[0].tolist() == pytest.approx([64 / 256, 128 / 256, 32 / 256, 32 / 256])
    # Energy by hand for 5b: each branch's squared activations over the module's.
    with torch.no_grad(), capture(model, ["inception5b"]) as seen:
        model(x)
    parts = [p.square().sum(dim=(1, 2, 3)) for p in seen["inception5b"].split([384, 384, 128, 128], 1)]
    manual = torch.stack(parts, 1) / sum(parts).view(-1, 1)
    torch.testing.assert_close(shares.energy[:, 8].double(), manual, rtol=1e-5, atol=1e-6)
    assert shares.predicted.tolist() == model(x).argmax(1).tolist()


def test_branch_share_attribution_follows_the_chosen_class() -> None:
    model = small_model()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    a = branch_shares(model, x, target=torch.tensor([0, 0])).attribution
    b = branch_shares(model, x, target=torch.tensor([5, 5])).attribution
    assert not torch.allclose(a, b)


def test_early_exits_are_the_heads_own_answers() -> None:
    model = small_model(aux=True)
    x = torch.randn(12, 1, 28, 28, dtype=torch.float64)
    labels = torch.arange(12) % 3
    batches = [(x[:5], labels[:5]), (x[5:], labels[5:])]
    result = head_accuracy(model, batches, [f"c{i}" for i in range(10)])
    with torch.no_grad():
        main_out, aux1, aux2 = model.forward_train(x)
    assert result.heads == ["aux1", "aux2", "main"]
    for head, output in (("main", main_out), ("aux1", aux1), ("aux2", aux2)):
        hits = output.argmax(1) == labels
        assert result.top1[head] == pytest.approx(float(hits.double().mean()))
        assert result.per_class[head][1] == pytest.approx(float(hits[labels == 1].double().mean()))
    assert result.counts[:3] == [4, 4, 4] and result.predicted.tolist() == main_out.argmax(1).tolist()
    no_aux = head_accuracy(small_model(aux=False), batches, [f"c{i}" for i in range(10)])
    assert no_aux.heads == ["main"]


def test_feature_visualisation_raises_the_channel_on_a_small_model() -> None:
    model = create_model("small", num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = visualize_feature(model, "mixed4c", channel=97, image_size=28, mean=[0.29], std=[0.35], steps=40)
    assert result.layer == "inception4c" and result.channel == 97
    assert result.end > result.start + 0.5, (result.start, result.end)
    assert result.image.shape == (1, 28, 28) and 0 <= float(result.image.min()) <= float(result.image.max()) <= 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is left as it was
    assert all(p.requires_grad for p in model.parameters())


def test_a_class_can_be_visualised_through_its_logit() -> None:
    model = create_model("small", num_classes=10)
    result = visualize_feature(model, "fc", channel=9, image_size=28, mean=[0.29], std=[0.35], steps=30)
    assert result.layer == "fc" and result.channel == 9
    x = (result.image.unsqueeze(0) - 0.29) / 0.35
    with torch.no_grad():
        logit = float(model.eval()(x)[0, 9])
    assert result.end == pytest.approx(logit, rel=1e-4) and result.end > result.start  # what rose is the logit
    whole = visualize_feature(model, "fc", image_size=28, mean=[0.29], std=[0.35], steps=3)  # all logits
    assert whole.channel is None and whole.end > 0
    with pytest.raises(LayerError, match=r"channels 0\.\.9; got channel 10"):
        visualize_feature(model, "fc", channel=10, image_size=28, mean=[0.5], std=[0.5], steps=1)


def test_a_channel_before_its_relu_is_the_module_output_before_its_relu() -> None:
    """Channel c of an Inception module's output is ReLU(the pre-ReLU value that visualisation maximises)."""
    from googlenet.explain.visualize import _pre_relu_target

    model = small_model()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    for channel in (0, 127, 128, 383, 384, 447, 448, 511):  # 4c: 1x1 128, 3x3 256, 5x5 64, pool 64
        path, local = _pre_relu_target(model, "inception4c", channel)
        with torch.no_grad(), capture(model, [path, "inception4c"], copy=True) as seen:
            model(x)
        torch.testing.assert_close(seen[path][:, local].clamp(min=0), seen["inception4c"][:, channel])
        assert float(layer_response(model, "inception4c", x, channel=channel).mean()) == pytest.approx(
            float(seen[path][:, local].mean()), abs=1e-6
        )


def test_feature_visualisation_of_a_whole_module_on_a_224px_colour_model() -> None:
    model = create_model("torchvision", num_classes=1000, aux=False)
    result = visualize_feature(
        model, "inception_3a/output", image_size=224, mean=[0.5] * 3, std=[0.5] * 3, steps=6, lr=0.1
    )
    assert result.image.shape == (3, 224, 224)
    assert result.end > result.start


def test_deep_dream_amplifies_what_the_layer_sees_in_a_photo(photos: list[Path]) -> None:
    from googlenet.data import open_image

    photo = photos[0]
    image = torch.from_numpy(np.array(open_image(photo).resize((96, 80)))).permute(2, 0, 1).float() / 255
    model = create_model("torchvision", num_classes=1000, aux=False)
    result = deep_dream(model, image, "inception4a", mean=[0.5] * 3, std=[0.5] * 3, steps=4, octaves=2)
    assert result.image.shape == (3, 80, 96)
    assert result.end > result.start
    assert float((result.image - image).abs().mean()) > 0.002  # the photo changed, and stayed a photo
    assert float((result.image - image).abs().mean()) < 0.25


def _torchvision_checkpoint(path: Path) -> Path:
    model = create_model("torchvision", num_classes=1000, aux=False)
    save_checkpoint(
        path,
        {
            "model": {"name": "torchvision", "num_classes": 1000, "in_channels": 3},
            "state_dict": model.state_dict(),
            "ema_state_dict": None,
            "weights": "model",
            "preprocessing": {"image_size": 224, "resize": 256, "in_channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3},
            "class_names": [f"class {i}" for i in range(1000)],
            "config": Config().to_dict(),
        },
    )
    return path


def test_cli_explain_real_photographs(photos: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = _torchvision_checkpoint(tmp_path / "tv.pt")
    photos = photos[:2]
    out = tmp_path / "out"
    code = main(["explain", str(checkpoint), *map(str, photos), "--out", str(out), "--layer", "inception_4c/output"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "explanations.json").read_text())
    assert summary["layer"] == "inception4c" and len(summary["images"]) == 2
    record = summary["images"][0]
    assert len(record["top"]) == 3 and record["top"][0]["probability"] >= record["top"][1]["probability"]
    shares = record["branch_shares"]["inception4c"]["energy"]
    assert sum(shares) == pytest.approx(1, abs=1e-4)
    with np.load(out / record["maps"]) as maps:
        assert maps["cam"].shape == (3, 7, 7) and maps["grad_cam"].shape == (3, 14, 14)
    with Image.open(out / record["overlay"]) as overlay:
        assert overlay.width > 600
    assert (out / "branch_shares.png").stat().st_size > 10_000
    assert "-> " in capsys.readouterr().out


def test_cli_explain_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from helpers import make_checkpoint

    checkpoint = str(make_checkpoint(tmp_path / "small.pt"))
    (tmp_path / "empty").mkdir()
    Image.new("L", (28, 28)).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    cases = {
        "unknown layer 'mixed9z'; valid: conv1": [str(tmp_path / "a.png"), "--layer", "mixed9z"],
        "holds no images": [str(tmp_path / "empty")],
        "does not exist": [str(tmp_path / "nope.png")],
        "is not an image in a format": [str(tmp_path / "bad.png")],
        "image files or folders, or --split": [],
    }
    for message, extra in cases.items():
        assert main(["explain", checkpoint, *extra, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    code = main(
        ["visualize", checkpoint, "--layer", "inception4c", "--channel", "600", "--out", str(tmp_path / "v.png")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "channels 0..511; got channel 600" in err and err.count("\n") == 1


def test_cli_visualize_channel_and_dream(
    photos: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers import make_checkpoint

    checkpoint = str(make_checkpoint(tmp_path / "small.pt"))
    out = tmp_path / "ch97.png"
    assert (
        main(["visualize", checkpoint, "--layer", "mixed4c", "--channel", "97", "--steps", "8", "--out", str(out)]) == 0
    )
    assert "inception4c channel 97: mean before ReLU" in capsys.readouterr().out
    assert main(["visualize", checkpoint, "--layer", "fc", "--channel", "9", "--steps", "4", "--out", str(out)]) == 0
    assert "class 9 (" in capsys.readouterr().out  # named by the checkpoint's class list
    with Image.open(out) as picture:
        assert picture.size == (224, 224) and picture.mode == "L"  # 28 px, enlarged 8x to be seen
    photo = photos[0]
    dream = tmp_path / "dream.png"
    args = [
        "visualize",
        checkpoint,
        "--layer",
        "inception3b",
        "--dream",
        str(photo),
        "--steps",
        "3",
        "--out",
        str(dream),
    ]
    assert main(args) == 0
    assert "inception3b: mean square" in capsys.readouterr().out and dream.stat().st_size > 1000


@pytest.fixture(scope="module")
def aux_run(fashion_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder whose best.pt is an untrained small model with auxiliary heads, on real Fashion-MNIST
    with a 300-image validation split; and one metrics row so report has something to draw."""
    run = tmp_path_factory.mktemp("explain-run")
    model = create_model("small", num_classes=10, aux=True)
    config = Config()
    config.data.root = str(fashion_root)
    config.data.val_fraction = 0.005
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    save_checkpoint(
        run / "checkpoints" / "best.pt",
        {
            "model": {"name": "small", "num_classes": 10, "in_channels": 1},
            "state_dict": model.state_dict(),
            "ema_state_dict": None,
            "weights": "model",
            "preprocessing": SMALL_PREP,
            "class_names": names,
            "config": config.to_dict(),
        },
    )
    row = {"epoch": 1, "train_loss": 2.0, "train_top1": 0.1, "val_loss": 2.3, "val_top1": 0.1}
    row |= {"img_per_s": 100.0, "lr": 0.1, "elapsed_minutes": 1.0}
    (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    return run


def test_explain_split_and_report_page(aux_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = aux_run / "by-cli"
    checkpoint = str(aux_run / "checkpoints" / "best.pt")
    args = ["explain", checkpoint, "--split", "val", "--out", str(out), "--share-images", "5", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "aux1 (after 4a)" in printed and "main (after 5b)" in printed
    record = json.loads((out / "explain.json").read_text())
    assert record["early_exits"]["per_class"]["Trouser"]["images"] > 0
    per_class = record["branch_shares"]["per_class"]
    assert set(per_class) == set(record["early_exits"]["per_class"]) and per_class["Bag"]["images"] == 5
    assert sum(per_class["Bag"]["attribution"]["inception4e"].values()) == pytest.approx(1, abs=1e-4)
    assert (out / "cams.png").stat().st_size > 10_000
    assert (out / "gradcams.png").stat().st_size > 10_000  # the finer layer's maps of the same examples

    report = write_report(aux_run, explain_split="val").read_text()
    assert "## Inside the network" in report and "[explain.md](explain.md)" in report
    page = (aux_run / "explain.md").read_text()
    assert "| **all** | **300** |" in page and "explain/cams.png" in page and "explain/gradcams.png" in page
    assert "inception5b's map is 3x3 cells, drawn upsampled" in page  # the small variant at 28 px
    assert (aux_run / "explain" / "branch_shares.png").is_file()


def test_evaluate_heads_all(aux_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = str(aux_run / "checkpoints" / "best.pt")
    assert main(["evaluate", checkpoint, "--split", "val", "--heads", "all", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "aux2 (after 4d)" in printed and "all" in printed
    saved = json.loads((tmp_path / "heads_val.json").read_text())
    assert set(saved["heads"]) == {"aux1 (after 4a)", "aux2 (after 4d)", "main (after 5b)"}
    assert main(["evaluate", checkpoint, "--heads", "all", "--tta", "flip"]) == 2
    assert "--heads all" in capsys.readouterr().err


def test_every_inception_module_is_a_valid_grad_cam_layer() -> None:
    model = small_model()
    x = torch.randn(1, 1, 28, 28, dtype=torch.float64)
    for layer in INCEPTION_LAYERS:
        maps = grad_cam(model, x, layer, torch.tensor([[2]]), method="gradxact")
        assert maps.shape[:2] == (1, 1) and bool((maps >= 0).all())


def test_output_names_stay_unique() -> None:
    from googlenet.explain.run import _unique_names

    names = _unique_names([Path("d1/a.png"), Path("d2/a.png"), Path("a-2.png"), Path("x/branch_shares.png")])
    assert names == ["a", "a-2", "a-2-2", "branch_shares-2"]
