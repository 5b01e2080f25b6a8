"""Build the Serve application: one deployment per app, behind one ingress.

The same builder serves `serve run deployments/<x>.yaml` (as its `import_path`, with
`args`) and `infsh-ray serve PATH`. It loads each app once here, so a broken app fails
the deploy with a clear message instead of a replica crash loop, and hands the
ingress each app's functions schema so the ingress never imports app code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, Field, field_validator, model_validator
from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from .catalog import LATEST
from .discovery import discover
from .dispatch import MAX_QUEUED_TASKS
from .errors import AppError
from .ingress import Ingress
from .listener import parse_address
from .loader import load_app
from .middleware import MAX_REQUEST_BYTES
from .replica import AppReplica
from .routing import WarmRouter
from .schema import functions_schema
from .server_files import FilesConfig
from .storage import FileStore, default_root

DATA_DIR_ENV = "INFERENCESH_RAY_DATA_DIR"
# Serve's default (5) makes its router spill a warm config's requests onto a replica set up
# with another config as soon as the warm one holds 5, and that replica then sets up again;
# a burst turns into a cascade of setups. Tasks wait on their warm replica instead.
# A config's `deployments:` entry overrides it.
APP_MAX_ONGOING_REQUESTS = 32
WARM_ROUTING = RequestRouterConfig(request_router_class=WarmRouter)
INGRESS_NAME = "ingress"


class AppSpec(BaseModel):
    path: str = Field(description="App directory, .py file or package.module:Class")
    name: Optional[str] = Field(None, description="App name clients use; default: the directory's, `_` as `-`")
    version: str = Field(LATEST, description="The version clients may name as app@version")
    batching: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per @batched function, settings over the decorator's: {embed: {max_batch_size: 64, max_wait_ms: 10}}",
    )


class ServeArgs(BaseModel):
    """The `args:` of a Serve config whose import_path is `inferencesh_ray:build`."""

    apps: list[AppSpec] = Field(default_factory=list, description="The apps to serve")
    path: Optional[str] = Field(None, description="Shorthand for one app: its path")
    name: Optional[str] = Field(None, description="Shorthand for one app: its name")
    data_dir: str = Field(
        default_factory=lambda: os.environ.get(DATA_DIR_ENV, "~/.inferencesh_ray"),
        description="Where the task database lives by default ($INFERENCESH_RAY_DATA_DIR, else ~/.inferencesh_ray)",
    )
    database: Optional[str] = Field(None, description="SQLite file of the task store (default: DATA_DIR/tasks.sqlite3)")
    task_retention_s: float = Field(7 * 24 * 3600, gt=0, description="Finished tasks, and sessions ended, longer ago than this are pruned")
    task_lease_s: float = Field(
        20.0, gt=0, description="A task whose ingress stops renewing its lease this long is ended FAILED"
    )
    api_keys_file: Optional[str] = Field(None, description="File of API keys, one per line (plus $INFERENCESH_RAY_API_KEYS)")
    storage: Optional[str] = Field(
        None, description="Storage root URL for files: file:///... or s3://bucket/prefix (default: DATA_DIR/files)"
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options of the storage, e.g. {client_kwargs: {endpoint_url: ...}}"
    )
    max_file_bytes: int = Field(1 << 30, gt=0, description="Largest file an upload or an input URL may bring")
    max_request_bytes: int = Field(
        MAX_REQUEST_BYTES, gt=0, description="Largest request body (a run request with data: URIs); more is 413"
    )
    file_url_ttl_s: float = Field(7 * 24 * 3600, gt=0, description="How long a signed file URL stays valid")
    allow_remote_urls: bool = Field(False, description="Let file inputs be http(s) URLs of other servers")
    allow_private_urls: bool = Field(
        False, description="With allow_remote_urls: also loopback, private and link-local addresses"
    )
    public_url: Optional[str] = Field(
        None, description="This server's URL as clients reach it, for file URLs (default: the URL each request came to)"
    )
    max_sessions: int = Field(32, ge=1, description="Live sessions at most (each holds a worker); more get 429")
    max_queued_tasks: int = Field(
        MAX_QUEUED_TASKS, ge=1,
        description="Unfinished tasks (queued or running) of one app that one ingress replica holds at most; more get 429",
    )
    num_replicas: Optional[int] = Field(
        None, ge=1, description="Replicas of each app's deployment; a config's `deployments:` entry overrides it"
    )
    num_cpus: Optional[float] = Field(
        None, ge=0, description="CPUs each app replica (and session worker) reserves (Serve's default: 1); "
        "a config's `deployments:` entry overrides it",
    )
    num_gpus: Optional[float] = Field(
        None, ge=0, description="GPUs each app replica (and session worker) reserves (default 0); a fraction shares one",
    )
    listen: Optional[str] = Field(
        None,
        description="HOST:PORT where the ingress serves the API itself, without Serve's proxy (~4x less per request); "
        "one ingress replica per node",
    )

    @field_validator("listen")
    @classmethod
    def _address(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            parse_address(value)
        return value

    @field_validator("api_keys_file")
    @classmethod
    def _keys_file(cls, value: Optional[str]) -> Optional[str]:
        """The ingress may start in another directory: pin the file now, and miss it now, not there."""
        if value is None:
            return None
        path = Path(value).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"no such file: {value} (a relative path starts where `serve run` runs)")
        return str(path)

    @model_validator(mode="after")
    def _one_or_more_apps(self) -> "ServeArgs":
        if self.path:
            self.apps = [AppSpec(path=self.path, name=self.name), *self.apps]
        if not self.apps:
            raise ValueError("no app to serve: give `path` (one app) or `apps` (a list of {path, name})")
        return self

    def database_path(self) -> str:
        return str(Path(os.path.expanduser(self.database or Path(self.data_dir) / "tasks.sqlite3")).resolve())

    def files_config(self) -> FilesConfig:
        """The file settings, with the URL-signing key read (or made, once) in the storage."""
        root = self.storage or default_root(self.data_dir)
        return FilesConfig(
            root=root,
            options=self.storage_options,
            signing_key=FileStore(root, self.storage_options).signing_key(),
            url_ttl_s=self.file_url_ttl_s,
            max_file_bytes=self.max_file_bytes,
            allow_remote_urls=self.allow_remote_urls,
            allow_private_urls=self.allow_private_urls,
            public_url=self.public_url,
        )


def build(args: ServeArgs) -> Application:
    """The Serve application for `args` (Serve validates a config's `args:` into ServeArgs)."""
    if isinstance(args, dict):
        args = ServeArgs.model_validate(args)
    infos, handles = [], {}
    files = args.files_config()
    for spec in args.apps:
        path = _absolute(spec.path)
        try:
            loaded = load_app(path)
        except AppError as exc:
            raise AppError(f"cannot serve {spec.path}: {exc}") from exc
        name = spec.name or loaded.name
        try:
            discovery = discover(loaded.app_cls).with_batching(spec.batching)
        except AppError as exc:
            raise AppError(f"cannot serve {spec.path}: {exc}") from exc
        if not discovery.functions:
            raise AppError(f"cannot serve {spec.path}: no functions found (run `infsh-ray app validate --verbose`)")
        if name in handles:
            raise AppError(f"two apps are named {name!r}; give one a different `name`")
        infos.append({"name": name, "version": spec.version, "schema": functions_schema(discovery), "path": path,
                      "setup_takes_config": discovery.setup.takes_config,
                      "batching": spec.batching})
        options: dict[str, Any] = {"num_replicas": args.num_replicas} if args.num_replicas else {}
        resources = {key: value for key, value in (("num_cpus", args.num_cpus), ("num_gpus", args.num_gpus))
                     if value is not None}
        if resources:
            options["ray_actor_options"] = resources
        handles[name] = serve.deployment(
            AppReplica, name=name, max_ongoing_requests=APP_MAX_ONGOING_REQUESTS, request_router_config=WARM_ROUTING,
            **options,
        ).bind(path, name, files, spec.batching)
    ingress = serve.deployment(Ingress, name=INGRESS_NAME, max_ongoing_requests=1000)
    state = {"database": args.database_path(), "retention_s": args.task_retention_s, "lease_s": args.task_lease_s,
             "max_sessions": args.max_sessions, "max_queued_tasks": args.max_queued_tasks, "listen": args.listen}
    return ingress.bind(infos, handles, state, files, args.api_keys_file, args.max_request_bytes)


def _absolute(path: str) -> str:
    """Replicas may start in another directory: pin file paths now, keep module refs as they are."""
    target, sep, cls = path.partition(":") if not Path(path).exists() else (path, "", "")
    if Path(target).exists():
        return str(Path(target).resolve()) + sep + cls
    return path
