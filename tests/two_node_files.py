"""A 2-node Ray cluster on loopback: a file uploaded through the head node's ingress is read
by a replica on the other node, both through one S3-protocol store.

    python tests/two_node_files.py S3_ENDPOINT BUCKET PORT

`test_serving_files.py` runs it in a process of its own, since the test session already
holds a Ray. It prints one JSON line: the nodes and what the replica read.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

# Both nodes on 127.0.0.1: Ray must not swap loopback for this machine's other address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import ray  # noqa: E402
import yaml  # noqa: E402
from inferencesh import UploadFileOptions, inference  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from inferencesh_ray.serve_command import _deploy_config, _read_config, _wait_routed, _wait_running  # noqa: E402

APPS = Path(__file__).resolve().parent / "apps"


def main(endpoint: str, bucket: str, port: int) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={
        "node_ip_address": "127.0.0.1", "include_dashboard": False, "num_cpus": 2, "resources": {"head": 1}})
    worker = cluster.add_node(node_ip_address="127.0.0.1", num_cpus=2, resources={"worker": 1})
    ray.init(address=cluster.address)
    data = tempfile.mkdtemp(prefix="two-node-")
    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint, "region_name": "eu-west-1"}}
    config = {
        # Both nodes share 127.0.0.1, where a second proxy would share the port (SO_REUSEPORT).
        "proxy_location": "HeadOnly",
        "applications": [{
            "name": "two-node",
            "route_prefix": "/",
            "import_path": "inferencesh_ray:build",
            "args": {"path": str(APPS / "file_app.py"), "data_dir": data,
                     "storage": f"s3://{bucket}/two-node", "storage_options": options},
            "deployments": [
                {"name": "file-app", "ray_actor_options": {"resources": {"worker": 1}}},
                {"name": "ingress", "ray_actor_options": {"resources": {"head": 1}}},
            ],
        }],
    }
    path = Path(data) / "two-node.yaml"
    path.write_text(yaml.safe_dump(config))
    names = _deploy_config(_read_config(path), "127.0.0.1", port)
    assert _wait_running(names, threading.Event(), timeout_s=180), "not running"
    assert _wait_routed(f"http://127.0.0.1:{port}", names, threading.Event()), "not routed"
    blob = bytes(range(256)) * 16
    sdk = inference(api_key="k", base_url=f"http://127.0.0.1:{port}")
    uploaded = sdk.files.upload(blob, UploadFileOptions(filename="cross.bin"))
    where = sdk.run({"app": "file-app:where", "input": {"image": uploaded["uri"]}})["output"]
    print(json.dumps({
        "head": cluster.head_node.node_id,
        "worker": worker.node_id,
        "read_on": where["node_id"],
        "same_bytes": where["sha256"] == hashlib.sha256(blob).hexdigest(),
    }), flush=True)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
