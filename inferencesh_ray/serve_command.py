"""`infsh-ray serve PATH|CONFIG.yaml`: serve apps on a local (or given) Ray until Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from .auth import ENV_KEYS, is_loopback, load_keys
from .errors import AppError
from .listener import parse_address

ROUTE_WAIT_S = 60


def serve_forever(
    target: str,
    *,
    name: Optional[str],
    host: Optional[str],
    port: Optional[int],
    replicas: Optional[int],
    resources: Optional[dict[str, Optional[float]]] = None,
    address: Optional[str],
    data_dir: Optional[str],
    storage: Optional[str],
    api_keys_file: Optional[str],
    listen: Optional[str] = None,
) -> int:
    config = _read_config(Path(target)) if Path(target).suffix in (".yaml", ".yml") else None
    if config is not None:  # its own http_options and `args`, unless the command line says otherwise
        given = config.http_options.model_fields_set
        host = host or (config.http_options.host if "host" in given else None)
        port = port or (config.http_options.port if "port" in given else None)
        apps = [app.args if isinstance(app.args, dict) else {} for app in config.applications]
    else:
        apps = [{"api_keys_file": api_keys_file, "listen": listen}]
    host, port = host or "127.0.0.1", port or 8000
    listens = [args["listen"] for args in apps if args.get("listen")]
    if not check_keys(apps, host):
        _say(f"no API keys configured: answering requests from this machine only ({host} is loopback)")
    if config is None:
        _check_app(target)

    from .local_ray import start_ray, stop_ray

    address = address or os.environ.get("RAY_ADDRESS")
    _say("starting Ray on 127.0.0.1 (no dashboard)..." if not address else f"joining Ray at {address}...")
    started = start_ray(address)
    from ray import serve  # after start_ray, which sets Serve's throughput mode in the environment
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    names: list[str] = []
    try:
        if config is not None:
            names = _deploy_config(config, host, port)
            routed = _routed_names(config)
        else:
            args = {"path": target, "name": name, "num_replicas": replicas, "api_keys_file": api_keys_file,
                    "storage": storage, "listen": listen, "data_dir": data_dir, **(resources or {})}
            names = routed = [_deploy_path(host, port, {key: value for key, value in args.items() if value is not None})]
        proxy = _running_proxy(host, port)
        if not _wait_running(names, stop):
            return 1
        if proxy and not _wait_routed(proxy, routed, stop):
            if stop.is_set():
                return 1
            unrouted = f"Serve's proxy at {proxy} did not route {', '.join(routed)} within {ROUTE_WAIT_S} s"
            if started:
                _say(f"error: {unrouted}")
                return 1
            # On a joined cluster this machine may have no proxy of its own: the apps run all the same.
            _say(f"warning: {unrouted}; serving on (this machine may have no proxy: try a node's that has)")
        where = " and, without Serve's proxy, ".join(([proxy] if proxy else []) + [f"http://{door}" for door in listens])
        where = f"at {where} (API docs: /docs)" if where else "with no HTTP door (Serve's proxy is disabled, no `listen`)"
        _say(f"serving {', '.join(names)} {where}; Ctrl-C to stop")
        stop.wait()
        _say("shutting down: unloading apps" + (" and ending live sessions (up to 30 s; Ctrl-C: stop now)..."
                                                if started else "..."))
        return 0
    finally:
        if started:
            stop_ray(serve_too=True)
        else:
            # On a shared cluster, take down only what this command deployed.
            for app_name in names:
                serve.delete(app_name)
        _say("stopped.")


def check_keys(apps: list[dict[str, Any]], host: str) -> bool:
    """Refuse to serve an app off this machine (through Serve's proxy on `host`, or its own
    `listen` door) with no API key to guard it; True when every app has keys.

    `apps` are the apps' `args` (`api_keys_file`, `listen`); keys also come from the environment.
    """
    guarded = True
    for args in apps:
        keys_file = args.get("api_keys_file")
        try:
            keys = load_keys(keys_file)
        except OSError as exc:
            raise AppError(f"api_keys_file: cannot read {keys_file}: {exc.strerror}") from exc
        for bound in [host] + ([parse_address(args["listen"])[0]] if args.get("listen") else []):
            if not keys and not is_loopback(bound):
                raise AppError(
                    f"refusing to listen on {bound} with no API keys: set {ENV_KEYS} or an api_keys_file "
                    "(--api-keys-file for an app path, in the app's `args:` for a config), or bind 127.0.0.1"
                )
        guarded = guarded and bool(keys)
    return guarded


def _check_app(target: str) -> None:
    """Fail before Ray starts when the app itself is broken."""
    from .discovery import discover
    from .loader import load_app

    if not discover(load_app(target).app_cls).functions:
        raise AppError(f"cannot serve {target}: no functions found (run `infsh-ray app validate --verbose`)")


def _deploy_path(host: str, port: int, given: dict[str, Any]) -> str:
    from ray import serve

    from .builder import ServeArgs, build

    args = ServeArgs(**given)
    app_name = args.apps[0].name or _default_name(given["path"])
    serve.start(http_options={"host": host, "port": port})
    serve.run(build(args), name=app_name, route_prefix="/")
    return app_name


def _default_name(target: str) -> str:
    from .loader import load_app

    return load_app(target).name


def _read_config(path: Path) -> Any:
    """A Serve config file, validated (a ServeDeploySchema)."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))


def _deploy_config(config: Any, host: str, port: int) -> list[str]:
    """Deploy a Serve config (from `_read_config`) the way `serve run` does, on our Ray and address."""
    from ray.serve._private import api as serve_api
    from ray.serve.config import gRPCOptions

    http = {**config.http_options.model_dump(), "host": host, "port": port}
    client = serve_api.serve_start(
        http_options=http,
        proxy_location=config.proxy_location,
        grpc_options=gRPCOptions(**config.grpc_options.model_dump()),
    )
    client.deploy_apps(config, _blocking=False)
    return [app.name for app in config.applications]


def _wait_running(names: list[str], stop: threading.Event, timeout_s: float = 600) -> bool:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline and not stop.is_set():
        apps = serve.status().applications
        states = {name: (apps[name].status if name in apps else "NOT_STARTED") for name in names}
        if states != last:
            _say("deploying: " + ", ".join(f"{n} {s}" for n, s in states.items()))
            last = states
        failed = [name for name in names if name in apps and apps[name].status == "DEPLOY_FAILED"]
        if failed:
            for name in failed:
                _say(f"error: {name} failed to deploy: {failure_of(name)}")
            return False
        if all(state == "RUNNING" for state in states.values()):
            return True
        time.sleep(0.5)
    if not stop.is_set():
        _say(f"error: not running after {timeout_s:.0f} s")
    return False


def failure_of(app: str) -> str:
    """Why Serve says `app` failed: its own message ("Failed to update the deployments [...]")
    and each unhealthy deployment's, which holds the replica's error."""
    from ray import serve

    application = serve.status().applications[app]
    failing = [f"{name}: {deployment.message}" for name, deployment in application.deployments.items()
               if deployment.status != "HEALTHY" and deployment.message]
    return "\n".join([application.message, *failing])


def _wait_routed(proxy: str, names: list[str], stop: threading.Event, timeout_s: float = ROUTE_WAIT_S) -> bool:
    """Wait until Serve's proxy at `proxy` routes every app in `names`: an app is RUNNING before
    the proxy has its route, and until then a request there is a 404."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while names and time.monotonic() < deadline and not stop.is_set():
        try:
            response = httpx.get(f"{proxy}/-/routes", timeout=5, trust_env=False)  # never through HTTP_PROXY
            if response.status_code == 200 and set(names) <= set(response.json().values()):
                return True
        except (httpx.HTTPError, ValueError):
            pass  # the proxy is still starting
        time.sleep(0.2)
    return not names


def _routed_names(config: Any) -> list[str]:
    """The config's apps that Serve's HTTP proxy routes to."""
    return [app.name for app in config.applications if app.route_prefix is not None]


def _running_proxy(host: str, port: int) -> Optional[str]:
    """Where this machine reaches Serve's HTTP proxy, or None when it has none. Serve already
    running on a joined Ray keeps its own host and port, whatever this command asked for."""
    import ray
    from ray.serve.config import ProxyLocation
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if ray.get(client._controller.get_proxy_location.remote()) in (None, ProxyLocation.Disabled):
        return None
    running = client.http_config
    if (running.host, running.port) != (host, port):
        _say(f"note: Serve is already running on this Ray with its proxy on {running.host}:{running.port}; "
             "that address is kept (`serve shutdown` to change it)")
    return _proxy_url(running.host, running.port)


def _proxy_url(host: str, port: int) -> str:
    """Where this machine reaches a proxy bound to `host`."""
    host = host.strip("[]")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
