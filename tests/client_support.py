"""Servers the client tests talk to: the real API in a thread, a stand-in for the file
endpoints, and a TCP proxy that cuts task streams the way a flaky network does."""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Optional

import pytest
import uvicorn
from conftest import APPS, free_port
from helpers import make_server
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def api_server(app_path: Any, root: Any, key: str) -> Iterator[SimpleNamespace]:
    """The real API of one app (no Ray: in-process task store, app host, files and sessions) on 127.0.0.1."""
    server = make_server(app_path, root, keys=[key])
    with serving(server.app) as url:
        yield SimpleNamespace(url=url, port=int(url.rsplit(":", 1)[1]))


def api_server_fixture(app_file: str, key: str) -> Any:
    """A module-scoped fixture serving one app of tests/apps with `api_server`."""

    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory: Any) -> Iterator[SimpleNamespace]:
        with api_server(APPS / app_file, tmp_path_factory.mktemp(app_file.replace(".", "-")), key) as running:
            yield running

    return fixture


@dataclass
class StubFiles:
    """The file endpoints of wire protocol §9, as the official SDK uses them (issue 5 builds the real ones).

    `POST /files` answers one file with an absolute `upload_url` carrying its own token;
    `PUT` stores the bytes (and refuses a bearer key: a signed URL needs none); the `uri`
    serves them back. Every request is recorded for the tests to check.
    """

    api_key: Optional[str] = None
    blobs: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def routes(self) -> list[Route]:
        return [
            Route("/files", self.create, methods=["POST"]),
            Route("/uploads/{file_id}", self.put, methods=["PUT"]),
            Route("/blobs/{file_id}/{name}", self.get, methods=["GET"]),
        ]

    async def create(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append({"method": "POST", "headers": dict(request.headers), "body": body})
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse({"type": "/errors/unauthorized", "status": 401, "detail": "bad key"}, 401)
        (spec,) = body["files"]
        file_id = uuid.uuid4().hex[:12]
        name = spec["filename"] or "upload.bin"
        base = str(request.base_url).rstrip("/")
        created = {
            "id": file_id,
            "uri": f"{base}/blobs/{file_id}/{name}",
            "upload_url": f"{base}/uploads/{file_id}?token=t-{file_id}",
            "filename": name,
            "content_type": spec["content_type"],
            "size": spec["size"],
        }
        return JSONResponse({"success": True, "data": [created], "messages": []})

    async def put(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        content = await request.body()
        self.requests.append({"method": "PUT", "headers": dict(request.headers), "size": len(content)})
        if request.query_params.get("token") != f"t-{file_id}" or "authorization" in request.headers:
            return Response("signature mismatch", 403)
        self.blobs[file_id] = (content, request.headers.get("content-type", ""))
        return Response(status_code=200)

    async def get(self, request: Request) -> Response:
        blob = self.blobs.get(request.path_params["file_id"])
        if blob is None:
            return Response("no such blob", 404)
        return Response(blob[0], media_type=blob[1])


class CuttingProxy:
    """A TCP proxy to `upstream` that cuts task streams (NDJSON responses) as a flaky network would.

    `cut(index, chunk)` decides, for each chunk of the `index`-th stream response (0-based)
    about to be forwarded, whether to drop it and close the connection instead; `drop(chunk)`
    does so for any chunk. `requests` holds the request line of every request that passed.
    """

    def __init__(self, upstream_port: int, cut: Callable[[int, bytes], bool],
                 drop: Callable[[bytes], bool] = lambda chunk: False) -> None:
        self._upstream = upstream_port
        self._cut = cut
        self._drop = drop
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.streams = 0
        self.cuts = 0
        self.requests: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        while data := _recv(client):
            with self._lock:
                self.requests += [line for line in data.decode("latin-1").split("\r\n") if " HTTP/1.1" in line]
            upstream.sendall(data)
        _close(client, upstream)

    def _responses(self, upstream: socket.socket, client: socket.socket) -> None:
        stream: Optional[int] = None
        while data := _recv(upstream):
            if b"application/x-ndjson" in data:
                with self._lock:
                    stream, self.streams = self.streams, self.streams + 1
            if self._drop(data) or (stream is not None and self._cut(stream, data)):
                with self._lock:
                    self.cuts += 1
                break
            try:
                client.sendall(data)
            except OSError:
                break
        _close(client, upstream)


def terminal_chunk(chunk: bytes) -> bool:
    """Does this chunk of a stream carry a finished task (`"status": 10..13`)?"""
    return re.search(rb'"status":\s*1[0-3]\b', chunk) is not None


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
