"""An ingress's writes to the task store, sent together.

Every write is a call to the store's actor, and at 32 concurrent clients most of a task's
cost was those calls' own overhead. Writes go out one batch at a time: while a batch is
in flight the next one gathers, then goes as one call and one SQLite transaction (group
commit). A caller still waits for its own write to be on disk, so nothing acknowledged
is lost; an idle ingress sends each write at once. A write the store refused raises what
the store raised; one whose call failed as a whole raises StoreUnavailable, and may be
sent again.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from .background import spawn


class StoreUnavailable(Exception):
    """The store's call failed as a whole (the store restarting or unreachable, or its transaction not
    committed): the write was not refused, and sending it again later may succeed."""


class StoreWrites:
    def __init__(self, store: Any) -> None:
        self._store = store
        self._pending: list[tuple[str, tuple, asyncio.Future]] = []
        self._sending: Optional[asyncio.Task] = None

    async def create(self, *args: Any) -> dict:
        return await self._write("create", args)

    async def apply(self, *args: Any) -> Optional[dict]:
        return await self._write("apply", args)

    async def cancel(self, *args: Any) -> Optional[dict]:
        return await self._write("cancel", args)

    async def withdraw(self, *args: Any) -> None:
        return await self._write("withdraw", args)

    async def delete(self, *args: Any) -> bool:
        return await self._write("delete", args)

    async def _write(self, op: str, args: tuple) -> Any:
        done = asyncio.get_running_loop().create_future()
        self._pending.append((op, args, done))
        if self._sending is None or self._sending.done():
            self._sending = spawn(self._send())  # its batches carry other requests' writes too
        return await done

    async def _send(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await self._store.write([(op, args) for op, args, _ in batch])
            except Exception as exc:  # the whole call failed: each writer hears it
                results = [_unavailable(exc) for _ in batch]
            for (_, _, done), result in zip(batch, results):
                if done.done():
                    continue
                if isinstance(result, Exception):
                    done.set_exception(result)
                else:
                    done.set_result(result)


def _unavailable(cause: Exception) -> StoreUnavailable:
    unavailable = StoreUnavailable(f"the task store could not take the write ({type(cause).__name__}: {cause})")
    unavailable.__cause__ = cause
    return unavailable
