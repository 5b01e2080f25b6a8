"""Task streams as the official clients read them: lines small enough for the async client,
clean ends it can recover from, and the task often enough for its timeouts (no Ray)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from client_support import serving
from conftest import APPS
from helpers import make_server
from inferencesh import async_inference

from inferencesh_ray.status import TaskStatus
from inferencesh_ray.task_stream import MAX_LINE_BYTES, stream_line, task_lines
from inferencesh_ray.writes import StoreUnavailable

KEY = "stream-key"


def _task(status: TaskStatus, **fields) -> dict:
    return {"id": "t1", "status": int(status), "input": {}, "setup": {}, "output": None, "logs": [], **fields}


def _view(task: dict) -> dict:
    line = stream_line(task)
    assert line is not None and len(line) <= MAX_LINE_BYTES and line.endswith(b"\n")
    return json.loads(line)


def test_a_line_carries_the_last_log_lines_only():
    logs = [{"id": f"t1-{i}", "content": str(i)} for i in range(500)]
    view = _view(_task(TaskStatus.RUNNING, logs=logs))
    assert len(view["logs"]) == 50 and view["logs"][-1]["content"] == "499"


def test_a_running_tasks_line_leaves_out_what_does_not_fit_largest_first():
    big = "x" * 200_000
    no_input = _view(_task(TaskStatus.RUNNING, input={"text": big}, setup={"s": big}, output={"text": "small"}))
    assert no_input["input"] is None and no_input["setup"] is None and no_input["output"] == {"text": "small"}

    long_logs = _view(_task(TaskStatus.RUNNING, logs=[{"id": "t1-0", "content": big}], output={"n": 1}))
    assert long_logs["logs"][0]["content"].startswith("x" * 1000 + "... (cut here: GET /tasks/t1 has the whole line)")
    assert long_logs["output"] == {"n": 1}

    no_output = _view(_task(TaskStatus.RUNNING, output={"text": big}))
    assert no_output["output"] is None and no_output["status"] == TaskStatus.RUNNING


def test_a_finished_task_that_does_not_fit_is_not_sent_cut():
    assert stream_line(_task(TaskStatus.COMPLETED, output={"text": "x" * 200_000})) is None
    assert json.loads(stream_line(_task(TaskStatus.COMPLETED, output={"text": "ok"})))["output"] == {"text": "ok"}


def test_a_store_that_fails_mid_stream_ends_the_stream_cleanly():
    """The error went up through the response, cut off mid-body: the official async client gives up on that."""

    class FailingOnce:
        def __init__(self) -> None:
            self.calls = 0

        async def watch(self, task_id, owner, seen, timeout):
            self.calls += 1
            if self.calls > 1:
                raise StoreUnavailable("the task store could not be read (ConnectionError: gone)")
            return 1, _task(TaskStatus.RUNNING)

    async def lines():
        return [line async for line in task_lines(FailingOnce(), "t1", "o", 0.01)]

    (only,) = asyncio.run(lines())
    assert json.loads(only)["status"] == TaskStatus.RUNNING


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with serving(make_server(APPS / "counting.py", tmp_path_factory.mktemp("streams"), keys=[KEY]).app) as base:
        yield base


def test_the_official_async_client_gets_a_result_too_large_for_a_stream_line(url):
    """aiohttp raised LineTooLong (its limit is 512 KiB) on the terminal task and did not retry."""

    async def scenario():
        client = async_inference(api_key=KEY, base_url=url)
        # Text with spaces: the SDK uploads a string that looks like base64 as a file.
        done = await client.run({"app": "counting", "input": {"text": "x y " * 75_000, "times": 2}})
        followed = await client.run({"app": "counting:progress", "input": {"text": "y z " * 75_000, "times": 2}})
        return done, followed

    done, followed = asyncio.run(scenario())
    assert done["status"] == TaskStatus.COMPLETED and done["output"]["text"] == "x y " * 150_000
    assert followed["output"]["text"] == "y z " * 75_000 + "1"


def test_the_official_async_client_times_out_within_a_resend_of_its_timeout(url):
    """It checks its `timeout` only as a task arrives: the task came every 15 s of quiet, so a 1 s wait took 15 s."""

    async def scenario():
        client = async_inference(api_key=KEY, base_url=url)
        task = await client.run({"app": "counting:slow", "input": {"text": "t"}}, wait=False)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.wait_for_completion(task["id"], timeout=1)
        waited = time.monotonic() - started
        await client.cancel(task["id"])
        return waited

    assert asyncio.run(scenario()) < 7


def test_a_stream_open_as_the_ingress_closes_ends_cleanly(tmp_path):
    """As the ingress's `__del__` closes it: watches end, then its listener stops."""
    import httpx

    from conftest import free_port
    from inferencesh_ray.listener import Listener

    server = make_server(APPS / "counting.py", tmp_path, keys=[KEY])
    port = free_port()

    async def scenario():
        listener = Listener(server.app, f"127.0.0.1:{port}")
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:
            for _ in range(100):  # it starts on the loop's next turns
                try:
                    task = (await client.post("/apps/run", json={"app": "counting:slow", "input": {"text": "s"}})).json()
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
            async with client.stream("GET", f"/tasks/{task['data']['id']}/stream") as response:
                lines = response.aiter_lines()
                first = json.loads(await anext(lines))
                started = time.monotonic()
                server.dispatcher.tasks.end_watches()
                closing = asyncio.create_task(listener.close())
                rest = [line async for line in lines]  # an incomplete body raises here
            await closing
            await server.dispatcher.close()
        return first, rest, time.monotonic() - started

    first, rest, took = asyncio.run(scenario())
    assert first["status"] in (TaskStatus.QUEUED, TaskStatus.RUNNING) and rest == [] and took < 2


def test_run_fields_this_server_has_no_counterpart_for_are_ignored_with_a_warning(url):
    """`run_at` ran the task at once and `webhook` was never called, with nothing said: the SDK
    hands an answer's `messages` to `on_message`."""
    from inferencesh import Inference

    received: list = []
    client = Inference(api_key=KEY, base_url=url, on_message=received.extend)
    task = client.run({"app": "counting", "input": {"text": "w"}, "run_at": "2030-01-01T00:00:00Z",
                       "webhook": "https://example.com/hook", "infra": None}, wait=False)
    assert task["id"]
    assert [(m["level"], m["code"], m["meta"]) for m in received] == [
        ("warning", "ignored_field", {"field": "run_at"}), ("warning", "ignored_field", {"field": "webhook"})]
    assert received[0]["message"] == "`run_at` is not supported by this server and was ignored: the task runs now"
    received.clear()
    client.run({"app": "counting", "input": {"text": "plain"}}, wait=False)
    assert received == []
