"""The asynchronous client: `AsyncInference` and `AsyncTaskStream`, the sync client's surface with `await`."""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any, AsyncIterator, Optional, Union

import httpx

from ..files import File
from ._base import (
    InputSchemas, StreamHandle, client_options, file_url_request, run_body, run_headers, stream_request, task_path,
)
from ._config import DEFAULT_MAX_RETRIES, DEFAULT_STREAM_TIMEOUT_S, DEFAULT_TIMEOUT_S, ClientConfig, resolve_config
from ._errors import InferenceError, connection_failed, error_from_response
from ._files import (
    FileData,
    InputFiles,
    UploadFileOptions,
    UploadSource,
    data_uri_bytes,
    download_source,
    download_target,
    file_request,
    next_chunk,
    partial_file,
    upload_source,
    upload_target,
)
from ._stream import StreamOptions, TaskWatch
from ._tasks import strip_task
from ._transfer import upload_request
from ._wire import SAFE_METHODS, MessageCallback, Response, is_transient, read_envelope, retry_delay, route, task_of


class _AsyncConnection:
    """One pooled httpx.AsyncClient; every request goes through here, so errors are always typed."""

    def __init__(
        self, config: ClientConfig, on_message: Optional[MessageCallback], transport: Optional[httpx.AsyncBaseTransport]
    ) -> None:
        self.config = config
        self._on_message = on_message
        self.http = httpx.AsyncClient(**client_options(config, transport))

    async def request(
        self, method: str, path: str, *, json: Any = None, headers: Optional[dict[str, str]] = None, resend: bool = False
    ) -> Response:
        """The answer's envelope; `resend`: sending the request again cannot do anything twice (see retry_delay)."""
        attempt, resend = 0, resend or method in SAFE_METHODS
        while True:
            failure: Optional[httpx.TransportError] = None
            try:
                response: Optional[httpx.Response] = await self.http.request(method, path, json=json, headers=headers)
            except httpx.TransportError as exc:
                response, failure = None, exc
            delay = retry_delay(response, attempt, self.config.max_retries, resend)
            if delay is None:
                if response is None:
                    raise connection_failed(failure, self.config.timeout) from failure
                return read_envelope(response.status_code, response.text, self._on_message)
            await asyncio.sleep(delay)
            attempt += 1

    async def task_or_none(self, task_id: str) -> Optional[dict[str, Any]]:
        """The task from a GET, or None when the server cannot be asked right now."""
        try:
            task = (await self.request("GET", route("/tasks/{}", task_id))).data
        except InferenceError as exc:
            if is_transient(exc):
                return None
            raise
        return task if isinstance(task, dict) else None

    @asynccontextmanager
    async def open(self, request: httpx.Request) -> AsyncIterator[httpx.Response]:
        """A streamed answer, closed on leaving; an error status is raised as APIError."""
        response = await self.http.send(request, stream=True)
        try:
            if response.status_code >= 400:
                await response.aread()
                raise error_from_response(response.status_code, response.text)
            yield response
        finally:
            await response.aclose()


class AsyncTaskStream(StreamHandle):
    """A task's updates as they happen, ending with the terminal one: `async for update in stream`.

    Same updates, errors and `result` as the sync TaskStream. The caller's `timeout` is
    enforced on every read, so a silent connection never holds a wait past it.
    """

    def __init__(self, connection: _AsyncConnection, task_id: str, options: StreamOptions) -> None:
        super().__init__(task_id, options, connection.config.stream_timeout)
        self._connection = connection
        self._updates: Optional[AsyncIterator[dict[str, Any]]] = None

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        if self._updates is None:
            self._updates = self._follow()
        return self._updates

    async def __aenter__(self) -> "AsyncTaskStream":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop following (closes the open connection); the task itself keeps running."""
        if self._updates is not None:
            await self._updates.aclose()  # type: ignore[attr-defined]

    async def _follow(self) -> AsyncIterator[dict[str, Any]]:
        watch = self._watch
        try:
            while True:
                if not watch.expired:
                    try:
                        async for update in self._one_connection(watch):
                            yield update
                    except asyncio.TimeoutError:
                        pass  # the caller's deadline cut a read short: reconcile, then WaitTimeout
                    except (httpx.TransportError, InferenceError) as exc:
                        watch.lost(exc)  # raises what retrying cannot fix
                    if watch.finished:
                        return
                update = watch.reconcile(await self._connection.task_or_none(self.task_id))
                if update is not None:
                    yield update
                    return
                await asyncio.sleep(watch.reconnect_delay())
        except Exception as exc:
            self._error = exc
            raise

    async def _one_connection(self, watch: TaskWatch) -> AsyncIterator[dict[str, Any]]:
        watch.connecting()
        connection = self._connection
        async with connection.open(stream_request(connection.http, connection.config, self.task_id, watch.read_timeout())) as response:
            lines = response.aiter_lines()
            while True:
                try:
                    line = await asyncio.wait_for(lines.__anext__(), watch.time_left())
                except StopAsyncIteration:
                    return
                update = watch.feed(line)
                if update is not None:
                    yield update
                if watch.should_leave:
                    return


class AsyncTasks:
    """Run tasks, read them, follow them, cancel them."""

    def __init__(self, connection: _AsyncConnection, files: "AsyncFiles") -> None:
        self._connection = connection
        self._files = files
        self._schemas = InputSchemas()

    async def run(
        self,
        params: dict[str, Any],
        *,
        wait: bool = True,
        stream: bool = False,
        timeout: Optional[float] = None,
        auto_reconnect: bool = True,
        max_reconnects: int = 5,
        reconnect_delay_ms: int = 1000,
        idempotency_key: Optional[str] = None,
    ) -> Union[dict[str, Any], AsyncTaskStream]:
        """As `Tasks.run`: the completed task, the created task (`wait=False`) or an AsyncTaskStream (`stream=True`)."""
        options = StreamOptions(auto_reconnect, max_reconnects, reconnect_delay_ms, timeout)
        key = run_headers(params, idempotency_key)
        files = InputFiles(params.get("input"))
        if files.pending:  # only then is the schema worth a request: which of them are in file fields?
            files = InputFiles(params.get("input"), await self._input_schema(params))
        uris = {pending: (await self._files.upload(pending.source, pending.options))["uri"] for pending in files.pending}
        task = task_of(await self._connection.request("POST", "/apps/run", json=run_body(params, files, uris),
                                      headers=key, resend=True))
        if stream:
            return AsyncTaskStream(self._connection, task["id"], options)
        if not wait:
            return strip_task(task)
        return await _result_of(AsyncTaskStream(self._connection, task["id"], options))

    async def _input_schema(self, params: dict[str, Any]) -> Optional[dict[str, Any]]:
        path = self._schemas.missing(params)
        if path is not None:
            try:
                self._schemas.keep(path, (await self._connection.request("GET", path)).data)
            except InferenceError:  # no such endpoint there, or no answer: the run itself says what is wrong
                self._schemas.keep(path, None)
        return self._schemas.of_function(params)

    async def get(self, task_id: str) -> Response:
        """The task as it is now, in full (`.data`), as the official SDK returns it."""
        return await self._connection.request("GET", route("/tasks/{}", task_id))

    async def cancel(self, task_id: str) -> None:
        """Ask the server to cancel the task; a finished task stays as it is."""
        await self._connection.request("POST", route("/tasks/{}/cancel", task_id), resend=True)

    async def files(self, task_id: str, *, role: Optional[str] = None) -> Response:
        """As `Tasks.files`: the task's input and output files."""
        return await self._connection.request("GET", task_path(task_id, "/files", role=role))

    async def delete_files(self, task_id: str, *, role: Optional[str] = None) -> Response:
        """As `Tasks.delete_files`: delete a finished task's files (yours), keeping the task."""
        return await self._connection.request("DELETE", task_path(task_id, "/files", role=role))

    async def delete(self, task_id: str, *, files: bool = False) -> None:
        """As `Tasks.delete`: delete a finished task (`files=True`: and its files of your key)."""
        await self._connection.request("DELETE", task_path(task_id, files="true" if files else None))

    def stream(
        self,
        task_id: str,
        *,
        timeout: Optional[float] = None,
        auto_reconnect: bool = True,
        max_reconnects: int = 5,
        reconnect_delay_ms: int = 1000,
    ) -> AsyncTaskStream:
        """Follow a task's updates (nothing is sent until iteration starts)."""
        return AsyncTaskStream(self._connection, task_id, StreamOptions(auto_reconnect, max_reconnects, reconnect_delay_ms, timeout))

    async def wait_for_completion(
        self,
        task_id: str,
        *,
        timeout: Optional[float] = None,
        auto_reconnect: bool = True,
        max_reconnects: int = 5,
        reconnect_delay_ms: int = 1000,
    ) -> dict[str, Any]:
        """The completed task; TaskError if it ended otherwise, WaitTimeout after `timeout` seconds."""
        options = StreamOptions(auto_reconnect, max_reconnects, reconnect_delay_ms, timeout)
        return await _result_of(AsyncTaskStream(self._connection, task_id, options))


async def _result_of(stream: AsyncTaskStream) -> dict[str, Any]:
    async with stream:
        async for _ in stream:
            pass
    assert stream.result is not None  # a stream ends only after COMPLETED; otherwise it raised
    return stream.result


class AsyncFiles:
    """Upload files for inputs; download output files."""

    def __init__(self, connection: _AsyncConnection) -> None:
        self._connection = connection

    async def upload(self, data: FileData, options: Optional[UploadFileOptions] = None) -> dict[str, Any]:
        """Upload a local path, bytes, a data: URI or base64; returns the file object (its `uri` goes in inputs)."""
        options = options or UploadFileOptions()
        source = upload_source(data, options)
        created, upload_url = upload_target((await self._connection.request("POST", "/files", json=file_request(source, options))).data)
        if source.local_path is None:
            await self._put(upload_url, source, source.content)
        else:  # streamed from disk a piece at a time, read off the event loop: a disk read would stall every other task
            handle = await asyncio.to_thread(open, source.local_path, "rb")
            try:
                await self._put(upload_url, source, _file_chunks(handle, source.size))
            finally:
                handle.close()
        return created

    async def _put(self, upload_url: str, source: UploadSource, content: Any) -> None:
        async with self._sending(), self._connection.open(upload_request(self._connection.http, upload_url, source, content)):
            pass

    async def download(self, file: Union[str, dict, File], dest: Union[str, "os.PathLike[str]"] = ".") -> Path:
        """Save an output file (a `{uri, ...}` value, a File or a URI) to `dest`, a file or a directory; returns its path."""
        uri, filename = download_source(file)
        target = download_target(dest, uri, filename)
        with partial_file(target) as out:
            if uri.startswith("data:"):
                out.write(data_uri_bytes(uri))
            else:
                async with self._sending(), self._connection.open(file_url_request(self._connection.http, "GET", uri)) as response:
                    async for chunk in response.aiter_bytes():
                        await out.awrite(chunk)
        return target

    @asynccontextmanager
    async def _sending(self) -> AsyncIterator[None]:
        try:
            yield
        except httpx.TransportError as exc:
            raise connection_failed(exc, self._connection.config.timeout) from exc


async def _file_chunks(handle: IO[bytes], size: int) -> AsyncIterator[bytes]:
    """`file_chunks` for the async client: each piece is read in a worker thread."""
    left = size
    while left > 0:
        block = await asyncio.to_thread(next_chunk, handle, left)
        left -= len(block)
        yield block


class AsyncSessions:
    """Sessions: one app instance kept for a series of calls (`"session": "new"` in `run` starts one)."""

    def __init__(self, connection: _AsyncConnection) -> None:
        self._connection = connection

    async def get(self, session_id: str) -> dict[str, Any]:
        return (await self._connection.request("GET", route("/sessions/{}", session_id))).data

    async def list(self) -> list[dict[str, Any]]:
        return (await self._connection.request("GET", "/sessions")).data or []

    async def keepalive(self, session_id: str) -> dict[str, Any]:
        """Reset the session's idle timer; returns the session."""
        return (await self._connection.request("POST", route("/sessions/{}/keepalive", session_id))).data

    async def end(self, session_id: str) -> None:
        """End the session and release its app instance."""
        await self._connection.request("DELETE", route("/sessions/{}", session_id))


class AsyncInference:
    """The async client: the same configuration, calls and errors as `Inference`, awaited."""

    def __init__(
        self,
        *,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        stream_timeout: float = DEFAULT_STREAM_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        on_message: Optional[MessageCallback] = None,
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        self._config = resolve_config(api_key, base_url, timeout, stream_timeout, max_retries)
        self._connection = _AsyncConnection(self._config, on_message, transport)
        self.files = AsyncFiles(self._connection)
        self.tasks = AsyncTasks(self._connection, self.files)
        self.sessions = AsyncSessions(self._connection)
        # The official SDK's older names for the same calls.
        self.run = self.tasks.run
        self.get_task = self.tasks.get
        self.cancel = self.tasks.cancel
        self.stream_task = self.tasks.stream
        self.wait_for_completion = self.tasks.wait_for_completion
        self.upload_file = self.files.upload

    @property
    def base_url(self) -> str:
        return self._config.base_url

    async def aclose(self) -> None:
        await self._connection.http.aclose()

    async def __aenter__(self) -> "AsyncInference":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()


async_inference = AsyncInference  # the official SDK's name for the constructor
