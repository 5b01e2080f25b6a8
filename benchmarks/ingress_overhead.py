"""Our task ingress vs a plain Ray Serve FastAPI ingress, on the same no-op function.

    .venv/bin/python benchmarks/ingress_overhead.py [--requests 300] [--concurrency 1 8 32]

Ours: submit + wait exactly as the official client does it (POST /apps/run, GET
/tasks/{id}, then GET /tasks/{id}/stream until the terminal line), with a durable task
record in SQLite. Plain: one POST to a FastAPI ingress deployment that awaits a
deployment handle and returns the result. Same machine, same Ray, same run, the same
aiohttp clients (benchmarks/common.py). CPU per task (Linux), by process: the clients
(this process), the HTTP front (Serve's proxy and the ingress replica), the app's
replica, our task store, and the rest of the machine (Serve's controller, Ray's own
processes, anything else running), which all share its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from fastapi import FastAPI

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import load, run_and_wait  # noqa: E402

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


async def ours_call(base: str, keyed: bool = False):
    """`keyed`: each run carries its own Idempotency-Key, as our client sends them."""
    async def call(client, index: int) -> None:
        headers = {"Idempotency-Key": uuid.uuid4().hex} if keyed else None
        done = await run_and_wait(client, base, {"app": "noop", "input": {"value": index}}, headers)
        assert done["output"] == {"value": index}, done
    return call


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (Linux's /proc/stat), every process included."""
    ticks = [int(field) for field in open("/proc/stat").readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


async def plain_call(base: str):
    async def call(client, index: int) -> None:
        async with client.post(f"{base}/run", json={"value": index}) as response:
            assert (await response.json())["value"] == index
    return call


def direct_ingress(prefix: str) -> str:
    """The URL of the plain app under `prefix` at its replica's own HTTP port (Serve picks one from 30000 up)."""
    import httpx

    for port in range(30000, 30100):
        url = f"http://127.0.0.1:{port}/{prefix}"
        try:
            if httpx.post(f"{url}/run", json={"value": 1}, timeout=2).json() == {"value": 1}:
                return url
        except (httpx.HTTPError, ValueError):
            continue
    raise SystemExit(f"no direct ingress port answers for /{prefix}")


def process_cpu_s() -> dict[int, tuple[str, float]]:
    """pid -> (title, CPU seconds used so far) of each process of the machine (Ray titles its actors' processes)."""
    processes = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat, open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                fields, title = stat.read().rsplit(")", 1)[1].split(), cmdline.read().split(b"\0")[0].decode()
        except OSError:  # gone meanwhile
            continue
        processes[int(pid)] = (title, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))  # utime + stime
    return processes


# Which processes are which part of the server, by the titles Ray gives them; the rest is "rest".
ROLES = {
    "front": ("ray::ProxyActor", "ray::ServeReplica:ours:ingress", "ray::ServeReplica:plain:PlainIngress",
              "ray::ServeReplica:tuned:PlainIngress"),
    "replica": ("ray::ServeReplica:ours:noop", "ray::ServeReplica:plain:Noop", "ray::ServeReplica:tuned:Noop"),
    "store": ("ray::TaskStore",),
}


def server_cpu_s(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds used between two `process_cpu_s` readings by each role of the server."""
    used = dict.fromkeys(ROLES, 0.0)
    for pid, (title, seconds) in after.items():
        role = next((role for role, prefixes in ROLES.items() if title.startswith(prefixes)), None)
        if role is not None:
            used[role] += seconds - before.get(pid, (title, 0.0))[1]
    return used


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--direct-ingress", action="store_true",
                        help="also plain Serve through its direct ingress: its ingress replica serves HTTP itself, "
                             "as ours does with `listen`")
    args = parser.parse_args()
    if args.direct_ingress:  # Serve's own switch, read when Ray starts; start_ray turns it off otherwise
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"

    from inferencesh_ray.local_ray import start_ray

    # Before Serve is imported: the handles built here take its settings (throughput mode) then.
    start_ray(num_cpus=8)  # logical CPUs: every stack's replicas fit at once and share the same cores
    from ray import serve

    from inferencesh_ray.builder import build
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
        "ours, `listen`, Idempotency-Key": ours_call("http://127.0.0.1:8124", keyed=True),
    }
    if args.direct_ingress:
        stacks["plain Serve (defaults), direct ingress"] = plain_call(direct_ingress("plain"))
        stacks["plain Serve (tuned), direct ingress"] = plain_call(direct_ingress("tuned"))
    calls = {name: asyncio.run(factory) for name, factory in stacks.items()}

    print("| c | stack | req/s | p50 / p99 ms | vs defaults | vs tuned "
          "| CPU ms per task: client / front / replica / store / rest |")
    print("|---|---|---|---|---|---|---|")
    for concurrency in args.concurrency:
        print(f"c={concurrency}: {args.requests} requests per stack...", file=sys.stderr, flush=True)
        results, cpu = {}, {}
        for name, call in calls.items():
            asyncio.run(load(call, concurrency, 20))  # warm up
            machine, client, processes = busy_cpu_s(), time.process_time(), process_cpu_s()
            results[name] = asyncio.run(load(call, concurrency, args.requests))
            client = time.process_time() - client
            server = server_cpu_s(processes, process_cpu_s())
            rest = busy_cpu_s() - machine - client - sum(server.values())
            cpu[name] = [client, *server.values(), rest]
        defaults, tuned = results["plain Serve (defaults)"], results["plain Serve (tuned)"]
        for name, result in results.items():
            print(
                f"| {concurrency} | {name} | {result.rps:.0f} | {result.p50:.1f} / {result.p99:.1f} "
                f"| {result.rps / defaults.rps:.2f}x, {result.p50 - defaults.p50:+.1f} ms "
                f"| {result.rps / tuned.rps:.2f}x, {result.p50 - tuned.p50:+.1f} ms "
                f"| {' / '.join(f'{seconds / args.requests * 1000:.1f}' for seconds in cpu[name])} |",
                flush=True,
            )
    serve.shutdown()


if __name__ == "__main__":
    main()
