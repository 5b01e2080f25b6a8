"""What the sync and async clients build the same way: requests, the run body and the
stream handle's state. Only sending differs between them."""

from __future__ import annotations

from typing import Any, Optional, Union

import httpx

from ._config import STREAM_HEADERS, ClientConfig
from ._files import PendingUpload, with_uris
from ._stream import StreamOptions, TaskWatch
from ._wire import route


def client_options(config: ClientConfig, transport: Union[httpx.BaseTransport, httpx.AsyncBaseTransport, None]) -> dict:
    """Keyword arguments for httpx.Client / httpx.AsyncClient."""
    return {"base_url": config.base_url, "headers": config.headers(), "timeout": config.httpx_timeout(), "transport": transport}


def stream_request(http: Union[httpx.Client, httpx.AsyncClient], config: ClientConfig, task_id: str, read_timeout: float) -> httpx.Request:
    return http.build_request(
        "GET", route("/tasks/{}/stream", task_id), headers=STREAM_HEADERS, timeout=config.httpx_timeout(read=read_timeout)
    )


def file_url_request(
    http: Union[httpx.Client, httpx.AsyncClient], method: str, url: str, *, content: Optional[bytes] = None,
    content_type: Optional[str] = None,
) -> httpx.Request:
    """A request to a file URL (upload or download), which carries its own credential.

    Our API key must never leave for another host, and S3-style signed URLs refuse a
    request that has an Authorization header as well.
    """
    headers = {"Content-Type": content_type} if content_type else None
    request = http.build_request(method, url, content=content, headers=headers)
    request.headers.pop("Authorization", None)
    return request


def run_body(params: dict[str, Any], uris: dict[PendingUpload, str]) -> dict[str, Any]:
    """`POST /apps/run`'s body: the caller's params as given, with uploaded inputs replaced by URIs."""
    return {**params, "input": with_uris(params.get("input"), uris)}


class StreamHandle:
    """The state a TaskStream and an AsyncTaskStream share: whose updates, and how they ended."""

    def __init__(self, task_id: str, options: StreamOptions, stream_timeout: float) -> None:
        self.task_id = task_id
        self._watch = TaskWatch(task_id, options, stream_timeout)
        self._error: Optional[Exception] = None

    @property
    def result(self) -> Optional[dict[str, Any]]:
        """The COMPLETED task (stripped), once the stream has seen it."""
        return self._watch.result

    @property
    def error(self) -> Optional[Exception]:
        """What ended the stream early (a TaskError for a failed task), if anything did."""
        return self._error
