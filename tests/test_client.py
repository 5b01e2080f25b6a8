"""Our client, sync and async, without Ray: the real HTTP API (in-process store, app host
and local file storage) served by uvicorn in a thread, plus httpx mock transports and a
small stub server where a check needs the exact bytes on the wire."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
import tracemalloc
from typing import Optional

import httpx
import pytest
from client_support import CuttingProxy, StubFiles, api_server_fixture, serving, terminal_chunk
from conftest import free_port
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from inferencesh_ray import (
    APIError,
    APIValidationError,
    ConfigurationError,
    ConnectionFailed,
    File,
    ProtocolError,
    TaskCancelled,
    TaskFailed,
    TaskStatus,
    UploadFileOptions,
    WaitTimeout,
    async_inference,
    inference,
)
from inferencesh_ray.client import Response
from inferencesh_ray.client._files import DiskWriter, InputFiles, download_target
from inferencesh_ray.client._stream import HEARTBEAT, StreamOptions, TaskWatch, parse_line

KEY = "test-key"
MIB = 1 << 20
STRIPPED = {"id", "created_at", "updated_at", "input", "output", "logs", "status"}


server = api_server_fixture("counting.py", KEY)
files_server = api_server_fixture("file_app.py", KEY)


@pytest.fixture(scope="module")
def stub_files():
    """A stand-in for the file endpoints that records every request, for exact wire checks."""
    stub = StubFiles(api_key=KEY)
    with serving(Starlette(routes=stub.routes())) as url:
        stub.url = url
        yield stub


def sync_client(url: str, **options):
    return inference(api_key=KEY, base_url=url, **options)


def async_client(url: str, **options):
    return async_inference(api_key=KEY, base_url=url, **options)


def assert_progress_stream(updates: list[dict], text: str, times: int) -> None:
    statuses = [update["status"] for update in updates]
    assert statuses == sorted(statuses) and statuses[-1] == TaskStatus.COMPLETED, statuses
    running = [update for update in updates if update["status"] == TaskStatus.RUNNING]
    assert any(update["output"] for update in running), "no snapshot arrived before the end"
    assert any(update["logs"] for update in running), "no log line arrived before the end"
    assert updates[-1]["output"] == {"text": f"{text}{times - 1}", "mode": "a"}
    assert all(set(update) == STRIPPED for update in updates)


# -- configuration -------------------------------------------------------------------


def test_configuration_from_arguments_or_environment(monkeypatch):
    monkeypatch.delenv("INFERENCE_BASE_URL", raising=False)
    monkeypatch.delenv("INFERENCE_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="INFERENCE_BASE_URL"):
        inference()
    with pytest.raises(ConfigurationError, match="INFERENCE_BASE_URL"):
        async_inference(api_key="k")
    with pytest.raises(ConfigurationError, match="not an http"):
        inference(base_url="127.0.0.1:8000")
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"data": {"id": "t1", "status": 10}})

    monkeypatch.setenv("INFERENCE_BASE_URL", "http://server.test/prefix/")
    monkeypatch.setenv("INFERENCE_API_KEY", "from-env")
    with inference(transport=httpx.MockTransport(handler)) as client:
        assert client.base_url == "http://server.test/prefix"
        client.tasks.get("t1")
    monkeypatch.delenv("INFERENCE_API_KEY")
    inference(transport=httpx.MockTransport(handler)).tasks.get("t 1/2")
    inference(api_key="given", transport=httpx.MockTransport(handler)).tasks.get("t1")
    assert [str(r.url) for r in seen] == [
        "http://server.test/prefix/tasks/t1", "http://server.test/prefix/tasks/t%201%2F2", "http://server.test/prefix/tasks/t1"
    ]
    assert seen[0].headers["authorization"] == "Bearer from-env"
    assert "authorization" not in seen[1].headers  # no key: none sent (a local server needs none)
    assert seen[2].headers["authorization"] == "Bearer given"
    assert seen[0].headers["user-agent"].startswith("inferencesh-ray-py/")


# -- the envelope and errors -----------------------------------------------------------


def mock_answers(answers: dict[str, httpx.Response]):
    return httpx.MockTransport(lambda request: answers[request.url.path])


def test_envelope_messages_and_protocol_errors():
    messages = []
    answers = {
        "/tasks/env": httpx.Response(200, json={"success": True, "data": {"id": "env"}, "messages": [{"level": "warning", "message": "w"}]}),
        "/tasks/bare": httpx.Response(200, json={"id": "bare"}),
        "/tasks/none": httpx.Response(204, content=b"ignored"),
        "/tasks/html": httpx.Response(200, text="<html>a proxy page</html>"),
        "/tasks/text-error": httpx.Response(502, text="Bad Gateway from nginx"),
        "/apps/run": httpx.Response(200, json={"data": {"status": 1}}),
        "/files": httpx.Response(200, json={"data": [{"id": "f", "uri": "https://files.test/f"}]}),
    }
    client = inference(base_url="http://s.test", transport=mock_answers(answers), on_message=messages.append)
    got = client.tasks.get("env")
    assert isinstance(got, Response) and got.data == {"id": "env"} and got.has_warnings
    assert messages == [[{"level": "warning", "message": "w"}]]
    assert client.tasks.get("bare").data == {"id": "bare"}
    assert client.tasks.get("none").data is None
    with pytest.raises(ProtocolError, match="not JSON"):
        client.tasks.get("html")
    with pytest.raises(APIError) as info:
        client.tasks.get("text-error")
    assert str(info.value) == "HTTP 502: Bad Gateway from nginx" and info.value.code is None
    with pytest.raises(ProtocolError, match="task object with an `id`"):
        client.run({"app": "a", "input": {}})
    with pytest.raises(ProtocolError, match="No upload URL"):
        client.files.upload(b"bytes")


def refusing(times: int, retry_after: Optional[str] = "0", status: int = 429):
    """A server that refuses the first `times` requests (`status`, Retry-After), then creates the task."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) <= times:
            problem = {"type": "https://inference.sh/errors/rate_limited", "status": status, "detail": "full"}
            headers = {} if retry_after is None else {"retry-after": retry_after}
            return httpx.Response(status, headers=headers, json=problem)
        return httpx.Response(200, json={"data": {"id": "t1", "status": 2}})

    return seen, handler


def run_no_wait(mode: str, handler, **options) -> dict:
    body = {"app": "a", "input": {"text": "x"}}
    if mode == "sync":
        return inference(base_url="http://s.test", transport=httpx.MockTransport(handler), **options).run(body, wait=False)
    client = async_inference(base_url="http://s.test", transport=httpx.MockTransport(handler), **options)
    return asyncio.run(client.run(body, wait=False))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_run_refused_for_load_is_sent_again_after_retry_after(mode):
    seen, handler = refusing(2, retry_after="0.2")
    started = time.monotonic()
    assert run_no_wait(mode, handler)["id"] == "t1"  # max_retries=2 by default
    assert 0.4 <= time.monotonic() - started < 1.5  # each wait: Retry-After, stretched by at most a quarter
    assert len(seen) == 3 and len({request.content for request in seen}) == 1

    seen, handler = refusing(3)
    with pytest.raises(APIError) as info:
        run_no_wait(mode, handler)
    assert info.value.status_code == 429 and info.value.code == "rate_limited" and len(seen) == 3

    seen, handler = refusing(1)
    with pytest.raises(APIError, match="HTTP 429"):
        run_no_wait(mode, handler, max_retries=0)
    assert len(seen) == 1


@pytest.mark.parametrize("status, retry_after", [(500, "0"), (429, "3600"), (429, "-1")])
def test_a_500_or_a_long_retry_after_is_not_retried(status, retry_after):
    """A 500 is the server's bug, which the same request meets again; an hour's wait is the caller's call."""
    seen, handler = refusing(1, retry_after, status)
    with pytest.raises(APIError) as info:
        run_no_wait("sync", handler)
    assert info.value.status_code == status and len(seen) == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_unanswered_run_is_sent_again_with_its_idempotency_key(mode):
    """A dropped connection, a timeout, a proxy's 502 or the server's 503: the same key each time,
    so the server creates the task once."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            raise httpx.ReadTimeout("no answer", request=request)
        if len(seen) == 2:
            return httpx.Response(503, headers={"retry-after": "0"}, json={"status": 503, "detail": "store down"})
        return httpx.Response(200, json={"data": {"id": "t1", "status": 2}})

    assert run_no_wait(mode, handler)["id"] == "t1"
    keys = {request.headers["idempotency-key"] for request in seen}
    assert len(seen) == 3 and len(keys) == 1 and len(next(iter(keys))) == 32

    seen.clear()
    assert run_no_wait(mode, handler, max_retries=3)["id"] == "t1"
    assert seen[0].headers["idempotency-key"] not in keys  # a new run, a new key

    seen.clear()
    client = inference(base_url="http://s.test", transport=httpx.MockTransport(handler), max_retries=1)
    with pytest.raises(APIError, match="HTTP 503"):
        client.run({"app": "a", "input": {}, "session": "new"}, wait=False, idempotency_key="order-17")
    assert [request.headers["idempotency-key"] for request in seen] == ["order-17", "order-17"]


def test_a_run_with_files_sent_again_with_its_key_is_the_same_run(files_server, tmp_path, monkeypatch):
    """Each run uploads its local files again, under new URIs: the server compares what the files are."""
    (tmp_path / "photo.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "other.png").write_bytes(b"\x89PNG another one")
    monkeypatch.chdir(tmp_path)
    client = sync_client(files_server.url)
    params = {"app": "file-app", "function": "reverse", "input": {"image": "photo.png"}}
    first = client.run(params, wait=False, idempotency_key="order-17")
    assert client.run(params, wait=False, idempotency_key="order-17")["id"] == first["id"]
    with pytest.raises(APIError, match="another input") as info:
        client.run({**params, "input": {"image": "other.png"}}, wait=False, idempotency_key="order-17")
    assert info.value.status_code == 422


def test_backing_off_without_retry_after_stops_growing_at_8_s():
    """Doubling from 0.5 s passed the 60 s cap at the eighth try, which then was never sent."""
    from inferencesh_ray.client._wire import retry_delay

    delays = [retry_delay(None, attempt, 20, resend=True) for attempt in range(12)]
    assert all(delay is not None for delay in delays) and 8 <= delays[-1] <= 10
    assert retry_delay(None, 12, 12, resend=True) is None and retry_delay(None, 0, 2, resend=False) is None


def test_reads_and_cancels_are_sent_again_when_unanswered():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) % 2:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"data": {"id": "t1", "status": 9}})

    client = inference(base_url="http://s.test", transport=httpx.MockTransport(handler))
    assert client.tasks.get("t1").data["id"] == "t1"
    client.tasks.cancel("t1")
    assert [request.method for request in seen] == ["GET", "GET", "POST", "POST"]
    seen.clear()
    with pytest.raises(ConnectionFailed):
        inference(base_url="http://s.test", transport=httpx.MockTransport(handler), max_retries=0).tasks.get("t1")
    assert len(seen) == 1


@pytest.mark.parametrize("retry_after", [None, "Fri, 04 Dec 2026 18:00:00 GMT"])
def test_a_429_without_retry_after_in_seconds_backs_off_from_half_a_second(retry_after):
    seen, handler = refusing(2, retry_after)
    started = time.monotonic()
    assert run_no_wait("sync", handler)["id"] == "t1"
    assert 1.5 <= time.monotonic() - started < 2.5 and len(seen) == 3  # 0.5 s, then 1 s
    with pytest.raises(ConfigurationError, match="max_retries"):
        inference(base_url="http://s.test", max_retries=-1)


def test_http_errors_are_typed(server):
    client = sync_client(server.url)
    with pytest.raises(APIValidationError) as info:
        client.run({"app": "counting", "input": {"times": 99}})
    error = info.value
    assert error.status_code == 422 and error.code == "validation_error"
    assert "input.text" in error.fields and "input.times" in error.fields
    assert str(error).startswith("HTTP 422: invalid request: input.text: field required")
    with pytest.raises(APIError) as info:
        client.run({"app": "nope", "input": {}})
    assert info.value.status_code == 404 and info.value.code == "not_found" and "counting" in info.value.message
    assert info.value.problem["status"] == 404
    with pytest.raises(APIError, match="HTTP 404"):
        client.tasks.get("no-such-task")
    started = time.monotonic()
    with pytest.raises(APIError, match="HTTP 404"):
        client.wait_for_completion("no-such-task")  # the stream's 404 is final: no reconnecting
    assert time.monotonic() - started < 2
    with pytest.raises(APIError) as info:
        inference(base_url=server.url).tasks.get("x")
    assert info.value.status_code == 401 and info.value.code == "unauthorized"
    with pytest.raises(ConnectionFailed, match="could not connect"):
        inference(base_url=f"http://127.0.0.1:{free_port()}").run({"app": "counting", "input": {"text": "x"}})


# -- tasks against the real API: sync --------------------------------------------------


def test_run_waits_and_returns_the_stripped_task(server):
    with sync_client(server.url) as client:
        result = client.run({"app": "counting", "input": {"text": "hi", "times": 3}})
    assert set(result) == STRIPPED
    assert result["status"] == TaskStatus.COMPLETED and isinstance(result["status"], int)
    assert result["output"] == {"text": "hihihi", "mode": "a"}
    assert [log["content"] for log in result["logs"]] == ["echoing hi"]


def test_no_wait_get_stream_and_wait_for_completion(server):
    client = sync_client(server.url)
    task = client.tasks.run({"app": "counting:progress", "input": {"text": "w", "times": 3}}, wait=False)
    assert set(task) == STRIPPED and task["status"] == TaskStatus.QUEUED
    got = client.tasks.get(task["id"])
    assert isinstance(got, Response) and got.data["function"] == "progress"  # the full task
    assert client.get_task(task["id"]).data["id"] == task["id"]  # the SDK's older name
    with client.tasks.stream(task["id"]) as stream:
        names = [TaskStatus(update["status"]).name for update in stream]
    assert names[-1] == "COMPLETED" and stream.result["output"]["text"] == "w2"
    done = client.tasks.wait_for_completion(task["id"], timeout=30)  # finished already: the snapshot says so
    assert done["output"] == {"text": "w2", "mode": "a"}


def test_stream_shows_logs_and_snapshots_while_running(server):
    stream = sync_client(server.url).tasks.run({"app": "counting:progress", "input": {"text": "s", "times": 4}}, stream=True)
    assert_progress_stream(list(stream), "s", 4)
    assert stream.result["status"] == TaskStatus.COMPLETED and stream.error is None


def test_failures_cancel_and_timeouts_are_typed(server):
    client = sync_client(server.url)
    with pytest.raises(TaskFailed, match="^RuntimeError: boom: x$") as info:
        client.run({"app": "counting:boom", "input": {"text": "x"}})
    assert isinstance(info.value, RuntimeError) and info.value.task["status"] == TaskStatus.FAILED
    with pytest.raises(TaskFailed, match="setup failed: ValueError: setup was told to fail"):
        client.run({"app": "counting", "input": {"text": "x"}, "setup": {"fail": True}})
    stream = client.run({"app": "counting:boom", "input": {"text": "y"}}, stream=True)
    with pytest.raises(TaskFailed):
        list(stream)
    assert isinstance(stream.error, TaskFailed) and stream.result is None

    task = client.run({"app": "counting:slow", "input": {"text": "sync"}}, wait=False)
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match="did not finish within 1 s") as info:
        client.wait_for_completion(task["id"], timeout=1)
    assert 0.9 < time.monotonic() - started < 3
    assert isinstance(info.value, TimeoutError) and info.value.task["status"] == TaskStatus.RUNNING
    client.tasks.cancel(task["id"])
    with pytest.raises(TaskCancelled, match="^task cancelled$"):
        client.wait_for_completion(task["id"], timeout=10)
    client.tasks.cancel(task["id"])  # a finished task: a no-op


# -- tasks against the real API: async --------------------------------------------------


def test_async_run_no_wait_get_stream_and_wait(server):
    async def body():
        async with async_client(server.url) as client:
            result = await client.run({"app": "counting", "input": {"text": "a", "times": 2}})
            assert set(result) == STRIPPED and result["output"] == {"text": "aa", "mode": "a"}
            task = await client.tasks.run({"app": "counting:progress", "input": {"text": "q", "times": 4}}, wait=False)
            assert set(task) == STRIPPED
            assert (await client.tasks.get(task["id"])).data["function"] == "progress"
            async with client.tasks.stream(task["id"]) as stream:
                updates = [update async for update in stream]
            assert_progress_stream(updates, "q", 4)
            assert stream.result == updates[-1]
            done = await client.tasks.wait_for_completion(task["id"], timeout=30)
            assert done["output"]["text"] == "q3"
            streamed = await client.tasks.run({"app": "counting:progress", "input": {"text": "r", "times": 3}}, stream=True)
            assert_progress_stream([update async for update in streamed], "r", 3)

    asyncio.run(body())


def test_async_failures_cancel_timeouts_and_errors(server):
    async def body():
        async with async_client(server.url) as client:
            with pytest.raises(TaskFailed, match="^RuntimeError: boom: z$"):
                await client.run({"app": "counting:boom", "input": {"text": "z"}})
            with pytest.raises(APIValidationError) as info:
                await client.run({"app": "counting", "input": {"times": 99}})
            assert "input.text" in info.value.fields
            with pytest.raises(APIError, match="HTTP 404"):
                await client.tasks.wait_for_completion("no-such-task")
            task = await client.run({"app": "counting:slow", "input": {"text": "async"}}, wait=False)
            started = time.monotonic()
            with pytest.raises(WaitTimeout) as info:
                await client.wait_for_completion(task["id"], timeout=1)
            assert 0.9 < time.monotonic() - started < 3 and info.value.task["status"] == TaskStatus.RUNNING
            await client.tasks.cancel(task["id"])
            with pytest.raises(TaskCancelled):
                await client.tasks.wait_for_completion(task["id"], timeout=10)
        with pytest.raises(ConnectionFailed):
            await async_inference(base_url=f"http://127.0.0.1:{free_port()}").tasks.get("x")

    asyncio.run(body())


# -- streams cut by the network -----------------------------------------------------------


def cut_first_stream_midway(index: int, chunk: bytes) -> bool:
    return index == 0 and b"step 1" in chunk


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_stream_cut_midway_reconnects_and_finishes(server, mode):
    proxy = CuttingProxy(server.port, cut_first_stream_midway)
    params = {"app": "counting:progress", "input": {"text": "c", "times": 6}}
    try:
        if mode == "sync":
            updates = list(sync_client(proxy.url).run(params, stream=True, reconnect_delay_ms=50))
        else:
            async def body():
                async with async_client(proxy.url) as client:
                    return [update async for update in await client.run(params, stream=True, reconnect_delay_ms=50)]

            updates = asyncio.run(body())
    finally:
        proxy.close()
    assert proxy.cuts == 1 and proxy.streams == 2
    task_id = updates[-1]["id"]
    assert f"GET /tasks/{task_id} HTTP/1.1" in proxy.requests  # reconciled before reconnecting
    assert updates[-1]["status"] == TaskStatus.COMPLETED and updates[-1]["output"]["text"] == "c5"
    assert any(update["output"] == {"text": "c0", "mode": "a"} for update in updates)  # before the cut


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_terminal_update_lost_with_the_connection_is_found_by_a_get(server, mode):
    proxy = CuttingProxy(server.port, lambda index, chunk: terminal_chunk(chunk))
    try:
        if mode == "sync":
            client = sync_client(proxy.url, stream_timeout=5)
            result = client.run({"app": "counting", "input": {"text": "lost"}})
            with pytest.raises(TaskFailed, match="boom: lost"):
                client.run({"app": "counting:boom", "input": {"text": "lost"}})
        else:
            async def body():
                async with async_client(proxy.url, stream_timeout=5) as client:
                    with pytest.raises(TaskFailed, match="boom: lost"):
                        await client.run({"app": "counting:boom", "input": {"text": "lost"}})
                    return await client.run({"app": "counting", "input": {"text": "lost"}})

            result = asyncio.run(body())
    finally:
        proxy.close()
    assert proxy.cuts >= 2
    assert result["status"] == TaskStatus.COMPLETED and result["output"]["text"] == "lost"


# -- the stream policy, line by line -------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stream_lines_are_parsed_as_the_sdk_parses_them():
    assert parse_line('{"type": "heartbeat"}') is HEARTBEAT
    assert parse_line("") is None and parse_line("data: {}") is None and parse_line("[1, 2]") is None
    assert parse_line('{"event": "delta", "data": {"delta": {"response": "x"}}}') is None
    assert parse_line('{"data": {"id": "t", "status": 7}, "fields": ["status"]}') == {"id": "t", "status": 7}
    assert parse_line(b'{"id": "t", "status": "completed"}\n') == {"id": "t", "status": "completed"}


def test_reconnects_back_off_reset_after_progress_and_are_bounded():
    clock = FakeClock()
    watch = TaskWatch("t", StreamOptions(max_reconnects=3, reconnect_delay_ms=500), stream_timeout=60, clock=clock)
    delays = []
    for _ in range(3):
        watch.connecting()
        watch.lost(httpx.ReadError("reset"))
        delays.append(watch.reconnect_delay())
    assert delays == [0.5, 1.0, 2.0]
    watch.connecting()
    assert watch.feed('{"id": "t", "status": 7}')["status"] == TaskStatus.RUNNING  # progress resets the count
    assert watch.reconnect_delay() == 0.5
    for _ in range(2):
        watch.connecting()
        watch.reconnect_delay()
    watch.connecting()
    with pytest.raises(ConnectionFailed, match="ended before the task did .*4 time.*still RUNNING"):
        watch.reconnect_delay()
    with pytest.raises(APIError):
        watch.lost(APIError(404, "gone"))  # final: not retried
    never = TaskWatch("t", StreamOptions(auto_reconnect=False), stream_timeout=60, clock=clock)
    never.connecting()
    with pytest.raises(ConnectionFailed):
        never.reconnect_delay()


def test_heartbeats_alone_stall_a_connection_and_the_deadline_bounds_everything():
    clock = FakeClock()
    watch = TaskWatch("t", StreamOptions(timeout=45, reconnect_delay_ms=20_000), stream_timeout=60, clock=clock)
    watch.connecting()
    assert watch.read_timeout() == 45
    assert watch.feed('{"type": "heartbeat"}') is None and not watch.should_leave
    clock.now += 31
    watch.feed('{"type": "heartbeat"}')
    assert watch.should_leave and not watch.finished  # leave, GET, reconnect
    assert watch.reconcile({"id": "t", "status": 7}) is None
    assert watch.reconnect_delay() == 8.0  # capped
    clock.now += 10
    assert watch.read_timeout() == 4
    assert watch.reconcile({"id": "t", "status": 10, "output": {"x": 1}, "error": None})["output"] == {"x": 1}
    assert watch.finished and set(watch.result) == STRIPPED
    late = TaskWatch("t", StreamOptions(timeout=1), stream_timeout=60, clock=clock)
    clock.now += 2
    with pytest.raises(WaitTimeout, match="did not finish within 1 s"):
        late.reconnect_delay()
    brief = TaskWatch("t", StreamOptions(timeout=0.001), stream_timeout=60, clock=clock)
    clock.now += 1
    with pytest.raises(WaitTimeout, match="did not finish within 0.001 s"):  # it said "within 0 s"
        brief.reconnect_delay()


class ScriptedStreams:
    """A mock transport: stream connections answered by a script, GETs by a task."""

    def __init__(self, streams: list, task: dict) -> None:
        self.streams = streams
        self.task = task
        self.calls: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request.url.path)
        if request.url.path.endswith("/stream"):
            script = self.streams.pop(0) if self.streams else 503
            if isinstance(script, int):
                return httpx.Response(script, json={"type": "/errors/unavailable", "status": script, "detail": "restarting"})
            assert request.headers["accept"] == "application/x-ndjson"
            return httpx.Response(200, content="".join(line + "\n" for line in script).encode())
        return httpx.Response(200, json={"success": True, "data": self.task})


def test_noise_is_skipped_and_a_stream_ending_early_is_reconciled_sync_and_async():
    noisy = ['{"type":"heartbeat"}', "not json", "[1]", '{"data": {"id": "t", "status": 7, "output": {"n": 1}}, "fields": ["output"]}']
    done = {"id": "t", "status": 10, "output": {"n": 2}, "error": None, "function": "run"}

    script = ScriptedStreams([noisy, 503, noisy], done)
    stream = inference(base_url="http://s.test", transport=httpx.MockTransport(script.handler)).tasks.stream("t", reconnect_delay_ms=1)
    updates = list(stream)
    assert [update["output"] for update in updates] == [{"n": 1}, {"n": 2}]
    assert set(updates[-1]) == STRIPPED and stream.result == updates[-1]
    assert script.calls == ["/tasks/t/stream", "/tasks/t"]  # the GET found the end

    running = {"id": "t", "status": 7, "output": None}
    script = ScriptedStreams([503, noisy, 503, 503], running)

    async def body():
        client = async_inference(base_url="http://s.test", transport=httpx.MockTransport(script.handler))
        return [update async for update in client.tasks.stream("t", max_reconnects=2, reconnect_delay_ms=1)]

    with pytest.raises(ConnectionFailed, match="HTTP 503: restarting.*3 time"):
        asyncio.run(body())
    assert script.calls.count("/tasks/t/stream") == 4 and script.calls.count("/tasks/t") == 4


def late_line_server():
    """A stream that sends a line at once, another at 1.5 s, then nothing for a minute."""

    async def stream(request):
        async def lines():
            yield json.dumps({"id": "t", "status": 7}) + "\n"
            await asyncio.sleep(1.5)
            yield json.dumps({"id": "t", "status": 7}) + "\n"
            await asyncio.sleep(60)

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def task(request):
        return JSONResponse({"data": {"id": "t", "status": 7}})

    return Starlette(routes=[Route("/tasks/t/stream", stream), Route("/tasks/t", task)])


def test_the_wait_deadline_interrupts_a_silent_read_sync_and_async():
    with serving(late_line_server()) as url:
        started = time.monotonic()
        with pytest.raises(WaitTimeout):
            inference(base_url=url, stream_timeout=60).wait_for_completion("t", timeout=2)
        sync_elapsed = time.monotonic() - started

        async def body():
            started = time.monotonic()
            with pytest.raises(WaitTimeout):
                await async_inference(base_url=url, stream_timeout=60).wait_for_completion("t", timeout=2)
            return time.monotonic() - started

        async_elapsed = asyncio.run(body())
    # The read timeout alone (2 s from the connect) would end these near 3.5 s.
    assert 1.9 < sync_elapsed < 2.8 and 1.9 < async_elapsed < 2.8


# -- files ---------------------------------------------------------------------------------


def test_upload_every_accepted_form_with_the_sdks_request(stub_files, tmp_path):
    picture = tmp_path / "pixel.png"
    picture.write_bytes(b"\x89PNG fake pixels")
    client = sync_client(stub_files.url)
    stub_files.requests.clear()
    created = client.files.upload(str(picture))
    post, put = stub_files.requests
    assert post["body"] == {"files": [{"uri": "", "filename": "pixel.png", "content_type": "image/png",
                                       "path": None, "size": 16, "public": None}]}
    assert post["headers"]["authorization"] == f"Bearer {KEY}"
    assert "authorization" not in put["headers"] and put["headers"]["content-type"] == "image/png"
    assert created["uri"].startswith(stub_files.url + "/blobs/") and created["upload_url"]

    stub_files.requests.clear()
    client.files.upload(b"raw", UploadFileOptions(filename="a.bin", content_type="text/plain", path="in/a", public=True))
    client.upload_file("data:text/csv;base64," + base64.b64encode(b"a,b").decode())
    client.files.upload(base64.b64encode(b"sixteen byte str").decode())
    bodies = [r["body"]["files"][0] for r in stub_files.requests if r["method"] == "POST"]
    assert bodies[0] == {"uri": "", "filename": "a.bin", "content_type": "text/plain", "path": "in/a", "size": 3, "public": True}
    assert (bodies[1]["filename"], bodies[1]["content_type"], bodies[1]["size"]) == (None, "text/csv", 3)
    assert (bodies[2]["content_type"], bodies[2]["size"]) == ("application/octet-stream", 16)
    with pytest.raises(ValueError, match="not an existing file, a data: URI or base64"):
        client.files.upload(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="malformed data: URI"):
        client.files.upload("data:text/plain,hello")


def test_async_upload_and_download_with_the_stub(stub_files, tmp_path):
    async def body():
        async with async_client(stub_files.url) as client:
            created = await client.files.upload(b"async bytes", UploadFileOptions(filename="a.txt"))
            return created, await client.files.download(created, tmp_path)

    stub_files.requests.clear()
    created, saved = asyncio.run(body())
    assert saved == tmp_path / "a.txt" and saved.read_bytes() == b"async bytes"
    assert "authorization" not in stub_files.requests[1]["headers"]
    client = sync_client(stub_files.url)
    assert client.files.download(created, f"{tmp_path}/new/") == tmp_path / "new" / "a.txt"  # a directory, made
    assert client.files.download(created["uri"], tmp_path / "deep" / "b.bin").read_bytes() == b"async bytes"


class PieceCounter(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Answers `POST /files`, and takes a PUT's body one piece at a time as the network would,
    keeping only its length and digest (MockTransport would read the whole body first)."""

    def __init__(self, on_post=lambda: None) -> None:
        self.on_post = on_post
        self.pieces: list[int] = []
        self.headers: dict[str, str] = {}
        self.digest = hashlib.sha256()

    def answer(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.on_post()
            created = {"uri": "http://files.test/f/1", "upload_url": "http://files.test/up/1?sig=s"}
            return httpx.Response(200, json={"success": True, "data": [created]})
        self.headers = dict(request.headers)
        return httpx.Response(200)

    def take(self, piece: bytes) -> None:
        self.pieces.append(len(piece))
        self.digest.update(piece)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            for piece in request.stream:
                self.take(piece)
        else:
            request.read()
        return self.answer(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            async for piece in request.stream:
                self.take(piece)
        else:
            await request.aread()
        return self.answer(request)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_local_file_is_uploaded_streamed_from_disk_with_its_size(tmp_path, mode):
    big = tmp_path / "big.bin"
    content = os.urandom(24 * MIB + 123)
    big.write_bytes(content)
    transport = PieceCounter()
    tracemalloc.start()
    try:
        if mode == "sync":
            inference(base_url="http://api.test", transport=transport).files.upload(str(big))
        else:
            asyncio.run(async_inference(base_url="http://api.test", transport=transport).files.upload(str(big)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert transport.pieces == [MIB] * 24 + [123] and transport.digest.hexdigest() == hashlib.sha256(content).hexdigest()
    assert transport.headers["content-length"] == str(len(content)) and "transfer-encoding" not in transport.headers
    assert transport.headers["content-type"] == "application/octet-stream" and "authorization" not in transport.headers
    assert peak < 8 * MIB, f"{peak / MIB:.0f} MiB allocated at the peak: the file was read whole"


def test_a_file_that_shrinks_during_its_upload_fails_by_name(tmp_path):
    shrinking = tmp_path / "shrinking.bin"
    shrinking.write_bytes(b"x" * (2 * MIB))
    transport = PieceCounter(on_post=lambda: shrinking.write_bytes(b"x" * 100))  # between the size and the PUT
    with pytest.raises(ValueError, match=r"shrinking\.bin ended 2097052 bytes short of its size"):
        inference(base_url="http://api.test", transport=transport).files.upload(str(shrinking))


def test_a_large_download_arrives_whole_sync_and_async(stub_files, tmp_path):
    content = os.urandom(3 * MIB + 321)  # several write pieces and a partial one

    async def async_download(uri):
        async with async_client(stub_files.url) as client:
            return await client.files.download(uri, tmp_path / "async.bin")

    created = sync_client(stub_files.url).files.upload(content, UploadFileOptions(filename="big.bin"))
    assert sync_client(stub_files.url).files.download(created, tmp_path).read_bytes() == content
    assert asyncio.run(async_download(created["uri"])).read_bytes() == content


def test_input_walk_uploads_files_data_and_base64_and_leaves_the_rest(tmp_path):
    picture = tmp_path / "in.png"
    picture.write_bytes(b"x")
    b64 = base64.b64encode(b"twelve bytes").decode()
    value = {
        "image": str(picture),
        "nested": [{"mask": "data:image/png;base64,eA=="}, (b64, "hello")],
        "file": File(path=str(picture), filename="named.png"),
        "remote": File("https://example.com/a.png"),
        "plain_data": File(uri="data:,plain"),  # not base64: the server takes it as it is
        "plain": ["short", ".", str(tmp_path), "https://example.com/b.png", 3, None, "data: a text", "data:,x"],
    }
    files = InputFiles(value)  # no schema: the official SDK's rule
    pending = files.pending
    assert [p.source for p in pending] == [str(picture), "data:image/png;base64,eA==", b64, str(picture)]
    assert pending[3].filename == "named.png"
    uris = {p: f"https://files.test/{i}" for i, p in enumerate(pending)}
    assert files.filled(uris) == {
        "image": "https://files.test/0",
        "nested": [{"mask": "https://files.test/1"}, ["https://files.test/2", "hello"]],
        "file": "https://files.test/3",
        "remote": "https://example.com/a.png",
        "plain_data": "data:,plain",
        "plain": ["short", ".", str(tmp_path), "https://example.com/b.png", 3, None, "data: a text", "data:,x"],
    }


def test_with_the_functions_schema_only_file_fields_are_uploaded(tmp_path):
    """"stabilityai/sdxl" is 16 characters of valid base64: by the SDK's rule alone it was uploaded."""
    picture = tmp_path / "in.png"
    picture.write_bytes(b"x")
    schema = {"type": "object", "properties": {
        "image": {"type": "string", "format": "file"},
        "extra": {"type": "array", "items": {"type": "string", "format": "file"}},
        "model": {"type": "string"}, "notes": {"type": "array", "items": {"type": "string"}}}}
    value = {"image": str(picture), "extra": (str(picture), "stabilityai/sdxl"), "model": "stabilityai/sdxl",
             "notes": [str(picture), File(path=str(picture), filename="named.png")]}
    files = InputFiles(value, schema)
    assert [p.source for p in files.pending] == [str(picture), "stabilityai/sdxl", str(picture)]
    uris = {p: f"https://files.test/{i}" for i, p in enumerate(files.pending)}
    assert files.filled(uris) == {"image": "https://files.test/0", "extra": ["https://files.test/0", "https://files.test/1"],
                                  "model": "stabilityai/sdxl", "notes": [str(picture), "https://files.test/2"]}
    assert [p.source for p in InputFiles(value).pending] == [str(picture), "stabilityai/sdxl", str(picture)]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_run_sends_text_that_looks_like_base64_as_text(server, mode):
    """The counting app has no file field: its `text` goes as given (it used to be uploaded as a file)."""
    body = {"app": "counting", "input": {"text": "stabilityai/sdxl"}}
    if mode == "sync":
        with sync_client(server.url) as client:
            outputs = [client.run(body)["output"]["text"] for _ in range(2)]
    else:
        async def twice():
            async with async_client(server.url) as client:
                return [(await client.run(body))["output"]["text"] for _ in range(2)]

        outputs = asyncio.run(twice())
    assert outputs == ["stabilityai/sdxl"] * 2


@pytest.mark.parametrize("filename, uri, saved", [
    ("../../evil.txt", "https://s.test/files/f/x", "evil.txt"),
    (".", "https://s.test/files/f/report.pdf", "report.pdf"),  # "." and ".." name no file: the URI's name, then "download"
    ("..", "https://s.test/files/f/%2e%2e", "download"),
    (None, "https://s.test/files/f/a%2Fb.png", "b.png"),
    ("dir\\name.png", "https://s.test/files/f/x", "name.png"),
])
def test_a_download_lands_in_its_directory_whatever_name_the_server_gives(tmp_path, filename, uri, saved):
    assert download_target(tmp_path, uri, filename) == tmp_path / saved


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_run_uploads_local_inputs_and_downloads_output_files(files_server, tmp_path, mode, monkeypatch):
    (tmp_path / "photo.png").write_bytes(b"\x89PNG not really")
    monkeypatch.chdir(tmp_path)  # relative paths are the caller's, as in the official SDK
    extra = "data:text/plain;base64," + base64.b64encode(b"extra").decode()
    reverse = {"app": "file-app", "function": "reverse", "input": {"image": "photo.png"}}
    inspect = {"app": "file-app:inspect", "input": {"image": "photo.png", "extra": [extra, File(path="photo.png", filename="named.png")]}}
    if mode == "sync":
        client = sync_client(files_server.url)
        reversed_, seen = client.run(reverse), client.run(inspect)
        saved = client.files.download(reversed_["output"]["image"], tmp_path)
    else:
        async def body():
            async with async_client(files_server.url) as client:
                reversed_, seen = await client.run(reverse), await client.run(inspect)
                return reversed_, seen, await client.files.download(reversed_["output"]["image"], tmp_path)

        reversed_, seen, saved = asyncio.run(body())
    assert reversed_["input"]["image"].startswith(files_server.url + "/files/")  # uploaded, replaced by its URI
    output = reversed_["output"]["image"]
    assert set(output) == {"uri", "filename", "content_type", "size"} and output["size"] == 15
    assert saved == tmp_path / output["filename"] and saved.read_bytes() == b"\x89PNG not really"[::-1]
    assert seen["output"]["sizes"] == [15, 5, 15]
    assert seen["output"]["filenames"] == ["photo.png", "file.txt", "named.png"]  # a data: URI, named from its type


def test_real_file_endpoints_upload_and_download(files_server, tmp_path):
    client = sync_client(files_server.url)
    created = client.files.upload(b"hello files", UploadFileOptions(filename="hello.txt", content_type="text/plain"))
    assert created["uri"].startswith(files_server.url + "/files/") and created["filename"] == "hello.txt"
    assert client.files.download(created["uri"], tmp_path / "back.txt").read_bytes() == b"hello files"
    assert client.files.download("data:text/plain;base64,aGk=", tmp_path / "inline.txt").read_text() == "hi"
    with pytest.raises(APIError) as info:
        client.files.download(f"{files_server.url}/files/{'0' * 32}/x.png", tmp_path)
    assert info.value.status_code == 404
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.txt", "inline.txt"]  # no partial file left
    with pytest.raises(ValueError, match="nothing to download"):
        client.files.download({"path": "/tmp/x.png"}, tmp_path)


# -- sessions --------------------------------------------------------------------------------------


def check_session_calls(client_calls) -> None:
    """One session's life through the client: open, call again, read, list, keep alive, end."""
    first, again, info, listed, kept, ended, after, end_twice = client_calls
    session_id = first["session_id"]
    assert again["session_id"] == session_id and again["output"]["text"] == "AGAIN"
    assert info["id"] == session_id and info["status"] == "active" and info["call_count"] == 2
    assert info["idle_timeout"] == 90
    assert session_id in [session["id"] for session in listed]
    assert kept["id"] == session_id and ended is None and end_twice is None
    assert after.status_code == 410 and after.code == "SESSION_ENDED"


def test_sessions_on_the_real_api_sync_and_async(server):
    def sync_calls():
        client = sync_client(server.url)
        first = client.run({"app": "counting", "input": {"text": "s"}, "session": "new", "session_timeout": 90})
        again = client.run({"app": "counting:shout", "input": {"text": "again"}, "session": first["session_id"]})
        info, listed = client.sessions.get(first["session_id"]), client.sessions.list()
        kept, ended = client.sessions.keepalive(first["session_id"]), client.sessions.end(first["session_id"])
        with pytest.raises(APIError) as after:
            client.run({"app": "counting", "input": {"text": "late"}, "session": first["session_id"]})
        return first, again, info, listed, kept, ended, after.value, client.sessions.end(first["session_id"])

    async def async_calls():
        async with async_client(server.url) as client:
            first = await client.run({"app": "counting", "input": {"text": "s"}, "session": "new", "session_timeout": 90})
            again = await client.run({"app": "counting:shout", "input": {"text": "again"}, "session": first["session_id"]})
            info, listed = await client.sessions.get(first["session_id"]), await client.sessions.list()
            kept, ended = await client.sessions.keepalive(first["session_id"]), await client.sessions.end(first["session_id"])
            with pytest.raises(APIError) as after:
                await client.run({"app": "counting", "input": {"text": "late"}, "session": first["session_id"]})
            return first, again, info, listed, kept, ended, after.value, await client.sessions.end(first["session_id"])

    check_session_calls(sync_calls())
    check_session_calls(asyncio.run(async_calls()))



def test_session_calls_on_the_wire_sync_and_async():
    seen = []
    session = {"id": "s1", "status": "active", "call_count": 1}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, request.content))
        if request.url.path == "/apps/run":
            body = json.loads(request.content)
            return httpx.Response(200, json={"data": {"id": "t", "status": 2, "session_id": "s1", "echo": body}})
        if request.method == "DELETE":
            return httpx.Response(204)
        data = None if request.url.path == "/sessions" else session
        return httpx.Response(200, json={"success": True, "data": data})

    client = inference(base_url="http://s.test", transport=httpx.MockTransport(handler))
    task = client.run({"app": "a", "input": {}, "session": "new", "session_timeout": 90}, wait=False)
    assert task["session_id"] == "s1"
    assert client.sessions.get("s1") == session
    assert client.sessions.list() == []
    assert client.sessions.keepalive("s1") == session
    assert client.sessions.end("s1") is None

    async def body():
        client = async_inference(base_url="http://s.test", transport=httpx.MockTransport(handler))
        assert (await client.run({"app": "a", "input": None, "session": "s1"}, wait=False))["session_id"] == "s1"
        assert await client.sessions.get("s1") == session
        assert await client.sessions.list() == []
        assert await client.sessions.keepalive("s1") == session
        await client.sessions.end("s1")

    asyncio.run(body())
    calls = [(method, path) for method, path, _ in seen]
    expected = [("POST", "/apps/run"), ("GET", "/sessions/s1"), ("GET", "/sessions"),
                ("POST", "/sessions/s1/keepalive"), ("DELETE", "/sessions/s1")]
    assert calls == expected * 2
    assert json.loads(seen[0][2]) == {"app": "a", "input": {}, "session": "new", "session_timeout": 90}
    assert json.loads(seen[5][2]) == {"app": "a", "input": None, "session": "s1"}
    assert seen[3][2] == b"" and seen[4][2] == b""  # keepalive and end carry no body


class SlowDisk:
    """A file whose writes take `delay` each (and fail from the `fail_at`-th on), in a list."""

    def __init__(self, delay=0.0, fail_at=None):
        self.pieces, self.delay, self.fail_at = [], delay, fail_at

    def write(self, data):
        if self.fail_at is not None and len(self.pieces) >= self.fail_at:
            raise OSError(28, "No space left on device")
        time.sleep(self.delay)
        self.pieces.append(bytes(data))


def test_a_downloads_writes_go_in_order_from_a_thread_and_a_failed_one_is_raised():
    disk = SlowDisk()
    writer = DiskWriter(disk, depth=2)
    for index in range(50):
        writer.write(b"%d," % index)
    writer.close()
    assert b"".join(disk.pieces) == b"".join(b"%d," % index for index in range(50))

    failing = DiskWriter(SlowDisk(fail_at=3), depth=2)
    with pytest.raises(OSError, match="No space left"):
        try:
            for _ in range(100):  # a later write, or close, says so
                failing.write(b"x")
        finally:
            failing.close()


def test_an_async_download_never_waits_on_the_disk_on_its_event_loop():
    async def scenario():
        disk = SlowDisk(delay=0.02)
        writer = DiskWriter(disk, depth=2)
        ticks = 0

        async def ticking():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        ticker = asyncio.create_task(ticking())
        for _ in range(10):  # ~0.2 s of disk, the queue full most of it
            await writer.awrite(b"piece")
        await asyncio.to_thread(writer.close)
        ticker.cancel()
        return ticks, len(disk.pieces)

    ticks, written = asyncio.run(scenario())
    assert written == 10 and ticks >= 10  # the loop kept turning while the disk was busy


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_params_or_a_key_no_server_takes_are_refused_before_anything_is_sent(mode):
    """A non-ASCII key raised a bare UnicodeEncodeError from httpx, and params given as the app's
    name an AttributeError."""
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: seen.append(request) or httpx.Response(500))
    client = (inference if mode == "sync" else async_inference)(base_url="http://s.test", transport=transport)

    def run(params, **options):
        ran = client.run(params, wait=False, **options)
        return asyncio.run(ran) if mode == "async" else ran

    with pytest.raises(ValueError, match=r"idempotency_key must be 1-255 printable ASCII characters, not 'é'"):
        run({"app": "a", "input": {}}, idempotency_key="é")
    with pytest.raises(ValueError, match="1-255 printable ASCII"):
        run({"app": "a", "input": {}}, idempotency_key="k" * 256)
    with pytest.raises(TypeError, match=r"params must be a dict such as \{'app': 'name', 'input': \{...\}\}, not str"):
        run("image-model")
    assert seen == []
