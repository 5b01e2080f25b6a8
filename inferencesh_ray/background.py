"""Work that outlives the request that starts it.

Serve cancels a request's Ray calls with it when its client leaves: Ray cancels the child
tasks of a cancelled actor task, and a call made from an asyncio task that the request
started counts as the request's child (Ray finds the parent through the context). A
task's record and run, a batch of store writes carrying other tasks' records, a session
worker's release: these start here, in a fresh context, so that their calls are nobody's
children and run to their end.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


def spawn(work: Coroutine[Any, Any, T]) -> "asyncio.Task[T]":
    """Run `work` as an asyncio task apart from the caller's Ray task (see the module's docstring)."""
    return contextvars.Context().run(asyncio.ensure_future, work)
