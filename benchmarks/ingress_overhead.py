"""Our task ingress vs a plain Ray Serve FastAPI ingress, on the same no-op function.

    .venv/bin/python benchmarks/ingress_overhead.py [--requests 300] [--concurrency 1 8 32]

Ours: submit + wait exactly as the official client does it (POST /apps/run, GET
/tasks/{id}, then GET /tasks/{id}/stream until the terminal line), with a durable task
record in SQLite. Plain: one POST to a FastAPI ingress deployment that awaits a
deployment handle and returns the result. Same machine, same Ray, same run.
CPU per task (Linux): this process's (the clients') and everything else's on the
machine (the server side: proxy, replicas, task store, Serve, Ray), which share its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from fastapi import FastAPI

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import load  # noqa: E402

plain_api = FastAPI()


def plain_application(max_ongoing_requests: int | None = None):
    """Defaults (None), or tuned: the handle's deployment allowed `max_ongoing_requests`."""
    from ray import serve

    options = {"max_ongoing_requests": max_ongoing_requests} if max_ongoing_requests else {}

    @serve.deployment(**options)
    class Noop:
        async def run(self, value: int) -> dict:
            return {"value": value}

    @serve.deployment(max_ongoing_requests=1000)
    @serve.ingress(plain_api)
    class PlainIngress:
        def __init__(self, noop) -> None:
            self.noop = noop

        @plain_api.post("/run")
        async def run(self, body: dict) -> dict:
            return await self.noop.run.remote(body.get("value", 0))

    return PlainIngress.bind(Noop.bind())


async def ours_call(base: str):
    async def call(client, index: int) -> None:
        created = await client.post(f"{base}/apps/run", json={"app": "noop", "input": {"value": index}})
        task_id = created.json()["data"]["id"]
        await client.get(f"{base}/tasks/{task_id}")
        async with client.stream("GET", f"{base}/tasks/{task_id}/stream") as response:
            async for line in response.aiter_lines():
                if line and json.loads(line).get("status", 0) >= 10:
                    break
    return call


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (Linux's /proc/stat), every process included."""
    ticks = [int(field) for field in open("/proc/stat").readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


async def plain_call(base: str):
    async def call(client, index: int) -> None:
        response = await client.post(f"{base}/run", json={"value": index})
        assert response.json()["value"] == index
    return call


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()

    from ray import serve

    from inferencesh_ray.builder import build
    from inferencesh_ray.local_ray import start_ray

    start_ray(num_cpus=8)  # logical CPUs: every stack's replicas fit at once and share the same cores
    serve.start(http_options={"host": "127.0.0.1", "port": 8123})
    data = tempfile.mkdtemp(prefix="infsh-bench-")
    serve.run(build({"path": str(HERE / "apps" / "noop.py"), "name": "noop", "data_dir": data,
                     "listen": "127.0.0.1:8124"}), name="ours", route_prefix="/ours")
    serve.run(plain_application(), name="plain", route_prefix="/plain")
    serve.run(plain_application(max_ongoing_requests=100), name="tuned", route_prefix="/tuned")
    base = "http://127.0.0.1:8123"
    stacks = {
        "plain Serve (defaults)": plain_call(f"{base}/plain"),
        "plain Serve (tuned)": plain_call(f"{base}/tuned"),
        "ours, through Serve's proxy": ours_call(f"{base}/ours"),
        "ours, `listen`": ours_call("http://127.0.0.1:8124"),
    }
    calls = {name: asyncio.run(factory) for name, factory in stacks.items()}

    print("| c | stack | req/s | p50 / p99 ms | vs defaults | vs tuned | CPU ms per task: client / server |")
    print("|---|---|---|---|---|---|---|")
    for concurrency in args.concurrency:
        print(f"c={concurrency}: {args.requests} requests per stack...", file=sys.stderr, flush=True)
        results, cpu = {}, {}
        for name, call in calls.items():
            asyncio.run(load(call, concurrency, 20))  # warm up
            machine, client = busy_cpu_s(), time.process_time()
            results[name] = asyncio.run(load(call, concurrency, args.requests))
            client = time.process_time() - client
            cpu[name] = (client, busy_cpu_s() - machine - client)
        defaults, tuned = results["plain Serve (defaults)"], results["plain Serve (tuned)"]
        for name, result in results.items():
            print(
                f"| {concurrency} | {name} | {result.rps:.0f} | {result.p50:.1f} / {result.p99:.1f} "
                f"| {result.rps / defaults.rps:.2f}x, {result.p50 - defaults.p50:+.1f} ms "
                f"| {result.rps / tuned.rps:.2f}x, {result.p50 - tuned.p50:+.1f} ms "
                f"| {cpu[name][0] / args.requests * 1000:.1f} / {cpu[name][1] / args.requests * 1000:.1f} |",
                flush=True,
            )
    serve.shutdown()


if __name__ == "__main__":
    main()
