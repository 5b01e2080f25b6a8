"""A call in a warm session vs the same call through the app's deployment, and the cost of a new session.

    .venv/bin/python benchmarks/session_latency.py [--requests 300] [--sessions 10]

Both paths run the no-op app and are timed the way the official client waits: `POST
/apps/run`, `GET /tasks/{id}`, then the stream until the terminal line, one call at a
time, alternating between the two paths so drift hits both alike. Session creation is
the time `POST /apps/run` with `"session": "new"` takes to answer (the worker actor
started and the app imported; the app's `setup` runs later, inside the first task).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


def timed_call(client: httpx.Client, base: str, body: dict) -> float:
    started = time.perf_counter()
    task = client.post(f"{base}/apps/run", json=body).json()["data"]
    client.get(f"{base}/tasks/{task['id']}")
    with client.stream("GET", f"{base}/tasks/{task['id']}/stream") as response:
        for line in response.iter_lines():
            if line and json.loads(line).get("status", 0) >= 10:
                break
    return (time.perf_counter() - started) * 1000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--sessions", type=int, default=10)
    args = parser.parse_args()

    from ray import serve

    from inferencesh_ray.builder import build
    from inferencesh_ray.local_ray import start_ray

    start_ray(num_cpus=4)
    serve.start(http_options={"host": "127.0.0.1", "port": 8125})
    data = tempfile.mkdtemp(prefix="infsh-session-bench-")
    serve.run(build({"path": str(HERE / "apps" / "noop.py"), "name": "noop", "data_dir": data}),
              name="sessions", route_prefix="/")
    base = "http://127.0.0.1:8125"
    with httpx.Client(timeout=60) as client:
        created = []
        for _ in range(args.sessions):
            started = time.perf_counter()
            task = client.post(f"{base}/apps/run", json={"app": "noop", "input": {}, "session": "new"}).json()["data"]
            created.append((time.perf_counter() - started) * 1000)
            client.delete(f"{base}/sessions/{task['session_id']}")
        session = client.post(f"{base}/apps/run", json={"app": "noop", "input": {}, "session": "new"}).json()["data"]
        paths = {"deployment": {"app": "noop", "input": {}},
                 "session": {"app": "noop", "input": {}, "session": session["session_id"]}}
        for body in paths.values():  # warm up both
            for _ in range(20):
                timed_call(client, base, body)
        print(f"{args.requests} calls on each path...", file=sys.stderr, flush=True)
        latencies = {name: [] for name in paths}
        for _ in range(args.requests):
            for name, body in paths.items():
                latencies[name].append(timed_call(client, base, body))

    print("| path, c=1 | p50 ms | p99 ms |")
    print("|---|---|---|")
    for name, values in latencies.items():
        print(f"| {name} | {statistics.median(values):.1f} | {percentile(values, 0.99):.1f} |")
    added = statistics.median(latencies["session"]) - statistics.median(latencies["deployment"])
    print(f"\nsession vs deployment at p50: {added:+.1f} ms")
    print(f"creating a session (POST until it answers), median of {args.sessions}: {statistics.median(created):.0f} ms "
          f"(min {min(created):.0f}, max {max(created):.0f})")
    serve.shutdown()


if __name__ == "__main__":
    main()
