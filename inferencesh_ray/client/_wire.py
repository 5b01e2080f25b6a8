"""Requests and answers as both clients build and read them: paths, the `{"data": ...}`
envelope (unwrapped as the official SDK unwraps it), and which failures are worth retrying.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from urllib.parse import quote

import httpx

from ._errors import APIError, ConnectionFailed, ProtocolError, error_from_response

MessageCallback = Callable[[list], None]


@dataclass
class Response:
    """What a plain call returned: `data` (the DTO) and the server's `messages` (warnings and notes)."""

    data: Any
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def has_warnings(self) -> bool:
        return any(isinstance(m, dict) and m.get("level") == "warning" for m in self.messages)


def read_envelope(status_code: int, text: str, on_message: Optional[MessageCallback] = None) -> Response:
    """The Response of a finished HTTP answer; APIError for an error status."""
    if status_code >= 400:
        raise error_from_response(status_code, text)
    if status_code == 204 or not text:
        return Response(None)
    try:
        payload = json.loads(text)
    except ValueError:
        # Usually a base URL that points at something else (an HTML page, a proxy).
        raise ProtocolError(f"the server answered {status_code} with a body that is not JSON: {text[:200]!r}") from None
    if isinstance(payload, dict) and "data" in payload:
        messages = payload.get("messages") or []
        if messages and on_message is not None:
            on_message(messages)
        return Response(payload["data"], messages)
    return Response(payload)


def task_of(response: Response) -> dict[str, Any]:
    """The task object a run answered with; ProtocolError when it is not one."""
    task = response.data
    if not isinstance(task, dict) or not task.get("id"):
        raise ProtocolError(f"expected a task object with an `id`, got {json.dumps(task)[:200]}")
    return task


def route(template: str, *ids: str) -> str:
    """A path with ids filled in, escaped: an id from the command line may hold any character."""
    return template.format(*(quote(str(value), safe="") for value in ids))


def is_transient(exc: BaseException) -> bool:
    """Worth trying again later: the connection failed, or the server (or a proxy) was briefly unavailable."""
    if isinstance(exc, (httpx.TransportError, ConnectionFailed)):
        return True
    return isinstance(exc, APIError) and (exc.status_code >= 500 or exc.status_code == 429)


# Requests that sending again cannot make happen twice: reads, and ending a session (idempotent).
SAFE_METHODS = frozenset({"GET", "HEAD", "DELETE"})
# A server asking for longer than this is treated as unavailable rather than waited on.
MAX_RETRY_AFTER_S = 60.0
# Without a Retry-After, waits double from 0.5 s up to this.
MAX_BACKOFF_S = 8.0
# The server, or a proxy before it, could not take the request just now.
_UNAVAILABLE = frozenset({502, 503, 504})


def retry_delay(response: Optional[httpx.Response], attempt: int, max_retries: int, resend: bool) -> Optional[float]:
    """Seconds to wait before sending a request again, or None to give its answer (or failure) to the caller.

    A 429 is retried: the server refused the request for load and created nothing. A
    request that sending again cannot make happen twice (`resend`: a read, a cancel, a run
    with an Idempotency-Key) is retried too after a failed connection (`response` None)
    or a 502, 503 or 504. The wait is the server's Retry-After (else 0.5 s doubling, up to 8 s),
    stretched by up to a quarter so refused clients do not all return at once.
    """
    if attempt >= max_retries:
        return None
    status = None if response is None else response.status_code
    if status != 429 and not (resend and (status is None or status in _UNAVAILABLE)):
        return None
    try:
        asked = float(response.headers.get("retry-after", "")) if response is not None else None
    except ValueError:
        asked = None  # absent, or an HTTP date: servers here send seconds
    if asked is None:
        asked = min(0.5 * 2**attempt, MAX_BACKOFF_S)
    if not 0 <= asked <= MAX_RETRY_AFTER_S:
        return None
    return asked * (1 + random.random() / 4)
