"""Shared pieces of the benchmarks: a loopback Ray, load generation and statistics."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import httpx


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


async def load(call: Callable[[httpx.AsyncClient, int], Awaitable[None]], concurrency: int, total: int) -> Result:
    """Run `total` calls from `concurrency` workers sharing one HTTP connection pool."""
    latencies: list[float] = []
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker() -> None:
            for index in counter:
                started = time.perf_counter()
                await call(client, index)
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Result(concurrency, total, elapsed, latencies)
