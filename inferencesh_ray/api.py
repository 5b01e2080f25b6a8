"""The HTTP API: routing, auth, validation and NDJSON streams.

It stays thin: it translates HTTP to the catalog (which app, is the input valid), the
dispatcher (start or cancel a task) and its recent tasks (read or watch a task), and
speaks the wire protocol of the official `inferencesh` SDK 0.36. It needs no Ray, so
it is tested with an in-process store and app host as well as on Ray.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from .auth import Auth
from .catalog import AppCatalog, AppInfo
from .dispatch import Dispatcher, Saturated
from .envelope import envelope
from .file_access import FileScope
from .files_api import files_router
from .host import Call
from .idempotency import HEADER, REPLAYED_HEADER, OneAtATime, check_same_request, key_of, task_id_for
from .json_codec import may_need_checking, request_problem
from .middleware import MAX_REQUEST_BYTES, BodyLimit, CollapseSlashes
from .problems import ApiProblem, invalid_fields, not_found
from .refs import parse_ref
from .server_files import ServerFiles
from .sessions_api import Sessions, check_session_request
from .store import TaskExists
from .task_files import task_files_router
from .task_stream import RESEND_IDLE_S, task_lines
from .writes import StoreUnavailable

_log = logging.getLogger(__name__)


class RunRequest(BaseModel):
    """`POST /apps/run`, as the official SDK sends it. Unknown keys are ignored."""

    model_config = ConfigDict(extra="allow")

    app: Optional[str] = Field(None, description="[namespace/]name[@version][:function]")
    app_id: Optional[str] = Field(None, description="The app's name, when `app` is not given")
    function: Optional[str] = Field(None, description="The function to run; wins over `app`'s :function suffix")
    input: Optional[dict[str, Any]] = Field(None, description="The function's input")
    setup: Optional[dict[str, Any]] = Field(None, description="Setup config; replicas warm with it serve the task")
    session: Optional[str] = Field(None, description='"new", or a session id')
    session_timeout: Optional[int] = Field(None, description="Idle timeout of a new session, 1-3600 s")
    version_id: Optional[str] = Field(None, description="The app's version, when `app` has no @version")


# Run fields of inference.sh's own platform, which this server has no counterpart for.
_UNSUPPORTED = {
    "run_at": "the task runs now",
    "webhook": "no webhook is called when the task ends",
    "infra": "tasks run on this server's Ray cluster",
    "workers": "tasks run on this server's replicas",
    "metadata": "no action runs when the task ends",
}


def _ignored(body: RunRequest) -> list[dict[str, Any]]:
    """A warning (the envelope's `messages`, which the official SDK hands to `on_message`) per field ignored."""
    given = body.model_extra or {}
    return [
        {"level": "warning", "code": "ignored_field", "meta": {"field": name},
         "message": f"`{name}` is not supported by this server and was ignored: {effect}"}
        for name, effect in _UNSUPPORTED.items()
        if given.get(name) not in (None, "", [], {})
    ]


def create_app(catalog: "AppCatalog", dispatcher: "Dispatcher", auth: "Auth", files: "ServerFiles", sessions: "Sessions",
               max_request_bytes: int = MAX_REQUEST_BYTES, **options: Any) -> Any:
    """The whole ASGI app: the API behind its middleware (`//` paths routed, request bodies limited)."""
    return CollapseSlashes(BodyLimit(create_api(catalog, dispatcher, auth, files, sessions, **options), max_request_bytes))


def create_api(
    catalog: AppCatalog,
    dispatcher: Dispatcher,
    auth: Auth,
    files: ServerFiles,
    sessions: Sessions,
    resend_idle_s: float = RESEND_IDLE_S,
) -> FastAPI:
    api = FastAPI(
        title="inferencesh_ray",
        description="Tasks, apps and streams, wire-compatible with the official inferencesh SDK.",
        version="0.1.0",
    )
    tasks = dispatcher.tasks
    keyed_session_calls = OneAtATime()
    _install_error_handlers(api)

    # async: FastAPI runs a sync dependency in a worker thread, a thread hop on every request.
    async def owner(request: Request) -> str:
        return auth.owner(request.headers.get("authorization"), request.client.host if request.client else None)

    api.include_router(files_router(files, owner))
    api.include_router(sessions.router(owner))
    api.include_router(task_files_router(catalog, dispatcher, files, owner))

    async def run(body: RunRequest, request: Request, caller: str, ref: Optional[str]) -> JSONResponse:
        if may_need_checking(await request.body()):
            for where, value in (("input", body.input), ("setup", body.setup)):
                if problem := request_problem(value, where):
                    raise ApiProblem(400, "invalid_request", problem)
        app, function = catalog.resolve(ref, body.function, body.version_id)
        data, setup, setup_key = catalog.validate(app, function, body.input or {}, body.setup)
        refused = await files.check(app.functions[function]["input_schema"], data, caller)
        if refused:
            raise invalid_fields([{"loc": f"input.{error.loc}", "message": error.message} for error in refused])
        fields = {
            "app_id": app.name,
            "app_version_id": app.version,
            "function": function,
            "input": data,
            "setup": setup,
        }
        metadata = {"app_id": app.name, "app_version_id": app.version}
        call = Call(function, data, setup, metadata, FileScope(caller, files.base_url(request)))
        key = key_of(request.headers)
        if key is None:
            return envelope(await submit(app, body, call, setup_key, fields, uuid.uuid4().hex, caller, keyed=False),
                            messages=_ignored(body))
        task_id = task_id_for(caller, key)
        try:
            return envelope(await submit(app, body, call, setup_key, fields, task_id, caller, keyed=True),
                            messages=_ignored(body))
        except TaskExists:
            task = await tasks.get(task_id, caller)
        except Saturated:  # sent again while its app is full: its task is the answer, if it has one
            task = await tasks.get(task_id, caller)
            if task is None:
                raise
        replayed = await replay(app.functions[function]["input_schema"], task, key, fields, body.session, caller)
        return envelope(replayed, headers={REPLAYED_HEADER: "true"}, messages=_ignored(body))

    async def replay(schema: dict, task: Optional[dict], key: str, fields: dict[str, Any], session: Optional[str],
                     caller: str) -> dict:
        """The task `key` made, for a request sent again; 422 when it is not the same request."""
        if task is None:  # pruned in between: its retention ran out
            raise ApiProblem(409, "idempotency_key_reused", f"the task {HEADER} {key!r} named is no longer kept; "
                             "send the request with a new key")
        first = {**task, "input": await files.identities(schema, task.get("input"), caller)}
        check_same_request(first, {**fields, "input": await files.identities(schema, fields["input"], caller)},
                           session, key)
        return task

    async def submit(app: AppInfo, body: RunRequest, call: Call, setup_key: str, fields: dict[str, Any], task_id: str,
                     caller: str, keyed: bool) -> dict:
        if body.session is None and body.session_timeout is None:
            return await dispatcher.submit(caller, dispatcher.backend(app.name), call, setup_key, fields, task_id,
                                           exclusive=keyed)
        if not keyed:
            return await sessions.submit(dispatcher, caller, app, body.session, body.session_timeout, call, setup_key,
                                         fields, task_id)
        # Sent again, the call must not open or join its session again: one at a time here, and only if new.
        check_session_request(body.session, body.session_timeout)  # as an unkeyed call is, before any replay
        async with keyed_session_calls.hold(task_id):
            await dispatcher.ensure_new(task_id, caller)
            return await sessions.submit(dispatcher, caller, app, body.session, body.session_timeout, call, setup_key,
                                         fields, task_id, exclusive=True)

    @api.post("/apps/run", summary="Run a function of an app; answers at once with the created task")
    async def run_app(body: RunRequest, request: Request, caller: str = Depends(owner)) -> JSONResponse:
        return await run(body, request, caller, body.app or body.app_id)

    @api.post("/v1/apps/{app_id}/run", summary="Run a function of the app named in the path")
    async def run_app_by_path(app_id: str, body: RunRequest, request: Request, caller: str = Depends(owner)) -> JSONResponse:
        return await run(body, request, caller, app_id)

    async def task_or_404(task_id: str, caller: str) -> dict:
        task = await tasks.get(task_id, caller)
        if task is None:
            raise not_found(f"no task {task_id!r}")
        return task

    @api.get("/tasks/{task_id}", summary="The task: status, output, error, logs")
    async def get_task(task_id: str, caller: str = Depends(owner)) -> JSONResponse:
        return envelope(await task_or_404(task_id, caller))

    @api.post("/tasks/{task_id}/cancel", summary="Cancel a task; a no-op (2xx) for a finished task")
    async def cancel_task(task_id: str, caller: str = Depends(owner)) -> JSONResponse:
        task = await dispatcher.cancel(task_id, caller)
        if task is None:
            raise not_found(f"no task {task_id!r}")
        return envelope(task)

    @api.get(
        "/tasks/{task_id}/stream",
        summary="NDJSON: the task now, then on every change, until it ends",
        response_class=StreamingResponse,
    )
    async def stream_task(task_id: str, caller: str = Depends(owner)) -> StreamingResponse:
        await task_or_404(task_id, caller)
        return StreamingResponse(
            task_lines(tasks, task_id, caller, resend_idle_s),
            media_type="application/x-ndjson",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @api.get("/apps", summary="The apps served, with their versions and functions")
    async def list_apps(caller: str = Depends(owner)) -> JSONResponse:
        return envelope(catalog.listing())

    @api.get("/apps/{app}/schema", summary="functions_schema.json of an app")
    async def app_schema(app: str, caller: str = Depends(owner)) -> JSONResponse:
        parsed = parse_ref(app)  # name[@version], as a run names it
        return envelope(catalog.versioned(parsed.name, parsed.version).schema)

    @api.get("/health", summary="Liveness")
    async def health() -> dict:
        return {"status": "ok"}

    return api


def _body_problem(error: str, content_type: Optional[str]) -> ApiProblem:
    """A body that is not there or not an object: what FastAPI calls `body: Field required`."""
    if error == "missing":
        return ApiProblem(400, "invalid_request", "the request has no body; send a JSON object with "
                          "Content-Type: application/json")
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        sent = f"as {media_type!r}" if media_type else "without a Content-Type"
        return ApiProblem(415, "invalid_request", f"the body was sent {sent}, so it was not read as JSON; "
                          "send it with Content-Type: application/json")
    return ApiProblem(422, "validation_error", "the request body must be a JSON object",
                      errors=[{"loc": "body", "message": "must be a JSON object"}])


def _install_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(ApiProblem)
    async def problem(request: Request, exc: ApiProblem) -> Response:
        return exc.response()

    @api.exception_handler(Saturated)
    async def saturated(request: Request, exc: Saturated) -> Response:
        return ApiProblem(429, "rate_limited", str(exc), headers={"retry-after": "1"}).response()

    @api.exception_handler(StoreUnavailable)
    async def unrecorded(request: Request, exc: StoreUnavailable) -> Response:
        _log.warning("the task store could not take a request: %s", exc)
        return ApiProblem(503, "unavailable", "the task store could not take this request; send it again in a moment "
                          f"(a run with an {HEADER}, with the same key: it runs at most once)",
                          headers={"retry-after": "1"}).response()

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        if any(error.get("type") == "json_invalid" for error in errors):
            return ApiProblem(400, "invalid_request", "the request body is not valid JSON").response()
        if [tuple(error["loc"]) for error in errors] == [("body",)]:
            return _body_problem(errors[0]["type"], request.headers.get("content-type")).response()
        fields = [{"loc": ".".join(str(p) for p in e["loc"][1:]) or "body", "message": e["msg"]} for e in errors]
        detail = "invalid request: " + "; ".join(f"{f['loc']}: {f['message']}" for f in fields)
        return ApiProblem(422, "validation_error", detail, errors=fields).response()

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")  # the SDK's ErrorCode names
        detail = str(exc.detail)
        if isinstance(exc.__cause__, RecursionError):
            detail = "the request body is nested too deeply to parse"
        return ApiProblem(exc.status_code, code, detail).response(headers=getattr(exc, "headers", None))

    @api.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        _log.exception("unhandled error on %s %s", request.method, request.url.path)
        return ApiProblem(500, "internal_error", "the server failed on this request; it has been logged").response()
