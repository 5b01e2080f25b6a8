"""Dynamic batching: `@batched` marks a function, and `Batcher` groups the calls that arrive together.

A batched function takes `list[Input]` and returns `list[Output]`, one output per input
in order; each task still carries one input and gets one output. The decorator only
marks the function; the app host runs the batches. Imports no Ray.

    @batched(max_batch_size=32, max_wait_ms=5)
    async def embed(self, inputs: list[EmbedInput]) -> list[EmbedOutput]: ...
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Awaitable, Callable, Hashable, Mapping, Optional, TypeVar

from .background import spawn

_ATTRIBUTE = "__infsh_batch__"
DEFAULT_MAX_BATCH_SIZE = 10
DEFAULT_MAX_WAIT_MS = 10.0

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class BatchSpec:
    """How a batched function groups calls: at most `max_batch_size`, the first waiting up to `max_wait_ms`."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS

    def __post_init__(self) -> None:
        size, wait = self.max_batch_size, self.max_wait_ms
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"max_batch_size must be a whole number >= 1, got {size!r}")
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not math.isfinite(wait) or wait < 0:
            raise ValueError(f"max_wait_ms must be a number of milliseconds >= 0, got {wait!r}")

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000

    def describe(self) -> str:
        return f"batched (max {self.max_batch_size} per batch, waits up to {self.max_wait_ms:g} ms)"

    def override(self, settings: Mapping[str, Any]) -> "BatchSpec":
        """This spec with some settings replaced (a deployment config's); ValueError names a bad one."""
        known = [f.name for f in fields(self)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}; the settings are {', '.join(known)}")
        return replace(self, **settings)


def batched(
    function: Optional[F] = None, /, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, max_wait_ms: float = DEFAULT_MAX_WAIT_MS
) -> Any:
    """Mark an app function as batched: calls that arrive together run as one call with a list.

    Use as `@batched(max_batch_size=32, max_wait_ms=5)` (or bare `@batched` for the defaults,
    10 and 10 ms). Return an exception in an element's place to fail only that task.
    """
    if function is not None and not callable(function):
        raise TypeError(f"pass batched's settings by name: @batched(max_batch_size={function!r}, max_wait_ms=...)")
    spec = BatchSpec(max_batch_size, max_wait_ms)

    def mark(func: F) -> F:
        setattr(func, _ATTRIBUTE, spec)
        return func

    return mark(function) if function is not None else mark


def batch_spec(func: Callable[..., Any]) -> Optional[BatchSpec]:
    """The spec `@batched` gave `func`, or None for a function that is not batched."""
    spec = getattr(func, _ATTRIBUTE, None)
    return spec if isinstance(spec, BatchSpec) else None


RunBatch = Callable[[Hashable, list], Awaitable[list]]
"""Runs one batch (items of one key) and returns one outcome per item, in order; an exception fails its item."""

Release = Callable[[Any], None]
"""Told that the batcher is done with an item: no batch holds it now, or ever will."""


@dataclass(eq=False)
class _Entry:
    item: Any
    future: asyncio.Future
    arrived: float


@dataclass(eq=False)
class _Queue:
    """The calls of one key waiting for their batch, and the batch running now."""

    spec: BatchSpec
    pending: list[_Entry] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    running: list[_Entry] = field(default_factory=list)
    running_task: Optional[asyncio.Future] = None
    drainer: Optional[asyncio.Task] = None
    """The task forming and running this key's batches, held here so it is not garbage-collected."""


class Batcher:
    """Groups items by key and runs `run_batch` once per group, one group at a time per key.

    The oldest waiting item waits at most `max_wait_ms` for others, unless `max_batch_size`
    are waiting; items that arrive while a batch runs fill the next one (as Serve's
    `@serve.batch` does with one batch at a time), which is where batching pays under load.
    """

    def __init__(self, run_batch: RunBatch, release: Release = lambda item: None) -> None:
        """`release` is called once per item: when it leaves the group before its batch starts, or when
        its batch has ended. Its caller may have been cancelled long before (the batch runs on for the
        others), so what a batch reads of an item (its input files) must live until its release."""
        self._run_batch = run_batch
        self._release = release
        self._queues: dict[Hashable, _Queue] = {}

    async def submit(self, key: Hashable, spec: BatchSpec, item: Any) -> Any:
        """Wait for `item`'s outcome. Cancelled before its batch starts, it leaves the group;
        after, the batch runs on for the others (and is cancelled when no one waits for it)."""
        loop = asyncio.get_running_loop()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(spec)
            # Apart from the first caller: later batches, and the app's own calls in them, are not its children.
            queue.drainer = spawn(self._drain(key, queue))
        entry = _Entry(item, loop.create_future(), loop.time())
        queue.pending.append(entry)
        queue.changed.set()
        try:
            return await entry.future
        except asyncio.CancelledError:
            if _abandon(queue, entry):
                self._release(item)
            raise

    async def _drain(self, key: Hashable, queue: _Queue) -> None:
        try:
            while queue.pending:
                await _fill(queue)
                size = queue.spec.max_batch_size
                batch, queue.pending = queue.pending[:size], queue.pending[size:]
                if batch:
                    await self._run(key, queue, batch)
        finally:
            del self._queues[key]

    async def _run(self, key: Hashable, queue: _Queue, batch: list[_Entry]) -> None:
        task = asyncio.ensure_future(self._outcomes(key, batch))
        queue.running, queue.running_task = batch, task
        try:
            await asyncio.wait([task])
        finally:
            queue.running, queue.running_task = [], None
        _settle(batch, task)
        for entry in batch:
            self._release(entry.item)

    async def _outcomes(self, key: Hashable, batch: list[_Entry]) -> list:
        outcomes = await self._run_batch(key, [entry.item for entry in batch])
        if len(outcomes) != len(batch):  # a broken run_batch must not leave callers waiting forever
            raise RuntimeError(f"run_batch gave {len(outcomes)} outcomes for {len(batch)} items")
        return outcomes


async def _fill(queue: _Queue) -> None:
    """Wait until the batch is full, or its oldest item has waited `max_wait_ms`, or it is empty."""
    while 0 < len(queue.pending) < queue.spec.max_batch_size:
        remaining = queue.pending[0].arrived + queue.spec.max_wait_s - asyncio.get_running_loop().time()
        if remaining <= 0:
            return
        queue.changed.clear()
        try:
            await asyncio.wait_for(queue.changed.wait(), remaining)
        except asyncio.TimeoutError:
            return


def _abandon(queue: _Queue, entry: _Entry) -> bool:
    """Take a cancelled caller's entry out of its group; True if it left before its batch started."""
    if entry in queue.pending:
        queue.pending.remove(entry)
        queue.changed.set()
        return True
    if queue.running_task is not None and entry in queue.running and all(e.future.done() for e in queue.running):
        queue.running_task.cancel()  # every caller is gone: stop the call, as for an unbatched function
    return False


def _settle(batch: list[_Entry], task: asyncio.Future) -> None:
    """Hand each waiting entry its outcome: its own element, or the batch's exception."""
    if task.cancelled():
        for entry in batch:
            entry.future.cancel()
        return
    error = task.exception()
    outcomes = [error] * len(batch) if error is not None else task.result()
    for entry, outcome in zip(batch, outcomes):
        if entry.future.done():
            continue  # its caller was cancelled while the batch ran
        if isinstance(outcome, BaseException):
            entry.future.set_exception(outcome)
        else:
            entry.future.set_result(outcome)
