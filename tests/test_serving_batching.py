"""@batched functions on a real Ray: tasks sent together run as one call, settings come from the config."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from conftest import ROOT
from inferencesh import inference
from ray import serve

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def batched(ray_serve, tmp_path_factory):
    apps = [{"path": str(ROOT / "tests" / "apps" / "batched_app.py"), "name": "batched",
             # The decorator says 4 per batch within 50 ms; the deployment's config wins.
             "batching": {"embed": {"max_batch_size": 8, "max_wait_ms": 300}}}]
    url = ray_serve.deploy("batched", apps=apps, data_dir=str(tmp_path_factory.mktemp("batched")))
    yield url
    serve.delete("batched")


async def _run_together(url: str, texts: list[str]) -> list[dict]:
    async with httpx.AsyncClient(timeout=60) as client:
        async def one(text: str) -> dict:
            created = await client.post(f"{url}/apps/run", json={"app": "batched", "function": "embed",
                                                                  "input": {"text": text, "fail": text == "bad"}})
            task_id = created.json()["data"]["id"]
            async with client.stream("GET", f"{url}/tasks/{task_id}/stream") as response:
                async for line in response.aiter_lines():
                    if line and '"status"' in line and json.loads(line)["status"] >= 10:
                        return json.loads(line)
            raise AssertionError("the stream ended without a terminal task")

        return await asyncio.gather(*(one(text) for text in texts))


def test_tasks_sent_together_run_as_one_batch_of_the_configured_size(batched):
    texts = [f"t{i}" for i in range(7)] + ["bad"]
    done = dict(zip(texts, asyncio.run(_run_together(batched, texts))))
    assert done["bad"]["status"] == 11 and "cannot embed bad" in done["bad"]["error"]
    outputs = [done[text]["output"] for text in texts[:-1]]
    assert [output["text"] for output in outputs] == texts[:-1]
    # More than the decorator's 4 share a batch: the config's 8 applied.
    assert max(output["batch_size"] for output in outputs) > 4
    assert any("embedding t0" in log["content"] for log in done["t0"]["logs"])
    assert any(log["content"].startswith("batch of ") for log in done["t0"]["logs"])  # its print, on a replica


def test_a_session_calls_a_batched_function_as_any_other(batched):
    sdk = inference(api_key="k", base_url=batched)
    first = sdk.run({"app": "batched", "function": "embed", "input": {"text": "s1"}, "session": "new"})
    assert first["output"]["text"] == "s1" and first["output"]["batch_size"] == 1
    second = sdk.run({"app": "batched", "function": "embed", "input": {"text": "s2"}, "session": first["session_id"]})
    assert second["output"]["text"] == "s2"
    sdk.sessions.end(first["session_id"])
