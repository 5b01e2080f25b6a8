"""Start (or join) the Ray that the framework runs on.

A Ray the framework starts itself listens on 127.0.0.1 only, with no dashboard and so
no job submission API: the ingress is the only door. To join a cluster instead, pass
its address (or set RAY_ADDRESS).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

# Ray maps a node IP of 127.0.0.1 to this machine's routable address unless it believes
# it runs outside a cluster; say so before Ray is imported, for this process and the
# raylet, agents and workers it starts.
_SINGLE_NODE = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# Serve's own throughput settings (user code and router on the replica's main event loop,
# gRPC between deployments, fewer log writes): on 2 cores a task's submit + wait at c=32
# went from 77 to 117 per second. Set it to 0 in the environment to keep Serve's defaults.
# Not its direct ingress, which it would turn on too: with it a replica's shutdown outlasts
# Serve's own 30 s wait, and apps are killed before their `unload` runs.
_THROUGHPUT = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
    # Actor-call arguments and results up to 1 MiB travel in the call, not through the object
    # store: a task with 32 embeddings (~110 KB pickled) crossed it twice per store write.
    "RAY_max_direct_call_object_size": str(1 << 20),
    # Serve's gRPC between deployments refuses messages over 4 MiB by default: a task's input
    # (up to max_request_bytes) or its output (4,096 embeddings are ~14 MB) would fail.
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str((1 << 31) - 1),
}


def start_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> bool:
    """Connect to `address` (or $RAY_ADDRESS), else start a private loopback Ray; True if we started it."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        os.environ.update(_SINGLE_NODE)
        for name, value in _THROUGHPUT.items():
            os.environ.setdefault(name, value)
    import ray
    from ray._private import ray_constants

    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    ray_constants.ENABLE_RAY_CLUSTER = False  # in case Ray was imported before us
    ray.init(address="local", include_dashboard=False, num_cpus=num_cpus, log_to_driver=True)
    return True


def stop_ray(serve_too: bool = False) -> None:
    """Stop the Ray we started. Serve's apps (`serve_too`) and the live sessions end first, their
    apps unloaded: killed with Ray, they would not unload. Ctrl-C or SIGTERM meanwhile stops Ray at once."""
    import ray

    from .session_worker import end_all_sessions

    try:
        with _signals_interrupt():
            if serve_too:
                from ray import serve

                serve.shutdown()
            if ended := end_all_sessions():
                print(f"ended {ended} live session(s)", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("stopping Ray now: apps still unloading are stopped with it", file=sys.stderr, flush=True)
    ray.shutdown()


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """In the block, Ctrl-C and SIGTERM raise KeyboardInterrupt, whatever handlers were set (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def pin_replica_grpc_to_node_address() -> None:
    """Bind this Serve replica's inter-deployment gRPC server to the node's address, not every interface.

    Ray Serve 2.60 replicas listen on `[::]:0` whatever the node's address, so even a Ray
    bound to 127.0.0.1 would answer on the machine's other addresses. Called from our
    deployments' constructors, which Serve runs before it starts that server. A Ray
    without that hook (another version) is left as it is.
    """
    import ray
    from ray.serve._private import replica

    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "pinned", False):
        return
    node_ip = ray.util.get_node_ip_address()
    host = f"[{node_ip}]" if ":" in node_ip else node_ip

    def pinned(server, address: str):
        if address.startswith("[::]:"):
            address = f"{host}:{address.rsplit(':', 1)[1]}"
        return original(server, address)

    pinned.pinned = True
    replica.add_port_to_grpc_server = pinned


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m inferencesh_ray.local_ray COMMAND...`: run COMMAND on a private loopback Ray, then stop that Ray.

    `make serve` runs `serve run CONFIG` this way: Serve's own CLI, but on a Ray that
    listens on 127.0.0.1 only and has no dashboard, and that goes away with the command.
    """
    command = sys.argv[1:] if argv is None else argv
    if not command:
        print("usage: python -m inferencesh_ray.local_ray COMMAND [ARGS...]", file=sys.stderr)
        return 2
    joined = os.environ.pop("RAY_ADDRESS", None)
    if joined:
        print(f"ignoring RAY_ADDRESS={joined}: this runs on a Ray of its own (to deploy on that cluster, "
              "run the command without `-m inferencesh_ray.local_ray`)", file=sys.stderr, flush=True)
    print("starting Ray on 127.0.0.1 (no dashboard)...", file=sys.stderr, flush=True)
    start_ray()
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    try:
        # COMMAND runs in a session of its own, so a terminal's Ctrl-C reaches us alone and we pass
        # it on, as we do SIGINT and SIGTERM sent to us: `serve run` shuts down cleanly (unloading
        # apps) on Ctrl-C only, and a second one would cut that short. A shell that starts us in
        # the background ignores SIGINT; COMMAND must not inherit that.
        process = subprocess.Popen(command, env=env, start_new_session=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: process.send_signal(signal.SIGINT))
        return process.wait()
    finally:
        print("ending live sessions, if any (their apps unload), then stopping Ray (Ctrl-C: stop it now)...",
              file=sys.stderr, flush=True)
        stop_ray()


if __name__ == "__main__":
    sys.exit(main())
