"""Upload and download of one large file through our ingress vs a plain fsspec copy on the same store.

    .venv/bin/python benchmarks/files_throughput.py [--mb 200] [--rounds 5]

Ours: our client's `files.upload` of the file (`POST /files`, then a `PUT` of its bytes,
streamed from disk, to the upload URL; the time is both), into the local-disk store, then
its `files.download` of the file's URL to a local file: the product's path, as a user's
code takes it; through each door: Serve's HTTP proxy, and the ingress's own listener
(`listen`). Each door has its own application (its own ingress replica), on one data
directory, so one door's memory never shows in the other's.
Plain: `fs.put_file` and `fs.get_file` of the same file with the same fsspec filesystem.
Every transfer starts after an `os.sync()` (the disk's writeback of the one before would
slow it), every transfer writes a new file (as uploads do: a download over an earlier copy
measured the freeing of its pages too, and swung the plain copy from 500 to 3,000 MB/s),
and plain, proxy and listen take turns going first.
Memory: the resident set of the ingress replica (and, through the proxy, of Serve's proxy)
at rest, and its peak (VmHWM, reset before each transfer, the highest of the rounds)
during the upload and during the download: flat means the server streams instead of
buffering. CPU: the seconds each of those processes, and this one (the client), used per
transfer, which says who the limit is.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from inferencesh_ray.client import Inference, UploadFileOptions

HERE = Path(__file__).resolve().parent
CHUNK = 1 << 20
PROXY_PORT, LISTEN_PORT = 8128, 8129
DOORS = {"proxy": f"http://127.0.0.1:{PROXY_PORT}", "listen": f"http://127.0.0.1:{LISTEN_PORT}"}


class Process:
    """One of our Ray's processes (a descendant of this one, found by its title): its memory and CPU time."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.pid = _descendant(os.getpid(), title)
        if self.pid is None:
            raise RuntimeError(f"no process {title!r} under this one")

    def _status(self, field: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field} for {self.title}")

    def rss_mb(self) -> float:
        return self._status("VmRSS")

    def cpu_s(self) -> float:
        """User + system CPU time it has used."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def reset_peak(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux 4.0+)

    def peak_mb(self) -> float:
        return self._status("VmHWM")


def _descendant(root: int, title: str) -> Optional[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    pending = list(children.get(root, []))
    while pending:
        pid = pending.pop()
        try:
            if (Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")).startswith(title):
                return pid
        except OSError:
            pass
        pending.extend(children.get(pid, []))
    return None


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


def ours_upload(client: Inference, source: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    file = client.files.upload(str(source), UploadFileOptions(filename="big.bin"))
    return time.perf_counter() - started, file


def ours_download(client: Inference, file: dict, target: Path) -> float:
    started = time.perf_counter()
    client.files.download(file, target)
    return time.perf_counter() - started


def plain(fs, root: str, source: Path, target: Path, name: str, cpu: dict) -> tuple[float, float]:
    seconds = []
    for what, copy, args in (("upload", fs.put_file, (str(source), f"{root}/{name}")),
                             ("download", fs.get_file, (f"{root}/{name}", str(target)))):
        os.sync()
        started, client_cpu = time.perf_counter(), time.process_time()
        copy(*args)
        seconds.append(time.perf_counter() - started)
        cpu.setdefault(("client", what), []).append(time.process_time() - client_cpu)
    return seconds[0], seconds[1]


def watched(processes: list[Process], peaks: dict, cpu: dict, what: str, transfer, *args):
    """Run `transfer(*args)`; keep the highest peak memory seen per process (reset first), and the CPU time
    each process and this one (the client) used."""
    os.sync()  # every transfer starts with no dirty pages still being written back from the one before
    for process in processes:
        process.reset_peak()
    used = {process.title: process.cpu_s() for process in processes}
    client_cpu = time.process_time()
    result = transfer(*args)
    cpu.setdefault(("client", what), []).append(time.process_time() - client_cpu)
    for process in processes:
        key = (process.title, what)
        peaks[key] = max(peaks.get(key, 0.0), process.peak_mb())
        cpu.setdefault(key, []).append(process.cpu_s() - used[process.title])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from ray import serve

    from inferencesh_ray.builder import build
    from inferencesh_ray.local_ray import start_ray
    from inferencesh_ray.storage import FileStore

    work = Path(tempfile.mkdtemp(prefix="infsh-files-bench-"))
    start_ray(num_cpus=4)
    serve.start(http_options={"host": "127.0.0.1", "port": PROXY_PORT})
    common = {"path": str(HERE / "apps" / "noop.py"), "name": "noop", "data_dir": str(work / "data"),
              "max_file_bytes": (args.mb + 1) * CHUNK}
    serve.run(build(common), name="files-proxy", route_prefix="/")
    serve.run(build({**common, "listen": f"127.0.0.1:{LISTEN_PORT}"}), name="files-listen", route_prefix="/listen-app")
    store = FileStore((work / "data" / "files").as_uri())
    source = work / "source.bin"
    print(f"writing a {args.mb} MB file...", file=sys.stderr, flush=True)
    digest = make_file(source, args.mb)
    watch = {"proxy": [Process("ray::ServeReplica:files-proxy:ingress"), Process("ray::ProxyActor")],
             "listen": [Process("ray::ServeReplica:files-listen:ingress")]}  # the proxy is not on its path
    at_rest = {door: {p.title: p.rss_mb() for p in processes} for door, processes in watch.items()}
    peaks: dict = {}
    cpu: dict[str, dict] = {"plain": {}, **{door: {} for door in DOORS}}
    times: dict[str, list[tuple[float, float]]] = {"plain": [], **{door: [] for door in DOORS}}
    clients = {door: Inference(base_url=base, timeout=600) for door, base in DOORS.items()}
    try:
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}/{args.rounds}...", file=sys.stderr, flush=True)
            order = ["plain", *DOORS]
            for what in order[round_ % 3:] + order[:round_ % 3]:  # each goes first in turn
                target = work / f"downloaded-{what}-{round_}.bin"  # a new file every time, as uploads write
                if what == "plain":
                    times["plain"].append(plain(store.fs, store.root, source, target, f"plain-{round_}", cpu["plain"]))
                    continue
                client = clients[what]
                upload_s, file = watched(watch[what], peaks, cpu[what], "upload", ours_upload, client, source)
                download_s = watched(watch[what], peaks, cpu[what], "download", ours_download, client, file, target)
                times[what].append((upload_s, download_s))
                assert sha256_of(target) == digest, f"the file downloaded through {what} differs"
    finally:
        for client in clients.values():
            client.close()

    def rate(seconds: list[float]) -> float:
        return args.mb / statistics.median(seconds)

    print(f"| {args.mb} MB, median of {args.rounds} | plain fsspec MB/s | " +
          " | ".join(f"{door} MB/s | {door} / plain" for door in DOORS) + " |")
    print("|---|---|" + "---|---|" * len(DOORS))
    for index, what in enumerate(("upload", "download")):
        plain_rate = rate([t[index] for t in times["plain"]])
        cells = [f"{rate([t[index] for t in times[door]]):.0f} | {rate([t[index] for t in times[door]]) / plain_rate:.2f}x"
                 for door in DOORS]
        print(f"| {what} | {plain_rate:.0f} | " + " | ".join(cells) + " |")
    print()
    print("| door | process | at rest (VmRSS) MB | peak during upload MB | peak during download MB |")
    print("|---|---|---|---|---|")
    for door, processes in watch.items():
        for process in processes:
            name = process.title.removeprefix("ray::")
            print(f"| {door} | {name} | {at_rest[door][process.title]:.0f} | {peaks[(process.title, 'upload')]:.0f} "
                  f"| {peaks[(process.title, 'download')]:.0f} |")
    print()
    print(f"| CPU seconds per {args.mb} MB transfer, median | upload | download |")
    print("|---|---|---|")
    for door, processes in [("plain", []), *watch.items()]:
        for title in ["client", *(process.title for process in processes)]:
            name = "client (this process)" if title == "client" else title.removeprefix("ray::")
            print(f"| {door}: {name} | {statistics.median(cpu[door][(title, 'upload')]):.2f} "
                  f"| {statistics.median(cpu[door][(title, 'download')]):.2f} |")
    serve.shutdown()
    shutil.rmtree(work, ignore_errors=True)  # the file and its copies: gigabytes after a few rounds


if __name__ == "__main__":
    main()
