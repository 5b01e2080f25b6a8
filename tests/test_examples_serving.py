"""The showcase (all four examples behind one ingress) through `serve run`, real HTTP and the official client."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from conftest import ROOT
from inferencesh import inference
from PIL import Image
from ray import serve

pytestmark = pytest.mark.ray


def wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def client(ray_serve):
    """`serve run --non-blocking deployments/showcase.yaml`, as `make serve` runs it, on the session's Ray.

    Serve is already running there, on `ray_serve.port`; the config's own http_options do not apply.
    """
    env = {**os.environ, "RAY_ADDRESS": ray_serve.address}
    deployed = subprocess.run(
        [sys.executable, "-m", "ray.serve.scripts", "run", "--non-blocking", "deployments/showcase.yaml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    url = "http://127.0.0.1:8000"  # the ingress's own door, as the config says (`listen`)
    try:
        wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, timeout=120)
        assert httpx.get(f"http://127.0.0.1:{ray_serve.port}/health").status_code == 200  # Serve's proxy too
        yield inference(api_key="k", base_url=url)
    finally:
        serve.delete("showcase")


def download(file: dict) -> bytes:
    response = httpx.get(file["uri"])
    response.raise_for_status()
    return response.content


def test_one_ingress_serves_the_four_examples(client, ray_serve):
    apps = httpx.get(f"http://127.0.0.1:{ray_serve.port}/apps").json()["data"]
    assert sorted(app["name"] for app in apps) == ["chat", "csv-pipeline", "image-model", "text-embeddings"]


def test_image_model_upscales_an_uploaded_png(client, tmp_path):
    source = tmp_path / "tile.png"
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5).save(source)
    # A local path in input: the official client uploads it and sends the file's URI.
    result = client.run({"app": "image-model", "function": "upscale", "input": {"image": str(source), "scale": 2}})
    output = result["output"]
    assert (output["width"], output["height"]) == (8, 8)
    assert output["image"]["content_type"] == "image/png"
    assert Image.open(io.BytesIO(download(output["image"]))).size == (8, 8)
    generated = client.run({"app": "image-model", "input": {"width": 16, "height": 8}})["output"]  # default: run
    inpainted = client.run({"app": "image-model:inpaint", "input": {"image": generated["image"]["uri"], "box": [2, 2, 4, 4]}})
    assert (inpainted["output"]["width"], inpainted["output"]["height"]) == (16, 8)  # an output URI chains in


def test_text_embeddings_rank_and_embed(client):
    ranked = client.run({"app": "text-embeddings", "function": "similarity", "input": {
        "query": "Where can I buy fresh bread?",
        "documents": ["GPUs speed up matrix products.", "The bakery on the corner opens at seven."],
    }})["output"]["results"]
    assert [r["index"] for r in ranked] == [1, 0]
    embedded = client.run({"app": "text-embeddings:embed", "input": {"texts": ["one", "two"]}})["output"]
    assert len(embedded["embeddings"]) == 2 and embedded["dimensions"] == 384
    batched = client.run({"app": "text-embeddings:embed_batched", "input": {"texts": ["one", "two"]}})["output"]
    assert np.allclose(batched["embeddings"], embedded["embeddings"], atol=1e-5)


def test_chat_keeps_history_in_a_session_and_completion_is_stateless(client):
    with client.session("chat", function="chat", input={"message": "Hello!"}) as session:
        second = session.call("chat", {"message": "Tell me about replicas."})
        third = session.call("chat", {"message": "Why?"})
    assert second["output"]["turn"] == 2 and third["output"]["turn"] == 3
    assert [m["content"] for m in third["output"]["history"] if m["role"] == "user"] == [
        "Hello!", "Tell me about replicas.", "Why?",
    ]
    assert third["output"]["reply"].lower().startswith("replica")  # from the earlier turn it remembers
    completions = [
        client.run({"app": "chat", "function": "completion", "input": {"prompt": "A task is", "seed": 2}})["output"]
        for _ in range(2)
    ]
    assert completions[0] == completions[1] and completions[0]["text"].startswith("A task is ")


def test_csv_pipeline_validates_processes_and_exports_an_uploaded_table(client):
    table = client.files.upload(str(ROOT / "examples" / "csv_pipeline" / "orders.csv"))["uri"]
    report = client.run({"app": "csv-pipeline", "function": "validate", "input": {"table": table}})["output"]
    assert (report["ok"], report["rows"], report["valid_rows"]) == (False, 11, 5)
    assert {error["line"] for error in report["errors"]} == {6, 7, 8, 9, 10, 12}
    processed = client.run({"app": "csv-pipeline", "function": "process",
                            "input": {"table": table, "group_by": "region"}})["output"]
    rows = list(csv.DictReader(io.StringIO(download(processed["table"]).decode())))
    assert [row["group"] for row in rows] == ["East", "North", "South"] and processed["dropped"] == 6
    exported = client.run({"app": "csv-pipeline", "function": "export", "input": {"table": table, "format": "jsonl"}})
    assert len(download(exported["output"]["file"]).decode().splitlines()) == exported["output"]["records"] == 5
