"""Shared pieces of the benchmarks: load generation, the official client's way to run a task, statistics.

The load generator is aiohttp, the HTTP library of the official SDK's async client, with
one connection pool for all workers. Its C parser costs the client ~0.3 ms of CPU per
request here; httpx, which these benchmarks used before, costs ~2 ms, and on a 2-core
machine that CPU is taken from the servers being measured (benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

import aiohttp

COMPLETED = 10


@dataclass
class Result:
    concurrency: int
    requests: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def p99(self) -> float:
        return self.percentile(0.99)


async def load(call: Callable[[aiohttp.ClientSession, int], Awaitable[None]], concurrency: int, total: int) -> Result:
    """Run `total` calls from `concurrency` workers sharing one HTTP connection pool."""
    latencies: list[float] = []
    counter = iter(range(total))
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    # aiohttp refuses a stream line longer than twice `read_bufsize`; a task with 64 embeddings
    # streams a ~0.5 MB one.
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300),
                                     read_bufsize=1 << 22) as client:

        async def worker() -> None:
            for index in counter:
                started = time.perf_counter()
                await call(client, index)
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Result(concurrency, total, elapsed, latencies)


async def run_and_wait(
    client: aiohttp.ClientSession, base: str, body: dict[str, Any], headers: Optional[dict[str, str]] = None
) -> dict[str, Any]:
    """Run a task as the official sync client's `run(wait=True)` does; returns the stream's terminal line.

    `POST /apps/run` (with `headers`: our client's adds an Idempotency-Key), `GET /tasks/{id}`,
    then `GET /tasks/{id}/stream`, left once the terminal line has come (the official client
    leaves it then too).
    """
    async with client.post(f"{base}/apps/run", json=body, headers=headers) as response:
        task_id = (await response.json())["data"]["id"]
    async with client.get(f"{base}/tasks/{task_id}") as response:
        await response.read()
    async with client.get(f"{base}/tasks/{task_id}/stream") as response:
        async for line in response.content:
            update = json.loads(line) if line.strip() else {}
            if update.get("status", 0) >= COMPLETED:
                return update
    raise AssertionError(f"task {task_id}: its stream ended before the task did")
