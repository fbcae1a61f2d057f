"""`googlenet serve --ray`: the same page and APIs from two Ray Serve replicas batching with @serve.batch; a
bounded load test loses no request, and one replica killed mid-load leaves the others answering while Ray
starts its replacement."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
httpclient = pytest.importorskip("tritonclient.http")

import httpx  # noqa: E402

from googlenet.evaluation.predict import predict_paths  # noqa: E402
from googlenet.serve import ray_serve  # noqa: E402
from googlenet.serve.loadtest import LoadResult, free_port, run_load  # noqa: E402
from googlenet.serve.service import ServeSettings  # noqa: E402
from helpers import make_checkpoint  # noqa: E402

SETTINGS = ServeSettings(backend="torch", max_batch=8, wait_ms=20, max_bytes=2_000_000)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ray") / "best.pt")


@pytest.fixture(scope="module")
def url(checkpoint: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    ray_serve.start(checkpoint, SETTINGS, host="127.0.0.1", port=port, replicas=2)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        ray_serve.stop()


def replicas() -> list[str]:
    named = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"] for a in named if a["name"].startswith("SERVE_REPLICA::"))


def running_replicas() -> int:
    status = serve.status().applications[ray_serve.APP_NAME].deployments["GoogLeNet"]
    return int(status.replica_states.get("RUNNING", 0))


def test_the_page_and_both_apis_answer_as_one_process_does(url: str, checkpoint: Path, photos: list[Path]) -> None:
    assert "<html" in httpx.get(f"{url}/").text.lower()
    photo = photos[0]
    expected = predict_paths(checkpoint, [photo], top_k=3)[0].top
    answer = httpx.post(f"{url}/v1/predict?top_k=3", content=photo.read_bytes(), headers={"Content-Type": "image/jpeg"})
    top = answer.json()["predictions"][0]["top"]
    assert [t["class"] for t in top] == [c for c, _ in expected]
    np.testing.assert_allclose([t["probability"] for t in top], [p for _, p in expected], atol=1e-5)
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    files = httpclient.InferInput("image_bytes", [1], "BYTES")
    files.set_data_from_numpy(np.array([photo.read_bytes()], dtype=object))
    result = client.infer("googlenet", [files], parameters={"top_k": 3})
    assert [label.decode() for label in result.as_numpy("labels")[0]] == [c for c, _ in expected]
    client.close()
    refused = httpx.post(f"{url}/v1/predict", content=b"hello", headers={"Content-Type": "text/plain"})
    assert refused.status_code == 415 and "error" in refused.json()


def test_a_bounded_load_loses_nothing_and_batches(url: str, photos: list[Path]) -> None:
    result = run_load(
        url, photos[0].read_bytes(), content_type="image/jpeg", requests=300, concurrency=16, bad_every=10
    )
    assert result.unexpected == [], result.unexpected[:5]
    assert (result.good_ok, result.bad_refused) == (270, 30)
    assert max(result.batch_sizes) > 1 and max(result.batch_sizes) <= SETTINGS.max_batch  # @serve.batch at work


def test_a_replica_killed_mid_load_leaves_the_other_answering(url: str, photos: list[Path]) -> None:
    assert len(replicas()) == 2
    outcome: list[LoadResult] = []
    load = threading.Thread(
        target=lambda: outcome.append(
            run_load(url, photos[0].read_bytes(), content_type="image/jpeg", requests=1500, concurrency=16)
        )
    )
    load.start()
    time.sleep(1.0)
    victim = replicas()[0]
    assert load.is_alive()  # the kill lands mid-load
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    load.join(300)
    (result,) = outcome
    # Requests the dead replica held when it died may fail; every other request is answered.
    lost = len(result.unexpected)
    assert result.good_ok + lost == 1500 and lost <= 4 * SETTINGS.max_batch, result.unexpected[:5]
    deadline = time.monotonic() + 120
    while (victim in replicas() or running_replicas() < 2) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert victim not in replicas() and running_replicas() == 2  # Ray Serve replaced it
    after = run_load(url, photos[0].read_bytes(), content_type="image/jpeg", requests=50, concurrency=8)
    assert after.good_ok == 50, after.unexpected[:5]
