"""Our client (sync and async) and the command line against apps served on a real local Ray."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
from client_support import CuttingProxy, terminal_chunk
from conftest import APPS
from ray import serve

from inferencesh_ray import (
    APIError,
    APIValidationError,
    TaskCancelled,
    TaskFailed,
    TaskStatus,
    UploadFileOptions,
    WaitTimeout,
    async_inference,
    inference,
)

pytestmark = pytest.mark.ray
STRIPPED = {"id", "created_at", "updated_at", "input", "output", "logs", "status"}


@pytest.fixture(scope="module")
def served(ray_serve, tmp_path_factory):
    """The counting app and the file app, each behind its own ingress, on the session's Ray.

    Deleted afterwards: each replica holds a CPU of the session's Ray, which the test
    modules after this one need for their own deployments.
    """
    data = tmp_path_factory.mktemp("client-serving")
    try:
        counting = ray_serve.deploy("client-counting", path=str(APPS / "counting.py"), data_dir=str(data / "counting"))
        files = ray_serve.deploy("client-files", path=str(APPS / "file_app.py"), data_dir=str(data / "files"))
        yield counting, files
    finally:
        for name in ("client-counting", "client-files"):
            serve.delete(name)


@pytest.fixture
def url(served) -> str:
    return served[0]


def wait_running(url: str, task_id: str) -> None:
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/tasks/{task_id}").json()["data"]["status"] != TaskStatus.RUNNING:
        assert time.monotonic() < deadline, "the task never ran"
        time.sleep(0.05)


def check_progress(updates: list[dict], text: str, times: int) -> None:
    statuses = [update["status"] for update in updates]
    assert statuses == sorted(statuses) and statuses[-1] == TaskStatus.COMPLETED, statuses
    running = [update for update in updates if update["status"] == TaskStatus.RUNNING]
    assert any(update["output"] for update in running) and any(update["logs"] for update in running)
    assert updates[-1]["output"] == {"text": f"{text}{times - 1}", "mode": "a"}
    assert all(set(update) == STRIPPED for update in updates)


def test_sync_client_every_task_call(url):
    with inference(base_url=url) as client:
        result = client.run({"app": "counting", "input": {"text": "hi", "times": 3}})
        assert set(result) == STRIPPED and result["output"] == {"text": "hihihi", "mode": "a"}

        task = client.tasks.run({"app": "counting:progress", "input": {"text": "w", "times": 3}}, wait=False)
        assert client.tasks.get(task["id"]).data["function"] == "progress"
        assert client.tasks.wait_for_completion(task["id"], timeout=60)["output"]["text"] == "w2"
        with client.tasks.stream(task["id"]) as stream:
            assert [TaskStatus(u["status"]).name for u in stream] == ["COMPLETED"]  # ended: the snapshot only
        assert stream.result["output"]["text"] == "w2"

        check_progress(list(client.tasks.run({"app": "counting:progress", "input": {"text": "s", "times": 4}}, stream=True)), "s", 4)

        with pytest.raises(TaskFailed, match="^RuntimeError: boom: x$"):
            client.run({"app": "counting:boom", "input": {"text": "x"}})
        with pytest.raises(APIValidationError) as info:
            client.run({"app": "counting", "input": {"times": 99}})
        assert "input.text" in info.value.fields
        with pytest.raises(APIError, match="HTTP 404"):
            client.tasks.get("no-such-task")

        slow = client.run({"app": "counting:slow", "input": {"text": "sync-client"}}, wait=False)
        wait_running(url, slow["id"])
        with pytest.raises(WaitTimeout):
            client.wait_for_completion(slow["id"], timeout=0.5)
        client.tasks.cancel(slow["id"])
        with pytest.raises(TaskCancelled):
            client.tasks.wait_for_completion(slow["id"], timeout=30)


def test_async_client_every_task_call(url):
    async def body():
        async with async_inference(base_url=url) as client:
            result = await client.run({"app": "counting", "input": {"text": "a", "times": 2}})
            assert set(result) == STRIPPED and result["output"]["text"] == "aa"

            task = await client.tasks.run({"app": "counting:progress", "input": {"text": "q", "times": 4}}, wait=False)
            assert (await client.tasks.get(task["id"])).data["id"] == task["id"]
            async with client.tasks.stream(task["id"]) as stream:
                check_progress([update async for update in stream], "q", 4)
            assert (await client.tasks.wait_for_completion(task["id"], timeout=60))["output"]["text"] == "q3"

            streamed = await client.tasks.run({"app": "counting:progress", "input": {"text": "r", "times": 3}}, stream=True)
            check_progress([update async for update in streamed], "r", 3)

            with pytest.raises(TaskFailed, match="boom: z"):
                await client.run({"app": "counting:boom", "input": {"text": "z"}})
            with pytest.raises(APIError) as info:
                await client.run({"app": "nope", "input": {}})
            assert info.value.status_code == 404 and info.value.code == "not_found"

            slow = await client.run({"app": "counting:slow", "input": {"text": "async-client"}}, wait=False)
            await asyncio.to_thread(wait_running, url, slow["id"])
            with pytest.raises(WaitTimeout):
                await client.wait_for_completion(slow["id"], timeout=0.5)
            await client.tasks.cancel(slow["id"])
            with pytest.raises(TaskCancelled):
                await client.tasks.wait_for_completion(slow["id"], timeout=30)

    asyncio.run(body())


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_cut_stream_is_reconciled(ray_serve, url, mode):
    """A proxy drops the first stream mid-way, and every terminal update after: the client still ends right."""
    prefix = url.split(str(ray_serve.port), 1)[1]

    midway = []

    def cut(index: int, chunk: bytes) -> bool:
        if not midway and b"step 1" in chunk:
            midway.append(index)
            return True
        return terminal_chunk(chunk)

    proxy = CuttingProxy(ray_serve.port, cut)
    params = {"app": "counting:progress", "input": {"text": "k", "times": 5}}
    try:
        if mode == "sync":
            client = inference(base_url=proxy.url + prefix)
            updates = list(client.run(params, stream=True, reconnect_delay_ms=100))
            with pytest.raises(TaskFailed, match="boom: cut"):
                client.run({"app": "counting:boom", "input": {"text": "cut"}})
        else:
            async def body():
                async with async_inference(base_url=proxy.url + prefix) as client:
                    with pytest.raises(TaskFailed, match="boom: cut"):
                        await client.run({"app": "counting:boom", "input": {"text": "cut"}})
                    return [update async for update in await client.run(params, stream=True, reconnect_delay_ms=100)]

            updates = asyncio.run(body())
    finally:
        proxy.close()
    assert proxy.streams >= 3 and proxy.cuts >= 3  # mid-way, and each terminal update
    assert f"GET {prefix}/tasks/{updates[-1]['id']} HTTP/1.1" in proxy.requests
    assert updates[-1]["status"] == TaskStatus.COMPLETED and updates[-1]["output"]["text"] == "k4"
    assert any(update["output"] and update["output"]["text"] == "k0" for update in updates)


def test_a_run_whose_answer_is_lost_is_sent_again_and_runs_once(ray_serve, url):
    """The answer to the run is cut after the server created the task: the client sends the run
    again with its Idempotency-Key, and gets that task, which ran once."""
    prefix = url.split(str(ray_serve.port), 1)[1]
    dropped = []

    def drop(chunk: bytes) -> bool:
        if not dropped and b'"function":"blocking"' in chunk and b"x-ndjson" not in chunk:
            dropped.append(chunk)
            return True
        return False

    proxy = CuttingProxy(ray_serve.port, lambda index, chunk: False, drop)
    try:
        done = inference(base_url=proxy.url + prefix).run({"app": "counting:blocking", "input": {"text": "lost-answer"}})
    finally:
        proxy.close()
    assert dropped and proxy.requests.count(f"POST {prefix}/apps/run HTTP/1.1") == 2
    assert done["status"] == TaskStatus.COMPLETED and done["output"]["text"] == "lost-answer"
    assert ray_serve.lifecycle().count("blocking:start:lost-answer") == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_files_uploaded_from_inputs_and_downloaded_from_outputs(served, tmp_path, mode, monkeypatch):
    url = served[1]
    (tmp_path / "photo.png").write_bytes(b"\x89PNG served")
    monkeypatch.chdir(tmp_path)
    params = {"app": "file-app:reverse", "input": {"image": "photo.png"}}
    if mode == "sync":
        client = inference(base_url=url)
        uploaded = client.files.upload(b"bytes", UploadFileOptions(filename="b.txt", content_type="text/plain"))
        result = client.run(params)
        saved = client.files.download(result["output"]["image"], tmp_path)
    else:
        async def body():
            async with async_inference(base_url=url) as client:
                uploaded = await client.files.upload(b"bytes", UploadFileOptions(filename="b.txt", content_type="text/plain"))
                result = await client.run(params)
                return uploaded, result, await client.files.download(result["output"]["image"], tmp_path)

        uploaded, result, saved = asyncio.run(body())
    assert httpx.get(uploaded["uri"]).content == b"bytes"
    assert result["input"]["image"].startswith(url + "/files/")
    assert saved.read_bytes() == b"\x89PNG served"[::-1]


def test_sessions_through_our_client(url):
    client = inference(base_url=url)
    first = client.run({"app": "counting", "input": {"text": "s"}, "session": "new", "session_timeout": 120})
    session_id = first["session_id"]
    assert client.run({"app": "counting:shout", "input": {"text": "x"}, "session": session_id})["session_id"] == session_id
    info = client.sessions.get(session_id)
    assert info["status"] == "active" and info["call_count"] == 2 and info["idle_timeout"] == 120
    assert session_id in [session["id"] for session in client.sessions.list()]

    async def body():
        async with async_inference(base_url=url) as aclient:
            again = await aclient.run({"app": "counting", "input": {"text": "a"}, "session": session_id})
            kept = await aclient.sessions.keepalive(session_id)
            await aclient.sessions.end(session_id)
            return again, kept, await aclient.sessions.get(session_id)

    again, kept, ended = asyncio.run(body())
    assert again["session_id"] == session_id and kept["call_count"] == 3 and ended["status"] == "ended"
    with pytest.raises(APIError) as info:
        client.run({"app": "counting", "input": {"text": "late"}, "session": session_id})
    assert info.value.status_code == 410 and info.value.code == "SESSION_ENDED"
    client.sessions.end(session_id)  # idempotent


def environment(url: str) -> dict:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_")}, "INFERENCE_BASE_URL": url}


def cli(url: str, *args: str):
    return subprocess.run(
        [sys.executable, "-m", "inferencesh_ray.cli", *args], capture_output=True, text=True, timeout=120,
        env=environment(url), stdin=subprocess.DEVNULL,
    )


def test_the_command_line_against_ray(url):
    run = cli(url, "app", "run", "counting:progress", "-i", '{"text": "c", "times": 3}')
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"text": "c2", "mode": "a"}
    assert "step 2" in run.stderr.splitlines() and 'progress: {"text": "c0", "mode": "a"}' in run.stderr

    task = json.loads(cli(url, "app", "run", "counting", "-i", '{"text": "n"}', "--no-wait").stdout)
    streamed = cli(url, "task", "stream", task["id"])
    assert json.loads(streamed.stdout.splitlines()[-1])["status"] == TaskStatus.COMPLETED
    assert json.loads(cli(url, "task", "get", task["id"]).stdout)["output"]["text"] == "n"
    opened = cli(url, "app", "run", "counting", "-i", '{"text": "s"}', "--session", "new")
    assert opened.returncode == 0, opened.stderr
    session_id = re.search(r"in session (\S+) \(continue it with --session", opened.stderr).group(1)
    again = cli(url, "app", "run", "counting", "-i", '{"text": "t"}', "--session", session_id)
    assert again.returncode == 0 and json.loads(again.stdout)["text"] == "t", again.stderr
    inference(base_url=url).sessions.end(session_id)
    failed = cli(url, "app", "run", "counting:boom", "-i", '{"text": "b"}')
    assert failed.returncode == 1 and failed.stderr.splitlines()[-1].endswith("failed: RuntimeError: boom: b")

    proc = subprocess.Popen(
        [sys.executable, "-m", "inferencesh_ray.cli", "app", "run", "counting:slow", "-i", '{"text": "cli-ray"}'],
        env=environment(url), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    task_id = proc.stderr.readline().split()[1]
    wait_running(url, task_id)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and f"cancelled task {task_id}" in stderr
    with pytest.raises(TaskCancelled):
        inference(base_url=url).wait_for_completion(task_id, timeout=30)
