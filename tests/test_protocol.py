"""The Open Inference Protocol on `googlenet serve`, with tritonclient (the client Triton and KServe users have)
as the client: health, metadata, infer on image files and on preprocessed tensors, binary and JSON tensors,
Triton's classification extension, and a clear 4xx for every malformed request."""

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
httpclient = pytest.importorskip("tritonclient.http")
import httpx  # noqa: E402
from tritonclient.utils import InferenceServerException, serialize_byte_tensor  # noqa: E402

from googlenet.evaluation.predict import predict_paths  # noqa: E402
from googlenet.run.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from googlenet.serve.app import create_app  # noqa: E402
from googlenet.serve.loadtest import BackgroundServer  # noqa: E402
from googlenet.serve.protocol import parse_infer  # noqa: E402
from googlenet.serve.service import ServeSettings  # noqa: E402
from helpers import make_checkpoint  # noqa: E402

SETTINGS = ServeSettings(backend="torch", max_batch=8, wait_ms=20, max_bytes=2_000_000, model_name="fashion")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("protocol") / "best.pt")


@pytest.fixture(scope="module")
def server(checkpoint: Path):  # type: ignore[no-untyped-def]
    with BackgroundServer(create_app(checkpoint, SETTINGS)) as background:
        yield background


@pytest.fixture(scope="module")
def client(server: BackgroundServer):  # type: ignore[no-untyped-def]
    triton = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield triton
    triton.close()


def test_health_and_metadata(client) -> None:  # type: ignore[no-untyped-def]
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("fashion")
    assert client.is_model_ready("fashion", "1") and not client.is_model_ready("googlenet")
    assert set(client.get_server_metadata()["extensions"]) >= {"binary_tensor_data", "classification"}
    metadata = client.get_model_metadata("fashion")
    assert metadata["versions"] == ["1"] and metadata["platform"] == "googlenet_torch"
    assert {t["name"]: t["shape"] for t in metadata["inputs"]} == {"images": [-1, 1, 28, 28], "image_bytes": [-1]}
    assert [t["name"] for t in metadata["outputs"]] == ["logits", "probabilities", "indices", "labels"]
    with pytest.raises(InferenceServerException, match="unknown model 'googlenet': this server serves 'fashion'"):
        client.get_model_metadata("googlenet")


def test_image_files_give_the_answers_of_v1_predict_and_googlenet_predict(
    client, server: BackgroundServer, checkpoint: Path, photos: list[Path]
) -> None:  # type: ignore[no-untyped-def]
    files = photos[:3]
    blobs = np.array([f.read_bytes() for f in files], dtype=object)
    given = httpclient.InferInput("image_bytes", [len(files)], "BYTES")
    given.set_data_from_numpy(blobs)  # binary by default, as tritonclient sends it
    result = client.infer("fashion", [given], parameters={"top_k": 3})
    labels, probabilities = result.as_numpy("labels"), result.as_numpy("probabilities")
    indices, logits = result.as_numpy("indices"), result.as_numpy("logits")
    assert labels.shape == probabilities.shape == indices.shape == (3, 3) and logits.shape == (3, 10)
    assert indices.dtype == np.int64 and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, torch.tensor(logits).softmax(1).topk(3).values.numpy(), atol=1e-6)

    expected = predict_paths(checkpoint, files, top_k=3)
    for row, prediction, path in zip(range(3), expected, files, strict=True):
        assert [label.decode() for label in labels[row]] == [c for c, _ in prediction.top]
        np.testing.assert_allclose(probabilities[row], [p for _, p in prediction.top], atol=1e-5)
        v1 = httpx.post(
            f"{server.url}/v1/predict?top_k=3", content=path.read_bytes(), headers={"Content-Type": "image/jpeg"}
        )
        top = v1.json()["predictions"][0]["top"]
        assert [t["class"] for t in top] == [label.decode() for label in labels[row]]
        np.testing.assert_allclose([t["probability"] for t in top], probabilities[row], atol=1e-5)


def test_preprocessed_tensors_in_json_and_the_classification_extension(
    client, checkpoint: Path, photos: list[Path]
) -> None:  # type: ignore[no-untyped-def]
    """The request a Triton client sends to the repository `export --format triton` writes: `images` in,
    `logits` with class_count out."""
    model, prep, names = model_from_checkpoint(load_checkpoint(checkpoint))
    batch = torch.stack([prep.load_image(p) for p in photos[:2]])
    images = httpclient.InferInput("images", list(batch.shape), "FP32")
    images.set_data_from_numpy(batch.numpy(), binary_data=False)  # the JSON form
    top = httpclient.InferRequestedOutput("logits", binary_data=False, class_count=3)
    result = client.infer("fashion", [images], outputs=[top], request_id="req-7")
    assert result.get_response()["id"] == "req-7"
    assert [o["name"] for o in result.get_response()["outputs"]] == ["logits"]
    with torch.no_grad():
        scores, best = model(batch).topk(3)
    for row, entries in enumerate(result.as_numpy("logits")):
        parts = [entry.split(":") if isinstance(entry, str) else entry.decode().split(":") for entry in entries]
        assert [int(p[1]) for p in parts] == best[row].tolist()
        assert [p[2] for p in parts] == [names[i] for i in best[row].tolist()]
        np.testing.assert_allclose([float(p[0]) for p in parts], scores[row].numpy(), atol=1e-4)


def oip(server: BackgroundServer, body: bytes | dict, headers: dict[str, str] | None = None) -> httpx.Response:  # type: ignore[type-arg]
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    return httpx.post(f"{server.url}/v2/models/fashion/infer", content=content, headers=headers or {}, timeout=30)


PNG_HEADER = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"not json", None, 400, "is not JSON"),
        ({"inputs": []}, None, 400, 'needs "inputs"'),
        (
            {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1], "data": [0.0]}]},
            None,
            400,
            "unknown input 'pixels'",
        ),
        (
            {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 1, 2, 2], "data": [0.0] * 4}]},
            None,
            400,
            "shape [N, 1, 28, 28]",
        ),
        (
            {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0.0] * 5}]},
            None,
            400,
            "holds 784 values but data has 5",
        ),
        (
            {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": ["a"] * 784}]},
            None,
            400,
            "must be numbers",
        ),
        (
            {"inputs": [{"name": "images", "datatype": "FP64", "shape": [1], "data": [0.0]}]},
            None,
            400,
            "datatype 'FP64'",
        ),
        (
            {"inputs": [{"name": "images", "datatype": "FP32", "shape": [-1], "data": []}]},
            None,
            400,
            "shape must be a list",
        ),
        (
            {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["not base64!"]}]},
            None,
            400,
            "not base64",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "image_bytes",
                        "datatype": "BYTES",
                        "shape": [1],
                        "data": [base64.b64encode(b"junk").decode()],
                    }
                ]
            },
            None,
            400,
            "is not an image",
        ),
        (
            {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [0], "data": []}]},
            None,
            400,
            "holds 0 images",
        ),
        (
            {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [17], "data": ["AA=="] * 17}]},
            None,
            400,
            "send 1 to 16",
        ),
        (
            {
                "inputs": [
                    {"name": "image_bytes", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 10}}
                ]
            },
            None,
            400,
            "runs past the end",
        ),
        (
            {
                "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}],
                "outputs": [{"name": "scores"}],
            },
            None,
            400,
            "unknown output 'scores'",
        ),
        (
            {
                "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}],
                "parameters": {"top_k": 0},
            },
            None,
            422,
            "top_k must be",
        ),
        (
            {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1], "data": [[[[[[[[[[0.0]]]]]]]]]]}]},
            None,
            400,
            "nested deeper",
        ),
        (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, 400, "nests its JSON too deeply"),
        (
            {
                "inputs": [
                    {"name": "images", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [10**400] + [0] * 783}
                ]
            },
            None,
            400,
            "out of the range of FP32",
        ),
        (b"[" + b"0," * 5_000_000 + b"0]", None, 413, "JSON is over 8 MB: send large tensors as binary data"),
        (b"{}", {"Content-Encoding": "gzip"}, 415, "Content-Encoding 'gzip'"),
        (b"{}", {"Inference-Header-Content-Length": "99"}, 400, "is not a length within the body"),
    ],
)
def test_malformed_requests_get_a_clear_4xx(server: BackgroundServer, body, headers, status: int, message: str) -> None:  # type: ignore[no-untyped-def]
    response = oip(server, body, headers)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_semantic_refusals(server: BackgroundServer, photos: list[Path]) -> None:
    picture = base64.b64encode(photos[0].read_bytes()).decode()
    both = {
        "inputs": [
            {"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [picture]},
            {"name": "images", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0.0] * 784},
        ]
    }
    assert "not both" in oip(server, both).json()["error"]
    nan = {
        "inputs": [
            {"name": "images", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0.0] * 783 + [float("nan")]}
        ]
    }
    assert "not finite" in oip(server, json.dumps(nan).encode()).json()["error"]
    wrong = {"inputs": both["inputs"][:1], "outputs": [{"name": "labels", "parameters": {"classification": 2}}]}
    assert "for 'logits' only" in oip(server, wrong).json()["error"]
    fine = oip(server, {"inputs": both["inputs"][:1], "outputs": [{"name": "labels"}]})
    assert fine.status_code == 200 and [o["name"] for o in fine.json()["outputs"]] == ["labels"]
    assert httpx.get(f"{server.url}/v2/models/fashion/versions/2").status_code == 404


def test_binary_bytes_tensors_are_read_as_tritonclient_writes_them() -> None:
    items = np.array([b"", PNG_HEADER, b"\x00" * 70_000], dtype=object)
    payload = serialize_byte_tensor(items).item()  # one bytes object, as tritonclient sends it
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image_bytes",
                    "datatype": "BYTES",
                    "shape": [3],
                    "parameters": {"binary_data_size": len(payload)},
                }
            ]
        }
    ).encode()
    parsed = parse_infer(head + payload, str(len(head)))
    assert list(parsed.inputs["image_bytes"]) == list(items)
    with pytest.raises(Exception, match="binary data that no input claims"):
        parse_infer(head + payload + b"extra", str(len(head)))
    cut = json.dumps(
        {
            "inputs": [
                {
                    "name": "image_bytes",
                    "datatype": "BYTES",
                    "shape": [3],
                    "parameters": {"binary_data_size": len(payload) - 1},
                }
            ]
        }
    ).encode()
    with pytest.raises(Exception, match="runs past its binary data"):
        parse_infer(cut + payload[:-1], str(len(cut)))
