"""The synchronous client: `Inference`, its `tasks`, `files` and `sessions`, and `TaskStream`.

Everything but sending lives in the shared modules; `_async.py` is this file with `await`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Union

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
    file_chunks,
    file_request,
    partial_file,
    upload_source,
    upload_target,
)
from ._stream import StreamOptions, TaskWatch
from ._tasks import strip_task
from ._transfer import upload_request
from ._wire import SAFE_METHODS, MessageCallback, Response, is_transient, read_envelope, retry_delay, route, task_of


class _Connection:
    """One pooled httpx client; every request goes through here, so errors are always typed."""

    def __init__(self, config: ClientConfig, on_message: Optional[MessageCallback], transport: Optional[httpx.BaseTransport]):
        self.config = config
        self._on_message = on_message
        self.http = httpx.Client(**client_options(config, transport))

    def request(
        self, method: str, path: str, *, json: Any = None, headers: Optional[dict[str, str]] = None, resend: bool = False
    ) -> Response:
        """The answer's envelope; `resend`: sending the request again cannot do anything twice (see retry_delay)."""
        attempt, resend = 0, resend or method in SAFE_METHODS
        while True:
            failure: Optional[httpx.TransportError] = None
            try:
                response: Optional[httpx.Response] = self.http.request(method, path, json=json, headers=headers)
            except httpx.TransportError as exc:
                response, failure = None, exc
            delay = retry_delay(response, attempt, self.config.max_retries, resend)
            if delay is None:
                if response is None:
                    raise connection_failed(failure, self.config.timeout) from failure
                return read_envelope(response.status_code, response.text, self._on_message)
            time.sleep(delay)
            attempt += 1

    def task_or_none(self, task_id: str) -> Optional[dict[str, Any]]:
        """The task from a GET, or None when the server cannot be asked right now."""
        try:
            task = self.request("GET", route("/tasks/{}", task_id)).data
        except InferenceError as exc:
            if is_transient(exc):
                return None
            raise
        return task if isinstance(task, dict) else None

    @contextmanager
    def open(self, request: httpx.Request) -> Iterator[httpx.Response]:
        """A streamed answer, closed on leaving; an error status is raised as APIError."""
        response = self.http.send(request, stream=True)
        try:
            if response.status_code >= 400:
                response.read()
                raise error_from_response(response.status_code, response.text)
            yield response
        finally:
            response.close()


class TaskStream(StreamHandle):
    """A task's updates as they happen, ending with the terminal one.

    Iterate it (or use it as a context manager and iterate). Each update is the task
    stripped as the official SDK strips it. A failed, cancelled or rejected task raises
    TaskFailed / TaskCancelled / TaskRejected; after a COMPLETED update, `result` holds it.
    """

    def __init__(self, connection: _Connection, task_id: str, options: StreamOptions) -> None:
        super().__init__(task_id, options, connection.config.stream_timeout)
        self._connection = connection
        self._updates: Optional[Iterator[dict[str, Any]]] = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._updates is None:
            self._updates = self._follow()
        return self._updates

    def __enter__(self) -> "TaskStream":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop following (closes the open connection); the task itself keeps running."""
        if self._updates is not None:
            self._updates.close()  # type: ignore[attr-defined]

    def _follow(self) -> Iterator[dict[str, Any]]:
        watch = self._watch
        try:
            while True:
                if not watch.expired:
                    try:
                        yield from self._one_connection(watch)
                    except (httpx.TransportError, InferenceError) as exc:
                        watch.lost(exc)  # raises what retrying cannot fix
                    if watch.finished:
                        return
                update = watch.reconcile(self._connection.task_or_none(self.task_id))
                if update is not None:
                    yield update
                    return
                time.sleep(watch.reconnect_delay())
        except Exception as exc:
            self._error = exc
            raise

    def _one_connection(self, watch: TaskWatch) -> Iterator[dict[str, Any]]:
        watch.connecting()
        connection = self._connection
        with connection.open(stream_request(connection.http, connection.config, self.task_id, watch.read_timeout())) as response:
            with _interrupted_at_deadline(response, watch.time_left()):
                for line in response.iter_lines():
                    update = watch.feed(line)
                    if update is not None:
                        yield update
                    if watch.should_leave:
                        return


@contextmanager
def _interrupted_at_deadline(response: httpx.Response, seconds: Optional[float]) -> Iterator[None]:
    """Shut the stream's socket when the caller's deadline passes, so a blocked read returns then.

    A read timeout alone is fixed when the connection opens, so a read that starts just
    before the deadline could run a whole read timeout past it. Where no socket is exposed
    (a test transport) that read timeout still bounds the wait.
    """
    network = response.extensions.get("network_stream")
    sock = network.get_extra_info("socket") if seconds is not None and network is not None else None
    if sock is None:
        yield
        return
    timer = threading.Timer(seconds, _shutdown, (sock,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: the read it would interrupt has ended


class Tasks:
    """Run tasks, read them, follow them, cancel them."""

    def __init__(self, connection: _Connection, files: "Files") -> None:
        self._connection = connection
        self._files = files
        self._schemas = InputSchemas()

    def run(
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
    ) -> Union[dict[str, Any], TaskStream]:
        """Start a task (`POST /apps/run`) and, by default, wait for its result.

        `params` is the run request: `app`, `input`, and optionally `function`, `setup`,
        `session`, `session_timeout`. Local files, data: URIs and base64 strings in
        `input`'s file fields are uploaded first and replaced by their URIs. Returns the completed task
        (`wait=True`), the created task (`wait=False`) or a TaskStream (`stream=True`).
        `timeout` bounds the wait in seconds (WaitTimeout); the task keeps running after it.

        The request carries an Idempotency-Key (`idempotency_key`, else a new one), so when
        it goes unanswered (a dropped connection, a timeout, a 502/503/504) it is sent again,
        up to `max_retries` times, and the task still runs once. Pass your own key to make a
        run you send again later (after a crash, say) the same run.
        """
        options = StreamOptions(auto_reconnect, max_reconnects, reconnect_delay_ms, timeout)
        key = run_headers(params, idempotency_key)
        files = InputFiles(params.get("input"))
        if files.pending:  # only then is the schema worth a request: which of them are in file fields?
            files = InputFiles(params.get("input"), self._input_schema(params))
        uris = {pending: self._files.upload(pending.source, pending.options)["uri"] for pending in files.pending}
        task = task_of(self._connection.request("POST", "/apps/run", json=run_body(params, files, uris),
                                      headers=key, resend=True))
        if stream:
            return TaskStream(self._connection, task["id"], options)
        if not wait:
            return strip_task(task)
        return _result_of(TaskStream(self._connection, task["id"], options))

    def _input_schema(self, params: dict[str, Any]) -> Optional[dict[str, Any]]:
        path = self._schemas.missing(params)
        if path is not None:
            try:
                self._schemas.keep(path, self._connection.request("GET", path).data)
            except InferenceError:  # no such endpoint there, or no answer: the run itself says what is wrong
                self._schemas.keep(path, None)
        return self._schemas.of_function(params)

    def get(self, task_id: str) -> Response:
        """The task as it is now, in full (`.data`), as the official SDK returns it."""
        return self._connection.request("GET", route("/tasks/{}", task_id))

    def cancel(self, task_id: str) -> None:
        """Ask the server to cancel the task; a finished task stays as it is."""
        self._connection.request("POST", route("/tasks/{}/cancel", task_id), resend=True)

    def files(self, task_id: str, *, role: Optional[str] = None) -> Response:
        """The files the task's input names and those it output (`role`: "input" or "output" for one side);
        `.data` is a list of `{id, role, uri, filename, content_type, size, created_at}`."""
        return self._connection.request("GET", task_path(task_id, "/files", role=role))

    def delete_files(self, task_id: str, *, role: Optional[str] = None) -> Response:
        """Delete a finished task's files (those of your key), keeping the task;
        `.data` is `{deleted: [id], skipped: [{id, reason}]}`."""
        return self._connection.request("DELETE", task_path(task_id, "/files", role=role))

    def delete(self, task_id: str, *, files: bool = False) -> None:
        """Delete a finished task; `files=True` deletes its files (those of your key) too."""
        self._connection.request("DELETE", task_path(task_id, files="true" if files else None))

    def stream(
        self,
        task_id: str,
        *,
        timeout: Optional[float] = None,
        auto_reconnect: bool = True,
        max_reconnects: int = 5,
        reconnect_delay_ms: int = 1000,
    ) -> TaskStream:
        """Follow a task's updates (nothing is sent until iteration starts)."""
        return TaskStream(self._connection, task_id, StreamOptions(auto_reconnect, max_reconnects, reconnect_delay_ms, timeout))

    def wait_for_completion(
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
        return _result_of(TaskStream(self._connection, task_id, options))


def _result_of(stream: TaskStream) -> dict[str, Any]:
    with stream:
        for _ in stream:
            pass
    assert stream.result is not None  # a stream ends only after COMPLETED; otherwise it raised
    return stream.result


class Files:
    """Upload files for inputs; download output files."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection

    def upload(self, data: FileData, options: Optional[UploadFileOptions] = None) -> dict[str, Any]:
        """Upload a local path, bytes, a data: URI or base64; returns the file object (its `uri` goes in inputs)."""
        options = options or UploadFileOptions()
        source = upload_source(data, options)
        created, upload_url = upload_target(self._connection.request("POST", "/files", json=file_request(source, options)).data)
        if source.local_path is None:
            self._put(upload_url, source, source.content)
        else:  # streamed from disk a piece at a time: a large file is never in memory whole
            with open(source.local_path, "rb") as handle:
                self._put(upload_url, source, file_chunks(handle, source.size))
        return created

    def _put(self, upload_url: str, source: UploadSource, content: Any) -> None:
        with self._sending(), self._connection.open(upload_request(self._connection.http, upload_url, source, content)):
            pass

    def download(self, file: Union[str, dict, File], dest: Union[str, "os.PathLike[str]"] = ".") -> Path:
        """Save an output file (a `{uri, ...}` value, a File or a URI) to `dest`, a file or a directory; returns its path."""
        uri, filename = download_source(file)
        target = download_target(dest, uri, filename)
        with partial_file(target) as out:
            if uri.startswith("data:"):
                out.write(data_uri_bytes(uri))
            else:
                with self._sending(), self._connection.open(file_url_request(self._connection.http, "GET", uri)) as response:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        return target

    @contextmanager
    def _sending(self) -> Iterator[None]:
        try:
            yield
        except httpx.TransportError as exc:
            raise connection_failed(exc, self._connection.config.timeout) from exc


class Sessions:
    """Sessions: one app instance kept for a series of calls (`"session": "new"` in `run` starts one)."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection

    def get(self, session_id: str) -> dict[str, Any]:
        return self._connection.request("GET", route("/sessions/{}", session_id)).data

    def list(self) -> list[dict[str, Any]]:
        return self._connection.request("GET", "/sessions").data or []

    def keepalive(self, session_id: str) -> dict[str, Any]:
        """Reset the session's idle timer; returns the session."""
        return self._connection.request("POST", route("/sessions/{}/keepalive", session_id)).data

    def end(self, session_id: str) -> None:
        """End the session and release its app instance."""
        self._connection.request("DELETE", route("/sessions/{}", session_id))


class Inference:
    """A client of one inferencesh_ray server (or any server speaking the inference.sh API).

    `base_url` (else `INFERENCE_BASE_URL`) is required; `api_key` (else `INFERENCE_API_KEY`)
    is sent as a bearer token when given. `timeout` bounds each connect, read and write of
    plain requests; `stream_timeout` bounds each read of a task stream. A request the
    server refuses for load (429) is sent again up to `max_retries` times, after its Retry-After;
    so is one that sending again cannot make happen twice (a read, a cancel, a run: it carries
    an Idempotency-Key) when its connection fails or it gets a 502, 503 or 504.
    """

    def __init__(
        self,
        *,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        stream_timeout: float = DEFAULT_STREAM_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        on_message: Optional[MessageCallback] = None,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        self._config = resolve_config(api_key, base_url, timeout, stream_timeout, max_retries)
        self._connection = _Connection(self._config, on_message, transport)
        self.files = Files(self._connection)
        self.tasks = Tasks(self._connection, self.files)
        self.sessions = Sessions(self._connection)
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

    def close(self) -> None:
        self._connection.http.close()

    def __enter__(self) -> "Inference":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


inference = Inference  # the official SDK's name for the constructor
