"""What the sync and async clients build the same way: requests, the run body and the
stream handle's state. Only sending differs between them."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, Optional, Union
from urllib.parse import urlencode

import httpx

from ._config import STREAM_HEADERS, ClientConfig
from ._files import InputFiles, PendingUpload
from ._stream import StreamOptions, TaskWatch
from ..refs import Ref, parse_ref
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


_KEY = re.compile(r"[\x20-\x7e]{1,255}")  # as the server checks it; HTTP headers are ASCII


def run_headers(params: Any, key: Optional[str]) -> dict[str, str]:
    """The run's Idempotency-Key: `key`, else a new one, so the run can be sent again safely.
    A TypeError or ValueError, before anything is sent, for params or a key no server takes."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict such as {{'app': 'name', 'input': {{...}}}}, not {type(params).__name__}")
    if key is not None and not (isinstance(key, str) and _KEY.fullmatch(key)):
        raise ValueError(f"idempotency_key must be 1-255 printable ASCII characters, not {key!r}")
    return {"Idempotency-Key": key or uuid.uuid4().hex}


def task_path(task_id: str, suffix: str = "", **query: Optional[str]) -> str:
    """`/tasks/{id}` + suffix, with the query's given values."""
    given = {name: value for name, value in query.items() if value is not None}
    return route("/tasks/{}" + suffix, task_id) + (f"?{urlencode(given)}" if given else "")


def run_body(params: dict[str, Any], files: InputFiles, uris: dict[PendingUpload, str]) -> dict[str, Any]:
    """`POST /apps/run`'s body: the caller's params as given, with uploaded inputs replaced by URIs."""
    return {**params, "input": files.filled(uris)}


class InputSchemas:
    """The input schema of the function a run names, from its app's `GET /apps/{app}/schema`,
    kept a minute: it tells which input strings are files (`InputFiles`).

    A server without that endpoint (or an app it will not describe) gives None, and the
    official SDK's rule applies.
    """

    TTL_S = 60.0

    def __init__(self) -> None:
        self._apps: dict[str, tuple[float, Any]] = {}

    def path(self, params: dict[str, Any]) -> Optional[str]:
        """The schema's path for the app `params` names, if any."""
        ref = _ref(params)
        return route("/apps/{}/schema", ref.name) if ref is not None and ref.name else None

    def missing(self, params: dict[str, Any]) -> Optional[str]:
        """The path to ask for the schema `params` needs, or None when it is kept (or there is none)."""
        path = self.path(params)
        return path if path is not None and self._apps.get(path, (0.0, None))[0] <= time.monotonic() else None

    def keep(self, path: str, schema: Any) -> None:
        """What the server answered (None when it did not: the official SDK's rule then applies)."""
        self._apps[path] = (time.monotonic() + self.TTL_S, schema)

    def of_function(self, params: dict[str, Any]) -> Optional[dict[str, Any]]:
        """The input schema of the function `params` names, from its app's schema as kept; None if absent."""
        path = self.path(params)
        schema = self._apps.get(path, (0.0, None))[1] if path is not None else None
        if not isinstance(schema, dict) or not isinstance(schema.get("functions"), dict):
            return None
        ref = _ref(params)
        named = params.get("function") or (ref.function if ref is not None else None)
        function = schema["functions"].get(named or schema.get("default_function") or "run")
        found = function.get("input_schema") if isinstance(function, dict) else None
        return found if isinstance(found, dict) else None


def _ref(params: dict[str, Any]) -> Optional[Ref]:
    ref = params.get("app") or params.get("app_id")
    return parse_ref(ref) if isinstance(ref, str) else None


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
