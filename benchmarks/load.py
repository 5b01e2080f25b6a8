"""Many clients submitting and waiting at once: nothing lost, duplicated or stuck, and how fast.

    .venv/bin/python benchmarks/load.py [--tasks 20000] [--clients 256] [--replicas 2]

Each client submits a task and waits for it as the official client does (POST, then the
stream until the terminal line), then the next. Afterwards every task id returned is
read back: it must be COMPLETED with the output its input asked for. The test suite runs
the same driver, bounded (5,000 tasks, 64 clients).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
COMPLETED = 10


@dataclass
class LoadReport:
    expected: dict[str, str]
    """Task id -> the text its output must echo."""
    tasks: dict[str, dict]
    latencies_s: list[float]
    elapsed_s: float

    @property
    def wrong(self) -> list[str]:
        return [task_id for task_id, task in self.tasks.items()
                if task["status"] != COMPLETED or task["output"]["text"] != self.expected[task_id]]

    def summary(self) -> str:
        p99 = sorted(self.latencies_s)[int(0.99 * len(self.latencies_s))]
        return (f"{len(self.expected)} tasks: {len(self.expected) / self.elapsed_s:.0f} tasks/s, submit-to-done "
                f"p50 {statistics.median(self.latencies_s) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
                f"{len(self.wrong)} wrong or unfinished")


async def run_load(url: str, total: int, clients: int) -> LoadReport:
    """Drive the counting app at `url` (app name `counting`) with `clients` concurrent clients."""
    numbers = iter(range(total))
    expected: dict[str, str] = {}
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=clients * 2)) as client:

        async def one_client() -> None:
            for number in numbers:
                started = time.perf_counter()
                created = await client.post(f"{url}/apps/run", json={"app": "counting", "input": {"text": f"t{number}"}})
                task_id = created.json()["data"]["id"]
                async with client.stream("GET", f"{url}/tasks/{task_id}/stream") as response:
                    async for line in response.aiter_lines():
                        if line and json.loads(line).get("status", 0) >= COMPLETED:
                            break
                assert task_id not in expected, f"task id {task_id} was handed out twice"
                expected[task_id] = f"t{number}"
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
        tasks = {task_id: (await client.get(f"{url}/tasks/{task_id}")).json()["data"] for task_id in expected}
    return LoadReport(expected, tasks, latencies, elapsed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()

    from ray import serve

    sys.path.insert(0, str(ROOT / "tests" / "apps"))  # the counting app imports its neighbour `lifecycle`
    from inferencesh_ray.builder import build
    from inferencesh_ray.local_ray import start_ray

    start_ray(num_cpus=8)
    serve.start(http_options={"host": "127.0.0.1", "port": 8131})
    serve.run(build({"path": str(ROOT / "tests" / "apps" / "counting.py"), "num_replicas": args.replicas,
                     "data_dir": tempfile.mkdtemp(prefix="infsh-load-")}), name="load", route_prefix="/")
    print(f"{args.tasks} tasks from {args.clients} clients...", file=sys.stderr, flush=True)
    report = asyncio.run(run_load("http://127.0.0.1:8131", args.tasks, args.clients))
    print(report.summary())
    serve.shutdown()
    sys.exit(1 if report.wrong else 0)


if __name__ == "__main__":
    main()
