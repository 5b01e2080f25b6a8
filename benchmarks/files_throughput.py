"""Upload and download of one large file through our ingress vs a plain fsspec copy on the same store.

    .venv/bin/python benchmarks/files_throughput.py [--mb 200] [--rounds 3]

Ours: `POST /files`, then a streamed `PUT` of the bytes to the upload URL (as the official
client does it, but streamed from disk), then a streamed `GET` of the file's URL to a
local file; through Serve's HTTP proxy and the ingress replica, into the local-disk store.
Plain: `fs.put_file` and `fs.get_file` of the same file with the same fsspec filesystem.
Memory: the peak resident set (VmHWM) of the ingress replica and of Serve's proxy, before
and after the transfers: flat means the server streams instead of buffering.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
CHUNK = 1 << 20


def peak_rss_mb(pattern: str) -> float:
    """Peak resident memory (VmHWM) of the process whose title matches `pattern`."""
    pid = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()[0]
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pattern}")


def make_file(path: Path, megabytes: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for _ in range(megabytes):
            block = os.urandom(CHUNK)
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def ours_upload(client: httpx.Client, base: str, source: Path) -> tuple[float, dict]:
    size = source.stat().st_size

    def chunks():
        with open(source, "rb") as handle:
            while block := handle.read(CHUNK):
                yield block

    file = client.post(f"{base}/files", json={"files": [{"filename": "big.bin", "size": size}]}).json()["data"][0]
    started = time.perf_counter()
    client.put(file["upload_url"], content=chunks(), headers={"content-length": str(size)}).raise_for_status()
    return time.perf_counter() - started, file


def ours_download(client: httpx.Client, file: dict, target: Path) -> float:
    started = time.perf_counter()
    with client.stream("GET", file["uri"]) as response, open(target, "wb") as out:
        response.raise_for_status()
        for block in response.iter_bytes(CHUNK):
            out.write(block)
    return time.perf_counter() - started


def plain(fs, root: str, source: Path, target: Path, name: str) -> tuple[float, float]:
    started = time.perf_counter()
    fs.put_file(str(source), f"{root}/{name}")
    upload_s = time.perf_counter() - started
    started = time.perf_counter()
    fs.get_file(f"{root}/{name}", str(target))
    return upload_s, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from ray import serve

    from inferencesh_ray.builder import build
    from inferencesh_ray.local_ray import start_ray
    from inferencesh_ray.storage import FileStore

    work = Path(tempfile.mkdtemp(prefix="infsh-files-bench-"))
    start_ray(num_cpus=4)
    serve.start(http_options={"host": "127.0.0.1", "port": 8124})
    serve.run(build({"path": str(HERE / "apps" / "noop.py"), "name": "noop", "data_dir": str(work / "data"),
                     "max_file_bytes": (args.mb + 1) * CHUNK}), name="files", route_prefix="/")
    base = "http://127.0.0.1:8124"
    store = FileStore((work / "data" / "files").as_uri())
    source, target = work / "source.bin", work / "target.bin"
    print(f"writing a {args.mb} MB file...", file=sys.stderr, flush=True)
    digest = make_file(source, args.mb)
    processes = {"ingress replica": "ServeReplica:files:ingress", "Serve proxy": "ProxyActor"}
    memory = [("before", {name: peak_rss_mb(pattern) for name, pattern in processes.items()})]
    rows = {"ours": [], "plain": []}
    with httpx.Client(timeout=600) as client:
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}/{args.rounds}...", file=sys.stderr, flush=True)
            rows["plain"].append(plain(store.fs, store.root, source, target, f"plain-{round_}"))
            upload_s, file = ours_upload(client, base, source)
            if round_ == 0:
                memory.append(("after 1 upload", {name: peak_rss_mb(p) for name, p in processes.items()}))
            download_s = ours_download(client, file, target)
            if round_ == 0:
                memory.append(("after 1 download", {name: peak_rss_mb(p) for name, p in processes.items()}))
            rows["ours"].append((upload_s, download_s))
            assert sha256_of(target) == digest, "the downloaded file differs"

    def rate(seconds: list[float]) -> float:
        return args.mb / statistics.median(seconds)

    print(f"| {args.mb} MB, median of {args.rounds} | plain fsspec MB/s | ours MB/s | ours / plain |")
    print("|---|---|---|---|")
    for index, what in enumerate(("upload", "download")):
        ours_rate = rate([r[index] for r in rows["ours"]])
        plain_rate = rate([r[index] for r in rows["plain"]])
        print(f"| {what} | {plain_rate:.0f} | {ours_rate:.0f} | {ours_rate / plain_rate:.2f}x |")
    print()
    print("| peak RSS (VmHWM), MB | " + " | ".join(processes) + " |")
    print("|---|" + "---|" * len(processes))
    for when, values in memory:
        print(f"| {when} | " + " | ".join(f"{values[name]:.0f}" for name in processes) + " |")
    serve.shutdown()


if __name__ == "__main__":
    main()
