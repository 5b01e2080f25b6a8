"""The errors the client raises: one small hierarchy, each message saying what went wrong and what to do.

Task failures subclass `RuntimeError` and a wait's deadline subclasses `TimeoutError`,
because that is what the official SDK raises there: code written against it keeps working.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import httpx


class InferenceError(Exception):
    """Base of every error this client raises."""


class ConfigurationError(InferenceError, ValueError):
    """The client was not told enough to make a request (no server address)."""


class APIError(InferenceError):
    """The server answered with an HTTP error status.

    `message` is the problem+json `detail` (else `title`, `message`, the body); `problem`
    is the parsed body when it was JSON; `code` is the suffix of its `type` after `/errors/`.
    """

    def __init__(self, status_code: int, message: str, response_body: Optional[str] = None) -> None:
        self.status_code = status_code
        self.message = message
        self.response_body = response_body
        super().__init__(f"HTTP {status_code}: {message}")

    @property
    def problem(self) -> Optional[dict[str, Any]]:
        body = _json_or_none(self.response_body)
        return body if isinstance(body, dict) else None

    @property
    def code(self) -> Optional[str]:
        problem = self.problem or {}
        kind = problem.get("type")
        if isinstance(kind, str) and "/errors/" in kind:
            return kind.rsplit("/errors/", 1)[-1] or None
        legacy = problem.get("error")
        if isinstance(legacy, dict) and isinstance(legacy.get("code"), str):
            return legacy["code"]
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code}, message={self.message!r})"


class APIValidationError(APIError):
    """The request (usually its input or setup) failed validation: `errors` names each field."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        """`[{"loc": "input.text", "message": "field required"}, ...]`, as the server listed them."""
        errors = (self.problem or {}).get("errors")
        return [error for error in errors if isinstance(error, dict)] if isinstance(errors, list) else []

    @property
    def fields(self) -> list[str]:
        return [str(error.get("loc", "")) for error in self.errors]


class ConnectionFailed(InferenceError, ConnectionError):
    """The server could not be reached, stopped answering, or a stream kept dropping."""


class ProtocolError(InferenceError, RuntimeError):
    """The server answered, but not in a form this client understands (is it an inferencesh_ray server?)."""


class TaskError(InferenceError, RuntimeError):
    """A task ended without a result. `task` is the task as last seen (it carries `id`, `status`, `error`)."""

    def __init__(self, message: str, task: dict[str, Any]) -> None:
        super().__init__(message)
        self.task = task

    @property
    def task_id(self) -> Optional[str]:
        return self.task.get("id")


class TaskFailed(TaskError):
    """The task ended FAILED; the message is the task's `error`."""


class TaskCancelled(TaskError):
    """The task ended CANCELLED."""


class TaskRejected(TaskError):
    """The task ended REJECTED: it was refused before it ran."""


class WaitTimeout(InferenceError, TimeoutError):
    """A wait's `timeout=` passed before the task finished. The task keeps running; `task` is its last state."""

    def __init__(self, message: str, task: Optional[dict[str, Any]]) -> None:
        super().__init__(message)
        self.task = task


def error_from_response(status_code: int, text: str) -> APIError:
    """The APIError for an HTTP error answer, its message chosen as the official SDK chooses it."""
    body = _json_or_none(text)
    message = None
    if isinstance(body, dict):
        message = body.get("detail") or body.get("title") or body.get("message") or json.dumps(body)
    elif text:
        message = text[:500]
    cls = APIValidationError if status_code == 422 and isinstance(body, dict) and "errors" in body else APIError
    return cls(status_code, str(message or "Request failed"), text)


def connection_failed(exc: httpx.TransportError, timeout: Optional[float] = None) -> ConnectionFailed:
    """A ConnectionFailed naming the URL and what happened, for an httpx transport error."""
    url = _url_of(exc)
    if isinstance(exc, httpx.TimeoutException):
        after = f" within {timeout:g} s" if timeout is not None else ""
        return ConnectionFailed(f"no answer from {url}{after} ({type(exc).__name__}); is the server overloaded or stuck?")
    if isinstance(exc, httpx.ConnectError):
        return ConnectionFailed(
            f"could not connect to {url} ({exc or type(exc).__name__}); is the server running there? "
            "(check the address given as base_url, --base-url or INFERENCE_BASE_URL)"
        )
    return ConnectionFailed(f"the connection to {url} failed: {exc or type(exc).__name__}")


def _url_of(exc: httpx.TransportError) -> str:
    try:
        return str(exc.request.url)
    except RuntimeError:  # an error raised before any request was bound to it
        return "the server"


def _json_or_none(text: Optional[str]) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
