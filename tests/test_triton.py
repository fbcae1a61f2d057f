"""`googlenet export --format triton`: a model repository that Triton's own config parser accepts, with a model
that runs at the shapes its config declares and gives the eager model's answers."""

from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
from google.protobuf import text_format  # noqa: E402  (tritonclient brings protobuf)

from googlenet.cli import main  # noqa: E402
from googlenet.deploy.triton import export_triton, run_model  # noqa: E402
from googlenet.run.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from helpers import make_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("triton") / "best.pt")


def parse_config(folder: Path):  # type: ignore[no-untyped-def]
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize(
    ("engine", "backend", "files"),
    [("onnx", "onnxruntime", ["model.onnx"]), ("openvino", "openvino", ["model.bin", "model.xml"])],
)
def test_the_repository_parses_and_runs_at_the_declared_shapes(
    checkpoint: Path, tmp_path: Path, engine: str, backend: str, files: list[str]
) -> None:
    repository = tmp_path / "repo"
    code = main(
        [
            "export",
            str(checkpoint),
            "--format",
            "triton",
            "--out",
            str(repository),
            "--engine",
            engine,
            "--max-batch",
            "6",
        ]
    )
    assert code == 0
    folder = repository / "googlenet"
    assert sorted(p.name for p in repository.iterdir()) == ["googlenet"]  # no staging folder left behind
    assert sorted(p.name for p in (folder / "1").iterdir()) == files
    config = parse_config(folder)
    assert (config.name, config.backend, config.max_batch_size) == ("googlenet", backend, 6)
    assert config.default_model_filename == files[-1 if engine == "openvino" else 0]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.kind, g.count) for g in config.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_CPU, 1)]
    (given,), (answer,) = config.input, config.output
    assert (given.data_type, answer.data_type) == (model_config_pb2.TYPE_FP32, model_config_pb2.TYPE_FP32)
    assert (given.name, given.format, list(given.dims)) == (
        "images",
        model_config_pb2.ModelInput.FORMAT_NCHW,
        [1, 28, 28],
    )
    assert (answer.name, list(answer.dims), answer.label_filename) == ("logits", [10], "labels.txt")

    model, _, names = model_from_checkpoint(load_checkpoint(checkpoint))
    assert (folder / answer.label_filename).read_text().splitlines() == names
    for batch in (1, config.max_batch_size):  # the dynamic batch axis, at both ends of what Triton may send
        images = torch.randn(batch, *given.dims)
        logits = run_model(folder / "1", engine, images)
        assert list(logits.shape) == [batch, *answer.dims]
        with torch.no_grad():
            assert torch.allclose(logits, model(images), atol=1e-4)
    readme = (folder / "README.md").read_text()
    assert "tritonserver --model-repository" in readme and "[N, 1, 28, 28]" in readme


def test_a_second_model_joins_the_repository_and_a_taken_name_is_refused(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repository = tmp_path / "repo"
    first = export_triton(checkpoint, repository, name="fashion")
    second = export_triton(checkpoint, repository, name="fashion-ov", engine="openvino", max_batch=4)
    assert parse_config(second.folder).name == "fashion-ov" and parse_config(first.folder).max_batch_size == 32
    before = sorted(str(p) for p in repository.rglob("*"))
    command = ["export", str(checkpoint), "--format", "triton", "--out", str(repository)]
    assert main([*command, "--name", "fashion"]) == 2
    assert main([*command, "--name", "../elsewhere"]) == 2
    assert main([*command, "--max-batch", "0"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert (
        len(errors) == 3 and "already exists" in errors[0] and "must be 1-64" in errors[1] and "at least 1" in errors[2]
    )
    assert sorted(str(p) for p in repository.rglob("*")) == before
