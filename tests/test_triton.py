"""`googlenet export --format triton`: a model repository that Triton's own config parser accepts, with a model
that runs at the shapes its config declares and gives the eager model's answers."""

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
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


# A real Triton server where one is installed (`make triton-server`; CI installs it): the one nvidia-pytriton
# bundles, which has only Triton's Python backend. The repository's model runs there as exported (its
# config.pbtxt, labels and model.onnx) with the backend switched to Python running that model.onnx in
# ONNX Runtime, batching the requests Triton's dynamic batcher hands it.
TRITON_HOME = Path(os.environ.get("GOOGLENET_TRITON_HOME", Path(__file__).resolve().parents[1] / ".venv" / "triton"))
TRITONSERVER = TRITON_HOME / "pytriton" / "tritonserver" / "bin" / "tritonserver"
PYTHON_MODEL = """\
import os
import sys

sys.path.insert(0, {packages!r})  # numpy 1.x and ONNX Runtime for this stub
import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        model = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(r, "images").as_numpy() for r in requests]
        (logits,) = self.session.run(["logits"], {{"images": np.concatenate(batches)}})
        ends = np.cumsum([len(b) for b in batches])[:-1]
        return [pb_utils.InferenceResponse([pb_utils.Tensor("logits", part)]) for part in np.split(logits, ends)]
"""


def top_three(url: str, model: str, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a Triton user's client sends: preprocessed images in; the logits, and the top 3 as Triton's
    classification strings, out."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        images = httpclient.InferInput("images", list(batch.shape), "FP32")
        images.set_data_from_numpy(batch)
        wanted = [httpclient.InferRequestedOutput("logits")]
        logits = client.infer(model, [images], outputs=wanted).as_numpy("logits")
        wanted = [httpclient.InferRequestedOutput("logits", class_count=3)]
        return logits, client.infer(model, [images], outputs=wanted).as_numpy("logits")
    finally:
        client.close()


@pytest.mark.skipif(not TRITONSERVER.is_file(), reason=f"no Triton server in {TRITON_HOME}: make triton-server")
def test_a_real_triton_server_serves_the_repository_as_googlenet_serve_does(
    checkpoint: Path, tmp_path: Path, photos: list[Path]
) -> None:
    from googlenet.serve.app import create_app
    from googlenet.serve.loadtest import BackgroundServer, free_port
    from googlenet.serve.service import ServeSettings

    folder = export_triton(checkpoint, tmp_path / "repo", max_batch=8, queue_delay_us=200_000).folder
    config = (folder / "config.pbtxt").read_text()
    (folder / "config.pbtxt").write_text(
        config.replace('backend: "onnxruntime"', 'backend: "python"').replace('"model.onnx"', '"model.py"')
    )
    (folder / "1" / "model.py").write_text(PYTHON_MODEL.format(packages=str(TRITON_HOME / "stub-packages")))
    port = free_port()
    log = (tmp_path / "triton.log").open("w")
    env = {**os.environ, "LD_LIBRARY_PATH": str(TRITON_HOME / "nvidia_pytriton.libs")}
    backends = TRITONSERVER.parents[1] / "backends"
    command = [str(TRITONSERVER), "--model-repository", str(folder.parent), "--backend-directory", str(backends)]
    command += ["--http-port", str(port), "--allow-grpc", "false", "--allow-metrics", "false"]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while not _ready(url):
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "triton.log").read_text()[-3000:]
            time.sleep(0.5)
        _, prep, _ = model_from_checkpoint(load_checkpoint(checkpoint))
        batch = torch.stack([prep.load_image(p) for p in photos[:4]]).numpy()
        triton_logits, triton_top = top_three(url, "googlenet", batch)
        # Requests arriving together share a batch in Triton's dynamic batcher, as config.pbtxt asks.
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda i: top_three(url, "googlenet", batch[i : i + 1])[0], range(4)))
        np.testing.assert_allclose(np.concatenate(answers), triton_logits, atol=1e-4)
        stats = httpx.get(f"{url}/v2/models/googlenet/stats").json()["model_stats"][0]
        assert stats["execution_count"] < stats["inference_count"], stats
    finally:
        server.terminate()
        server.wait(60)
        log.close()
    with BackgroundServer(create_app(checkpoint, ServeSettings(backend="torch"))) as ours:
        our_logits, our_top = top_three(ours.url, "googlenet", batch)
    np.testing.assert_allclose(our_logits, triton_logits, atol=1e-4)
    for theirs, mine in zip(triton_top, our_top, strict=True):  # "score:index:label", the same from both
        assert [t.decode().split(":")[1:] for t in theirs] == [m.decode().split(":")[1:] for m in mine]
        scores = [[float(e.decode().split(":")[0]) for e in row] for row in (theirs, mine)]
        np.testing.assert_allclose(scores[0], scores[1], atol=1e-3)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
