"""The server as a client and a person meet it: the JSON API's answers and refusals, dynamic batching, a real
browser on the page, and a bounded load test with bad requests mixed in."""

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import shutil
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx
from fastapi.testclient import TestClient

from googlenet.evaluation.predict import predict_paths
from googlenet.serve.app import create_app
from googlenet.serve.batcher import DynamicBatcher
from googlenet.serve.loadtest import BackgroundServer, run_load
from googlenet.serve.service import ServeSettings
from helpers import make_checkpoint

SETTINGS = ServeSettings(backend="torch", max_batch=8, wait_ms=20, max_bytes=200_000, max_pixels=4_000_000)


def png_bytes(image: Image.Image, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height pixels, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder as training leaves it: best.pt beside metrics.jsonl and eval_test.json."""
    run = tmp_path_factory.mktemp("served")
    make_checkpoint(run / "checkpoints" / "best.pt")
    rows = [
        {"epoch": e, "train_loss": 1.0 / e, "val_top1": 0.8 + 0.05 * e, "ema_val_top1": 0.82 + 0.05 * e} for e in (1, 2)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "eval_test.json").write_text(json.dumps({"top1": 0.91, "top5": 0.99, "num_samples": 10000, "tta": "flip"}))
    return run


@pytest.fixture(scope="module")
def client(run_dir: Path):  # type: ignore[no-untyped-def]
    with TestClient(create_app(run_dir / "checkpoints" / "best.pt", SETTINGS)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    g = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (40, 30), generator=g, dtype=torch.uint8).numpy()
    path = tmp_path_factory.mktemp("img") / "sample.png"
    Image.fromarray(pixels, mode="L").save(path)
    return path


def test_predict_a_raw_image_as_predict_does(client: TestClient, run_dir: Path, sample: Path) -> None:
    response = client.post("/v1/predict", content=sample.read_bytes(), headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    top = body["predictions"][0]["top"]
    assert len(top) == 5 and body["engine"] == "torch fp32" and body["predictions"][0]["file"] is None
    assert [p["probability"] for p in top] == sorted((p["probability"] for p in top), reverse=True)
    expected = predict_paths(run_dir / "checkpoints" / "best.pt", [sample], top_k=5)[0].top
    assert [p["class"] for p in top] == [c for c, _ in expected]
    assert [p["probability"] for p in top] == pytest.approx([v for _, v in expected], abs=1e-4)
    assert set(body["timing_ms"]) == {"decode", "queue", "model", "total"}


def test_predict_several_multipart_files_and_top_k(client: TestClient, sample: Path) -> None:
    data = sample.read_bytes()
    files = [("file", (f"{i}.png", data, "image/png")) for i in range(3)]
    response = client.post("/v1/predict?top_k=2", files=files)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["file"] for p in predictions] == ["0.png", "1.png", "2.png"]
    assert all(len(p["top"]) == 2 for p in predictions)
    assert predictions[0]["top"] == predictions[2]["top"]


def test_every_image_mode_gets_an_answer(client: TestClient) -> None:
    rgb = Image.new("RGB", (50, 40), (200, 30, 30))
    cases = {
        "16-bit gray": png_bytes(Image.fromarray((torch.arange(1200).view(30, 40) * 50).numpy().astype("uint16"))),
        "palette with transparency": png_bytes(rgb.convert("P"), transparency=0),
        "RGBA": png_bytes(rgb.convert("RGBA")),
        "1-bit": png_bytes(rgb.convert("1")),
    }
    cmyk = io.BytesIO()
    rgb.convert("CMYK").save(cmyk, format="JPEG")
    cases["CMYK JPEG"] = cmyk.getvalue()
    gif = io.BytesIO()
    Image.new("P", (20, 20)).save(gif, format="GIF", save_all=True, append_images=[Image.new("P", (20, 20), 3)])
    cases["two-frame GIF"] = gif.getvalue()
    for name, data in cases.items():
        response = client.post("/v1/predict", content=data, headers={"Content-Type": "image/png"})
        assert response.status_code == 200, (name, response.text)


@pytest.mark.parametrize(
    ("headers", "body", "status", "message"),
    [
        ({"Content-Type": "image/png"}, b"", 400, "is empty"),
        ({"Content-Type": "text/plain"}, b"hello", 415, "Content-Type 'text/plain'"),
        ({"Content-Type": "application/json"}, b"{}", 415, "send an image"),
        ({"Content-Type": "image/png"}, b"GIF89a but not really an image", 400, "is not an image"),
        ({"Content-Type": "image/jpeg"}, b"\x00" * 100, 400, "is not an image"),
        ({"Content-Type": "image/png"}, bomb_png(5_000, 5_000), 413, "25,000,000 pixels; the limit is 4,000,000"),
        ({"Content-Type": "image/png"}, bomb_png(30_000, 30_000), 413, "was refused as a decompression bomb"),
        ({"Content-Type": "image/png"}, b"x" * 250_000, 413, "the limit is 200,000"),
    ],
)
def test_bad_bodies_get_a_clear_4xx(
    client: TestClient, headers: dict[str, str], body: bytes, status: int, message: str
) -> None:
    response = client.post("/v1/predict", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_truncated_damaged_and_form_errors(client: TestClient, sample: Path) -> None:
    good = Image.new("RGB", (64, 64), (10, 200, 10))
    truncated = png_bytes(good)[:-30]
    jpeg = io.BytesIO()
    Image.effect_noise((64, 64), 50).save(jpeg, format="JPEG")
    cases = [
        (dict(content=truncated, headers={"Content-Type": "image/png"}), 400, "could not be decoded"),
        (dict(content=jpeg.getvalue()[:200], headers={"Content-Type": "image/jpeg"}), 400, "could not be decoded"),
        (dict(files=[("file", ("a.txt", b"text", "text/plain"))]), 415, "file 'a.txt' has Content-Type"),
        (dict(data={"note": "no files"}), 415, "multipart"),  # an urlencoded form: not an image
        (dict(files={"note": (None, b"just a field")}), 400, "has no files"),
        (dict(files=[("file", ("big.png", b"x" * 250_000, "image/png"))]), 413, "file 'big.png' is over"),
    ]
    for kwargs, status, message in cases:
        response = client.post("/v1/predict", **kwargs)  # type: ignore[arg-type]
        assert response.status_code == status, (message, response.text)
        assert message in response.json()["error"], response.text
    for query in ("top_k=0", "top_k=abc", "top_k=%C2%B2", "top_k=" + "1" * 5000):
        response = client.post(
            f"/v1/predict?{query}", content=sample.read_bytes(), headers={"Content-Type": "image/png"}
        )
        assert response.status_code == 422 and "top_k must be" in response.json()["error"]
    many = client.post("/v1/predict?top_k=99", content=sample.read_bytes(), headers={"Content-Type": "image/png"})
    assert many.status_code == 200 and len(many.json()["predictions"][0]["top"]) == 10  # all the classes there are
    strip = png_bytes(Image.new("L", (40_000, 1)))  # tiny, but 31 megapixels once its shorter side is 28 px
    response = client.post("/v1/predict", content=strip, headers={"Content-Type": "image/png"})
    assert response.status_code == 422 and "closer to a square" in response.json()["error"]
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    response = client.post("/v1/predict", content=eps, headers={"Content-Type": "image/x-eps"})
    assert response.status_code == 400 and "not an image in a format" in response.json()["error"]
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
    assert client.get("/v1/predict").status_code == 405 and "error" in client.get("/v1/predict").json()
    two = [("file", ("a.png", sample.read_bytes(), "image/png"))] * 2
    response = client.post("/v1/explain", files=two)
    assert response.status_code == 400 and "one image" in response.json()["error"]
    # and after all that the server still answers
    assert client.get("/healthz").json()["status"] == "ok"
    assert (
        client.post("/v1/predict", content=sample.read_bytes(), headers={"Content-Type": "image/png"}).status_code
        == 200
    )


def test_a_body_past_the_limit_is_refused_while_it_streams(client: TestClient) -> None:
    """No Content-Length (chunked): the server counts what arrives and stops at the limit."""

    boundary = "b0undary"

    def chunks(head: bytes = b""):  # type: ignore[no-untyped-def]
        yield head
        for _ in range(600):
            yield b"x" * 10_000  # 6 MB in all, past max_bytes * max_files + 1 MiB (4.25 MB)

    part = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
    part += "Content-Type: image/png\r\n\r\n"
    response = client.post(
        "/v1/predict",
        content=chunks(part.encode()),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413 and "over the limit" in response.json()["error"]
    raw = client.post("/v1/predict", content=chunks(), headers={"Content-Type": "image/png"})
    assert raw.status_code == 413 and "over the limit" in raw.json()["error"]
    assert client.get("/healthz").status_code == 200


def test_model_card_table1_health_and_docs(client: TestClient) -> None:
    card = client.get("/v1/model").json()
    assert card["variant"] == "small" and card["classes"][3] == "class3" and card["parameters"] > 5_000_000
    assert card["checkpoint"] == "best.pt"  # a name, not a path on the server
    assert card["preprocessing"]["image_size"] == 28 and card["engine"] == "torch fp32"
    assert [row["epoch"] for row in card["training"]] == [1, 2] and card["test"]["top1"] == 0.91
    rows = {row["name"]: row for row in card["table1"]["rows"]}
    assert rows["inception4c"]["n3x3"] == 256 and card["table1"]["input_size"] == 28
    assert card["batching"] == {"max_batch": 8, "wait_ms": 20}
    assert client.get("/healthz").json() == {"status": "ok", "variant": "small", "engine": "torch fp32"}
    openapi = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/explain", "/v1/model", "/healthz"} <= set(openapi["paths"])
    assert "image/*" in openapi["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/../../setup.py").status_code == 404


def test_explain_returns_the_cam_and_branch_shares(client: TestClient, sample: Path) -> None:
    response = client.post("/v1/explain", content=sample.read_bytes(), headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["cam"]["class"] == body["top"][0]["class"]
    picture = Image.open(io.BytesIO(__import__("base64").b64decode(body["cam"]["png"].split(",", 1)[1])))
    assert picture.size == (224, 224)
    # the exact CAM says how coarse it is; Grad-CAM beside it is at a finer layer
    finer = body["grad_cam"]
    assert body["cam"]["layer"] == "inception5b" and finer["layer"] == "inception4c"
    cam_cells = [int(n) for n in body["cam"]["cells"].removesuffix(" cells").split("x")]
    finer_cells = [int(n) for n in finer["cells"].removesuffix(" cells").split("x")]
    assert all(f > c for f, c in zip(finer_cells, cam_cells, strict=True)), (cam_cells, finer_cells)
    assert finer["png"].startswith("data:image/png;base64,") and finer["png"] != body["cam"]["png"]
    shares = body["branch_shares"]
    assert len(shares["modules"]) == 9 and shares["branches"] == ["1x1", "3x3", "5x5", "pool"]
    for row in shares["attribution"] + shares["energy"]:
        assert sum(row) == pytest.approx(1, abs=1e-4) and min(row) >= 0


def test_dynamic_batching_groups_concurrent_images_and_keeps_them_apart() -> None:
    def run(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :3] * 10  # each image's own logits

    async def scenario(max_batch: int) -> tuple[list[int], bool]:
        # A wait far longer than the test: a batch runs only once it is full, whatever the scheduling.
        batcher = DynamicBatcher(run, max_batch=max_batch, wait_ms=60_000)
        await batcher.start()
        images = [torch.full((1, 2, 2), float(i)) for i in range(24)]
        answers = await asyncio.gather(*(batcher.submit(x) for x in images))
        await batcher.stop()
        right = all(
            torch.allclose(a.probabilities, run(x.unsqueeze(0)).softmax(1)[0])
            for a, x in zip(answers, images, strict=True)
        )
        return sorted(batcher.batch_sizes.elements()), right

    sizes, right = asyncio.run(scenario(8))
    assert right and sizes == [8, 8, 8]
    sizes, right = asyncio.run(scenario(1))
    assert right and sizes == [1] * 24


def test_a_failing_batch_fails_its_requests_and_the_server_goes_on() -> None:
    calls = {"n": 0}

    def run(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return torch.zeros(len(x), 3)

    async def scenario() -> tuple[str, int]:
        batcher = DynamicBatcher(run, max_batch=4, wait_ms=0)
        await batcher.start()
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(torch.zeros(1, 2, 2))
        answer = await batcher.submit(torch.zeros(1, 2, 2))
        await batcher.stop()
        return "ok", answer.batch_size

    assert asyncio.run(scenario()) == ("ok", 1)


@pytest.fixture(scope="module")
def live_server(run_dir: Path):  # type: ignore[no-untyped-def]
    with BackgroundServer(create_app(run_dir / "checkpoints" / "best.pt", SETTINGS)) as server:
        yield server


def test_load_with_bad_requests_mixed_in(live_server: BackgroundServer, sample: Path) -> None:
    result = run_load(live_server.url, sample.read_bytes(), requests=400, concurrency=16, bad_every=10)
    assert result.unexpected == [], result.unexpected[:5]
    assert result.good_ok == 360 and result.bad_refused == 40  # every request answered as it should be
    # Every answer ran in a batch of the allowed sizes (how many shared one depends on scheduling: the batching
    # itself is tested deterministically above).
    assert sum(size * count for size, count in result.batch_sizes.items()) >= 360
    assert set(result.batch_sizes) <= set(range(1, SETTINGS.max_batch + 1))
    assert run_load(live_server.url, sample.read_bytes(), requests=5, concurrency=1).good_ok == 5


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed")
def test_the_page_in_a_real_browser(live_server: BackgroundServer, photos: list[Path], tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    photo = photos[0]
    import httpx

    api = httpx.post(
        f"{live_server.url}/v1/predict", content=photo.read_bytes(), headers={"Content-Type": "image/jpeg"}
    ).json()["predictions"][0]["top"][0]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(live_server.url)
        page.wait_for_selector("#table1 tbody tr")
        assert "small" in page.inner_text("#model-name")
        assert "inception4c" in page.inner_text("#table1")
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#top1")
        assert page.inner_text("#top1") == api["class"]
        page.wait_for_selector("#cam:not([hidden])")
        assert page.get_attribute("#cam", "src").startswith("data:image/png;base64,")
        assert "cells, drawn upsampled" in page.inner_text("#cam-caption")
        page.wait_for_selector("#grad-cam:not([hidden])")
        assert "Grad-CAM at inception4c" in page.inner_text("#grad-cam-caption")
        assert page.locator("#shares tr").count() == 10  # header + nine modules
        assert page.is_hidden("#error")
        # a file that is not an image: the page says what the server said
        bad = tmp_path / "notes.png"
        bad.write_bytes(b"not an image")
        page.set_input_files("#file", str(bad))
        page.wait_for_selector("#error:not([hidden])")
        assert "is not an image" in page.inner_text("#error")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert errors == []
    assert (tmp_path / "page.png").stat().st_size > 20_000


# ------------------------------------------------------------------------------------- hostile requests


def raw_exchange(server: BackgroundServer, request: bytes, *, then_close: bool = False) -> tuple[bytes, bool]:
    """Send ``request`` bytes as they are on one connection; (everything answered, whether the server closed
    the connection). ``then_close``: hang up right after sending, as a client that gives up mid-upload."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(request)
        if then_close:
            return b"", True
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
        except TimeoutError:
            return answer, False  # still open after 10 s
        return answer, True


def upload_head(length: int) -> bytes:
    """The request line and headers of a raw-body upload of ``length`` bytes."""
    return (
        b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        + f"Content-Length: {length}\r\n\r\n".encode()
    )


def json_error(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


def test_content_length_with_transfer_encoding_is_refused_and_the_connection_closed(
    live_server: BackgroundServer,
) -> None:
    # A request smuggled in the body: it must never be answered (RFC 9112, section 6.1).
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    request = (
        b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled
    )
    answer, closed = raw_exchange(live_server, request)
    assert closed and answer.count(b"HTTP/1.1 ") == 1, answer
    status, error = json_error(answer)
    assert status == 400 and "both Content-Length and Transfer-Encoding" in error


def test_a_foreign_host_header_is_refused(run_dir: Path) -> None:
    settings = dataclasses.replace(SETTINGS, allowed_hosts=("localhost", "127.0.0.1", "[::1]"))
    with TestClient(create_app(run_dir / "checkpoints" / "best.pt", settings), base_url="http://localhost") as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/healthz", headers={"Host": "127.0.0.1:8000"}).status_code == 200
        assert client.get("/healthz", headers={"Host": "[::1]:8000"}).status_code == 200
        refused = client.get("/healthz", headers={"Host": "attacker.example:8000"})
        assert refused.status_code == 400 and "'attacker.example:8000' is not served here" in refused.json()["error"]


def test_the_cli_allows_only_loopback_hosts_on_a_loopback_address() -> None:
    from googlenet.cli.serve import LOOPBACK_HOSTS

    assert set(LOOPBACK_HOSTS) == {"127.0.0.1", "localhost", "[::1]"}


def test_a_stalled_upload_times_out_with_408(run_dir: Path) -> None:
    settings = dataclasses.replace(SETTINGS, body_timeout_s=0.5)
    with BackgroundServer(create_app(run_dir / "checkpoints" / "best.pt", settings)) as server:
        request = (
            b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
        )
        answer, _ = raw_exchange(server, request + b"\x89PNG")  # 4 of 1,000 bytes, then nothing
        status, error = json_error(answer)
        assert status == 408 and "stalled" in error


def test_a_fault_of_the_server_is_a_json_500_and_it_goes_on(run_dir: Path, sample: Path) -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the engine failed")

    def batcher(_engine: object, settings: ServeSettings) -> DynamicBatcher:
        return DynamicBatcher(broken, max_batch=settings.max_batch, wait_ms=settings.wait_ms)

    app = create_app(run_dir / "checkpoints" / "best.pt", SETTINGS, batcher=batcher)
    with TestClient(app, raise_server_exceptions=False) as client:
        for _ in range(2):
            response = client.post("/v1/predict", content=sample.read_bytes(), headers={"Content-Type": "image/png"})
            assert response.status_code == 500
            assert response.json() == {"error": "the server failed on this request; its log says why"}
        assert client.get("/healthz").status_code == 200


def test_a_header_that_trickles_in_or_never_comes_times_out_with_408(run_dir: Path) -> None:
    settings = dataclasses.replace(SETTINGS, header_timeout_s=0.5)
    with BackgroundServer(create_app(run_dir / "checkpoints" / "best.pt", settings)) as server:
        for sent in (b"", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"):  # nothing; a header never finished
            started = time.monotonic()
            answer, closed = raw_exchange(server, sent)
            status, error = json_error(answer)
            assert closed and status == 408 and "did not arrive within 0.5 s" in error
            assert time.monotonic() - started < 5
        # A header sent a byte at a time is held only as long as the deadline, however steadily it trickles.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
            started, answer = time.monotonic(), b""
            for byte in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
                try:
                    connection.sendall(bytes([byte]))
                except OSError:  # closed by the server
                    break
                time.sleep(0.02)
            with contextlib.suppress(OSError):
                while chunk := connection.recv(65536):
                    answer += chunk
        assert json_error(answer)[0] == 408 and time.monotonic() - started < 3
        # A keep-alive connection serves one request after another, each within its own deadline.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
            for _ in range(2):
                connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert connection.recv(65536).startswith(b"HTTP/1.1 200")
                time.sleep(0.3)


def test_requests_that_are_not_http_get_json_answers(live_server: BackgroundServer) -> None:
    answer, closed = raw_exchange(live_server, b"HELLO THERE\r\n\r\n")
    assert closed and json_error(answer) == (400, "the request is not valid HTTP/1.1")
    huge = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    answer, closed = raw_exchange(live_server, huge)
    assert closed and json_error(answer) == (431, "the request header is over 32,768 bytes")
    fine = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000 + b"\r\nConnection: close\r\n\r\n"
    assert raw_exchange(live_server, fine)[0].startswith(b"HTTP/1.1 200")


def test_a_client_that_hangs_up_mid_upload_is_one_log_line(
    live_server: BackgroundServer, caplog: pytest.LogCaptureFixture
) -> None:
    request = (
        b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
    )
    with caplog.at_level(logging.INFO):
        raw_exchange(live_server, request + b"\x89PNG" * 100, then_close=True)
        deadline = time.monotonic() + 10
        while not any("hung up" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert [r.getMessage() for r in caplog.records if "hung up" in r.getMessage()] == [
        "POST /v1/predict: the client hung up before its request was read"
    ]
    assert not any(r.exc_info for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert httpx.get(f"{live_server.url}/healthz").status_code == 200  # and the server goes on


def malformed_tiff() -> bytes:
    """A TIFF whose strip offset is typed as text: PIL's decoder raises TypeError on it."""
    entries = [(256, 3, 1, 4), (257, 3, 1, 4), (258, 3, 1, 8), (262, 3, 1, 1)]
    ifd = b"".join(struct.pack("<HHIHH", tag, kind, count, value, 0) for tag, kind, count, value in entries)
    ifd += struct.pack("<HHI", 273, 2, 4) + b"abc\0" + struct.pack("<HHII", 279, 4, 1, 16)
    return b"II*\0" + struct.pack("<IH", 8, len(entries) + 2) + ifd + b"\0" * 68


def test_an_image_that_breaks_the_decoder_is_a_400(client: TestClient) -> None:
    response = client.post("/v1/predict", content=malformed_tiff(), headers={"Content-Type": "image/tiff"})
    assert response.status_code == 400 and "could not be decoded" in response.json()["error"]


def hostile_images() -> dict[str, tuple[bytes, int]]:
    """Files that have broken image servers, each with the status it must get: compressed-text bombs inside
    a PNG, headers declaring billions of pixels, a negative height, a zero maxval, damaged data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def png_with(extra: bytes) -> bytes:
        header = chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
        pixels = chunk(b"IDAT", zlib.compress(b"\x00" + b"\x80" * 8))
        return b"\x89PNG\r\n\x1a\n" + header + extra + pixels + chunk(b"IEND", b"")

    def saved(image: Image.Image, fmt: str) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        return buffer.getvalue()

    bomb = zlib.compress(b"a" * 20_000_000)
    bmp = bytearray(saved(Image.new("RGB", (10, 10)), "BMP"))
    wide_bmp = bytes(bmp[:18]) + struct.pack("<i", 2**31 - 1) + bytes(bmp[22:])
    bmp[22:26] = struct.pack("<i", -10)  # stored top-down: valid
    jpeg = saved(Image.new("RGB", (16, 16)), "JPEG")
    sof = jpeg.find(b"\xff\xc0") + 5
    return {
        "zTXt bomb": (png_with(chunk(b"zTXt", b"k\x00\x00" + bomb)), 400),
        "iCCP bomb": (png_with(chunk(b"iCCP", b"p\x00\x00" + bomb)), 400),
        "BMP of 2^31 x 10": (wide_bmp, 413),
        "top-down BMP": (bytes(bmp), 200),
        "JPEG declaring 65500 x 65500": (jpeg[:sof] + struct.pack(">HH", 65500, 65500) + jpeg[sof + 4 :], 413),
        "PGM of 100000 x 100000": (b"P5\n100000 100000\n255\n" + b"\xff" * 32, 413),
        "PGM with maxval 0": (b"P5\n4 4\n0\n" + b"\xff" * 16, 400),
        "16-bit PGM": (b"P5\n4 4\n65535\n" + b"\xff" * 32, 200),
        "ICO": (saved(Image.new("RGB", (16, 16)), "ICO"), 400),
        "float TIFF": (saved(Image.new("F", (16, 16)), "TIFF"), 200),
        "half a JPEG": (jpeg[: len(jpeg) // 2], 400),
    }


@pytest.mark.parametrize("name", list(hostile_images()))
def test_hostile_images_get_their_answer_as_json(client: TestClient, name: str) -> None:
    data, status = hostile_images()[name]
    response = client.post("/v1/predict", content=data, headers={"Content-Type": "image/png"})
    assert response.status_code == status, response.text
    assert ("predictions" if status == 200 else "error") in response.json()


def test_decodes_run_a_few_at_a_time(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wide images take several bytes a pixel while converted: at most decode_slots of them at once."""
    from googlenet.serve import routes

    running, most = 0, 0
    guard = threading.Lock()
    decode = routes._decode

    def counted(*args: object) -> object:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        try:
            return decode(*args)  # type: ignore[arg-type]
        finally:
            with guard:
                running -= 1

    monkeypatch.setattr(routes, "_decode", counted)
    image = png_bytes(Image.new("L", (40, 40), 128))
    settings = dataclasses.replace(SETTINGS, decode_slots=2)
    with TestClient(create_app(run_dir / "checkpoints" / "best.pt", settings)) as client:
        files = [("file", (f"{i}.png", image, "image/png")) for i in range(8)]
        assert client.post("/v1/predict", files=files).status_code == 200
    assert most == 2
