"""Idempotency keys: a run request sent again with its `Idempotency-Key` gets the first one's task.

A client that lost the answer to a run request (a timeout, a dropped connection, a proxy's
502 or 503) cannot tell whether its task was created. Sent again with the same key, the
request is answered with the task the first one created, as it is now, and the work runs
once. The caller and the key make the task's id, so whichever ingress replica takes the
request again finds the task in the task store, for as long as the store keeps it.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Optional

from starlette.datastructures import Headers

from .json_codec import dumps, loads
from .problems import ApiProblem

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255
_KEY = re.compile(rf"[\x20-\x7e]{{1,{MAX_KEY_CHARS}}}")
_NAMESPACE = uuid.UUID("5b0f6a3e-9c1d-4e7a-8f21-6d3c2b7a9e10")
# What makes two run requests the same request; the app's version may move between them.
_REQUEST_FIELDS = ("app_id", "function", "input", "setup")


def key_of(headers: Headers) -> Optional[str]:
    """The request's key, or None; 400 for a key that is not 1-255 printable ASCII characters, or for two keys."""
    keys = headers.getlist(HEADER)
    if not keys:
        return None
    if len(keys) > 1:  # which one the client meant is unknowable, and guessing could run its work twice
        raise ApiProblem(400, "invalid_request", f"send one {HEADER} header, not {len(keys)}")
    key = keys[0]
    if not _KEY.fullmatch(key):
        raise ApiProblem(400, "invalid_request",
                         f"the {HEADER} header must be 1-{MAX_KEY_CHARS} printable ASCII characters (a UUID, say)")
    return key


def task_id_for(owner: str, key: str) -> str:
    """The id of the task that `owner`'s requests with `key` name."""
    return uuid.uuid5(_NAMESPACE, f"{owner}\n{key}").hex


def check_same_request(task: dict[str, Any], fields: dict[str, Any], session: Optional[str], key: str) -> None:
    """422 (as the IETF draft has it) when the task `key` names was created by a different request
    (`session` is the request's; file inputs compare by what the files are, see ServerFiles.identities)."""
    differ = [name for name in _REQUEST_FIELDS if _plain(task.get(name)) != _plain(fields.get(name))]
    ran_in = task.get("session_id")
    if (session is None) != (ran_in is None) or session not in (None, "new", ran_in):
        differ.append("session")
    if differ:
        raise ApiProblem(422, "idempotency_key_reused",
                         f"{HEADER} {key!r} was first sent with a different request (another "
                         f"{' and '.join(differ)}), which created task {task['id']}; send a new request with a new key",
                         task_id=task["id"])


def _plain(value: Any) -> Any:
    """As JSON reads it back: the stored task went through JSON (or pickling), the request not yet."""
    return loads(dumps(value))


class OneAtATime:
    """Locks by key, each kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
