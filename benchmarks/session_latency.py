"""A call in a warm session vs the same call through the app's deployment, and the cost of a new session.

    .venv/bin/python benchmarks/session_latency.py [--requests 300] [--sessions 10]

Both paths run the no-op app and are timed the way the official client waits: `POST
/apps/run`, `GET /tasks/{id}`, then the stream until the terminal line, one call at a
time, alternating between the two paths so drift hits both alike; through each door:
Serve's HTTP proxy, and the ingress's own listener (`listen`), one ingress serving both.
Session creation is the time `POST /apps/run` with `"session": "new"` takes to answer
(the worker actor started and the app imported; the app's `setup` runs later, inside the
first task).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
PROXY_PORT, LISTEN_PORT = 8125, 8130
DOORS = {"proxy": f"http://127.0.0.1:{PROXY_PORT}", "listen": f"http://127.0.0.1:{LISTEN_PORT}"}


def timed_call(client: httpx.Client, base: str, body: dict, keyed: bool) -> float:
    """`keyed`: with an Idempotency-Key of its own, as our client sends every run."""
    headers = {"Idempotency-Key": uuid.uuid4().hex} if keyed else None
    started = time.perf_counter()
    task = client.post(f"{base}/apps/run", json=body, headers=headers).json()["data"]
    client.get(f"{base}/tasks/{task['id']}")
    with client.stream("GET", f"{base}/tasks/{task['id']}/stream") as response:
        for line in response.iter_lines():
            if line and json.loads(line).get("status", 0) >= 10:
                break
    return (time.perf_counter() - started) * 1000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def create_sessions(client: httpx.Client, base: str, count: int) -> list[float]:
    """Milliseconds each `"session": "new"` took to answer; each session is ended afterwards."""
    created = []
    for _ in range(count):
        started = time.perf_counter()
        task = client.post(f"{base}/apps/run", json={"app": "noop", "input": {}, "session": "new"}).json()["data"]
        created.append((time.perf_counter() - started) * 1000)
        client.delete(f"{base}/sessions/{task['session_id']}")
    return created


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--sessions", type=int, default=10)
    args = parser.parse_args()

    from ray import serve

    from inferencesh_ray.builder import build
    from inferencesh_ray.local_ray import start_ray

    start_ray(num_cpus=4)
    serve.start(http_options={"host": "127.0.0.1", "port": PROXY_PORT})
    data = tempfile.mkdtemp(prefix="infsh-session-bench-")
    serve.run(build({"path": str(HERE / "apps" / "noop.py"), "name": "noop", "data_dir": data,
                     "listen": f"127.0.0.1:{LISTEN_PORT}"}), name="sessions", route_prefix="/")
    created: dict[str, list[float]] = {}
    with httpx.Client(timeout=60) as client:
        for door, base in DOORS.items():
            created[door] = create_sessions(client, base, args.sessions)
        calls = {}
        for door, base in DOORS.items():
            session = client.post(f"{base}/apps/run", json={"app": "noop", "input": {}, "session": "new"}).json()["data"]
            in_session = {"app": "noop", "input": {}, "session": session["session_id"]}
            calls[(door, "deployment")] = (base, {"app": "noop", "input": {}}, False)
            calls[(door, "session")] = (base, in_session, False)
            calls[(door, "session, keyed")] = (base, in_session, True)
        for base, body, keyed in calls.values():  # warm up each
            for _ in range(20):
                timed_call(client, base, body, keyed)
        print(f"{args.requests} calls on each path, through each door...", file=sys.stderr, flush=True)
        latencies = {key: [] for key in calls}
        for _ in range(args.requests):
            for key, (base, body, keyed) in calls.items():
                latencies[key].append(timed_call(client, base, body, keyed))

    print("| door | deployment p50 / p99 ms | session p50 / p99 ms | session adds at p50 / p99 ms "
          "| session, keyed p50 / p99 ms | the key adds at p50 ms |")
    print("|---|---|---|---|---|---|")
    for door in DOORS:
        deployment, session = latencies[(door, "deployment")], latencies[(door, "session")]
        keyed = latencies[(door, "session, keyed")]
        print(f"| {door} | {statistics.median(deployment):.1f} / {percentile(deployment, 0.99):.1f} "
              f"| {statistics.median(session):.1f} / {percentile(session, 0.99):.1f} "
              f"| {statistics.median(session) - statistics.median(deployment):+.1f} / "
              f"{percentile(session, 0.99) - percentile(deployment, 0.99):+.1f} "
              f"| {statistics.median(keyed):.1f} / {percentile(keyed, 0.99):.1f} "
              f"| {statistics.median(keyed) - statistics.median(session):+.1f} |")
    print()
    print(f"| creating a session (POST until it answers), {args.sessions} per door | median ms | min | max |")
    print("|---|---|---|---|")
    for door, values in created.items():
        print(f"| {door} | {statistics.median(values):.0f} | {min(values):.0f} | {max(values):.0f} |")
    serve.shutdown()


if __name__ == "__main__":
    main()
