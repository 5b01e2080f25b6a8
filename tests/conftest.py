from __future__ import annotations

import os
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def apps() -> Path:
    return APPS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RayServe:
    """The session's one local Ray (loopback, no dashboard) with Serve listening on `port`."""

    port: int
    address: str
    events: Path

    def deploy(self, name: str, **args) -> str:
        """Deploy apps under /<name>; returns the base URL clients use."""
        from ray import serve

        from inferencesh_ray.builder import build
        from inferencesh_ray.serve_command import _wait_routed

        serve.run(build(args), name=name, route_prefix=f"/{name}")
        assert _wait_routed(f"http://127.0.0.1:{self.port}", [name], threading.Event()), f"{name} not routed"
        return f"http://127.0.0.1:{self.port}/{name}"

    def lifecycle(self) -> list[str]:
        """Lifecycle events the counting app's replicas recorded, without their pids."""
        if not self.events.exists():
            return []
        return [line.split(" ", 1)[1] for line in self.events.read_text().splitlines()]


@pytest.fixture(scope="session")
def ray_serve(tmp_path_factory) -> RayServe:
    events = tmp_path_factory.mktemp("lifecycle") / "events.log"
    # Replica processes inherit the environment of the Ray started here.
    os.environ["INFSH_TEST_EVENTS"] = str(events)
    os.environ["INFERENCESH_RAY_DATA_DIR"] = str(tmp_path_factory.mktemp("data"))
    from inferencesh_ray.local_ray import start_ray

    start_ray(num_cpus=8)
    import ray
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield RayServe(port=port, address=ray.get_runtime_context().gcs_address, events=events)
    serve.shutdown()
    ray.shutdown()


@dataclass
class S3Server:
    """A real S3-protocol server (moto's) on 127.0.0.1, with one bucket."""

    endpoint: str
    bucket: str

    @property
    def storage_options(self) -> dict:
        return {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "eu-west-1"}}


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = S3Server(endpoint=f"http://127.0.0.1:{port}", bucket="infsh-test")
    import s3fs

    s3fs.S3FileSystem(**s3.storage_options).mkdir(s3.bucket)
    yield s3
    server.stop()
