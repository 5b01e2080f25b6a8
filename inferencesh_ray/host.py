"""The app host: the one place that runs an app's code.

It loads an app, runs `setup` once per setup config (a different config runs `unload`
first), calls a function with validated input (a `@batched` function once per group of
calls that arrive together), captures logs, fetches input files and publishes output
files, and runs `unload` on close. The dev loop, Serve replicas and
session actors all run apps through an `AppHost`; none of them calls user code itself.
It imports no Ray.

    host = AppHost.load("examples/image_model")
    async for event in host.run(Call("upscale", {"image": "in.png"})):
        ...   # SettingUp, Running, Log, Output, Uploading, then Completed | Failed | Cancelled
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import threading
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, AsyncIterator, Callable, Mapping, Optional

import pydantic

from . import logs
from .app import Metadata
from .batching import Batcher
from .discovery import AppFunction, Discovery, discover
from .errors import AppCodeError, FieldError, FunctionNotFound, InvalidInput
from .events import (
    TERMINAL_EVENTS,
    Cancelled,
    Completed,
    Failed,
    Log,
    Output,
    Running,
    SettingUp,
    TaskEvent,
    Uploading,
)
from .file_access import FileAccess, FileFetchError, FileScope, LocalFiles
from .file_fields import file_slots
from .loader import load_app
from .schema import model_schema
from .tracebacks import app_traceback, describe

_log = logging.getLogger(__name__)
RUNNING_HOLD_S = 0.01
"""A task that ends this soon after it starts reports Running with its end: one message, one store write."""


@dataclass(frozen=True)
class Call:
    """One call of a function: what a task asks the host to run."""

    function: Optional[str]
    input: dict[str, Any]
    setup: Optional[dict[str, Any]] = None
    metadata: dict[str, Any] = field(default_factory=dict)
    scope: Optional[FileScope] = None
    """Whose task this is, for a server's file policy; None in the dev loop."""


@dataclass(frozen=True)
class SetupConfig:
    """A validated setup config and its key: equal configs have equal keys."""

    value: Any
    key: str


class _Scratch:
    """A task's temporary directory for its input files and, in `outputs`, the app's output
    files (`metadata.output_dir`), made on first use.

    It is removed when its last holder lets go: the task, and for a batched function the
    batcher too, which lets go when the batch holding the task's input has ended; a task
    cancelled meanwhile must not delete files the rest of its batch is still reading.
    """

    def __init__(self, keep_outputs: bool = False) -> None:
        self._path: Optional[Path] = None
        self._outputs: Optional[Path] = None
        self._keep_outputs = keep_outputs  # nothing stores a copy of them: the dev loop
        self._holders = 1  # the task's own
        # App threads (a cancelled sync call's still running, a pool saving files) ask for it too.
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        with self._lock:
            return self._made()

    @property
    def outputs(self) -> Path:
        with self._lock:
            if self._outputs is None:
                if self._keep_outputs:
                    self._outputs = Path(tempfile.mkdtemp(prefix="infsh-out-"))
                else:  # apart from the inputs, whose names the client chose
                    self._outputs = self._made() / "outputs"
                    self._outputs.mkdir()
            return self._outputs

    def _made(self) -> Path:
        if self._holders == 0:  # a cancelled call's thread, still running: nothing may be left behind
            raise RuntimeError("this task has ended: its directory is gone")
        if self._path is None:
            self._path = Path(tempfile.mkdtemp(prefix="infsh-task-"))
        return self._path

    def hold(self) -> None:
        with self._lock:
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            gone = self._path if self._holders == 0 else None
        if gone is not None:
            shutil.rmtree(gone, ignore_errors=True)


@dataclass(frozen=True)
class _BatchMember:
    """One call waiting in a batch: its validated input, where its events go, and its input files' directory."""

    value: Any
    config: SetupConfig
    metadata: Metadata
    emit: Callable[[Any], None]
    scratch: _Scratch


class AppHost:
    def __init__(
        self,
        app_cls: type,
        *,
        files: Optional[FileAccess] = None,
        app_id: Optional[str] = None,
        batching: Optional[Mapping[str, Mapping[str, Any]]] = None,
    ) -> None:
        """`batching` overrides `@batched` settings by function, e.g. `{"embed": {"max_batch_size": 64}}`;
        an unknown or unbatched function, or a bad setting, is an AppError naming it."""
        self.app_cls = app_cls
        self.app_id = app_id
        self.discovery: Discovery = discover(app_cls).with_batching(batching or {})
        self._batcher = Batcher(self._call_batch, release=lambda member: member.scratch.release())
        self.files: FileAccess = files or LocalFiles()
        self._app: Any = None
        self._setup_key: Optional[str] = None
        self._gate = asyncio.Lock()
        self._idle = asyncio.Event()
        self._idle.set()
        self._active = 0
        # Sync app code still running in a thread whose call was cancelled: a thread cannot be stopped.
        self._threads: set[asyncio.Future] = set()
        self._schemas: dict[type, dict] = {}

    @classmethod
    def load(cls, ref: str, **kwargs: Any) -> "AppHost":
        loaded = load_app(ref)
        kwargs.setdefault("app_id", loaded.name)
        return cls(loaded.app_cls, **kwargs)

    @property
    def functions(self) -> dict[str, AppFunction]:
        return self.discovery.functions

    @property
    def setup_key(self) -> Optional[str]:
        """The key of the config this instance is set up with, None before setup."""
        return self._setup_key

    def function(self, name: Optional[str]) -> AppFunction:
        """The named function, or the default `run`; FunctionNotFound lists the known ones."""
        chosen = name or self.discovery.default_function
        if chosen is None or chosen not in self.functions:
            raise FunctionNotFound(name, list(self.functions), self.discovery.skipped)
        return self.functions[chosen]

    def setup_config(self, config: Optional[dict[str, Any]]) -> SetupConfig:
        """Validate a setup config against the app's setup model, filling in defaults."""
        spec = self.discovery.setup
        if not spec.takes_config:
            if config:
                raise InvalidInput("setup", [FieldError("setup", "this app's setup takes no config")])
            return SetupConfig(None, "default")
        config = config or {}
        if spec.model is None:
            return SetupConfig(config, config_key(config))
        value = validate_model(spec.model, config, "setup")
        return SetupConfig(value, config_key(dump_model(value)))

    def validate_input(self, function: AppFunction, data: Any) -> Any:
        return validate_model(function.input_model, data, "input")

    def schema_of(self, model: type) -> dict:
        if model not in self._schemas:
            self._schemas[model] = model_schema(model)
        return self._schemas[model]

    async def run(self, call: Call) -> AsyncIterator[TaskEvent]:
        """Serve one call, yielding its events; the last is Completed, Failed or Cancelled.

        Closing the iterator early (or cancelling its consumer) cancels the call.
        """
        async with aclosing(self.run_grouped(call, hold_running_s=0.0)) as groups:
            async for group in groups:
                for event in group:
                    yield event

    async def run_grouped(self, call: Call, hold_running_s: float = RUNNING_HOLD_S) -> AsyncIterator[list[TaskEvent]]:
        """`run`'s events in groups, for a consumer across a process boundary: those ready
        together, and from a Running on, what follows it for up to `hold_running_s`, so a
        quick task's Running and Completed cross (and are stored) as one.
        """
        queue: asyncio.Queue[Optional[TaskEvent]] = asyncio.Queue()
        emit = _threadsafe_put(queue)
        worker = asyncio.ensure_future(self._serve(call, emit))
        worker.add_done_callback(lambda _: emit(None))
        logged = 0
        try:
            while True:
                group = _drain(queue, [await queue.get()])
                if hold_running_s and any(isinstance(event, Running) for event in group):
                    group = await _hold(queue, group, hold_running_s)
                group, logged = _number_logs(group, logged)
                ended = None in group
                events = group[:group.index(None)] if ended else group  # nothing after the end
                if events:
                    yield events
                if ended:
                    break
            worker.result()
        finally:
            if not worker.done():
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)

    async def close(self) -> None:
        """Run `unload` if the app is set up; the host can set up again afterwards."""
        async with self._gate:
            await self._quiet()
            await self._unload()

    async def close_for_good(self) -> None:
        """`close`, as the process serving the app goes anyway: an `unload` that raises is logged,
        in the app's own frames, rather than raised."""
        try:
            await self.close()
        except AppCodeError as exc:
            _log.error("%s: %s\n%s", self.app_id, exc, exc.traceback)

    async def _serve(self, call: Call, emit: Callable[[Any], None]) -> None:
        metadata = Metadata(**{"app_id": self.app_id, **call.metadata})
        metadata._log_sink = lambda text: emit(Log(text))
        scratch = _Scratch(keep_outputs=not self.files.stores_outputs)
        metadata._output_dir = lambda: scratch.outputs
        try:
            with logs.capture(metadata._log_sink):
                function = self.function(call.function)
                config = self.setup_config(call.setup)
                value = await self._prepare_input(function, call, scratch)
                output = await self._call_function(function, config, value, metadata, call.scope, emit, scratch)
                emit(Completed(await self._publish_outputs(function, output, call.scope, lambda: emit(Uploading()))))
        except asyncio.CancelledError:
            emit(Cancelled())
            raise
        except AppCodeError as exc:
            emit(Failed(str(exc), exc.traceback))
        except (InvalidInput, FunctionNotFound) as exc:
            emit(Failed(str(exc)))
        except Exception as exc:  # ours, or storage's: the task still ends, and the server's log says where
            _log.exception("app host failed while serving %s", call.function)
            # Only the type: the message may hold the server's paths or storage names.
            emit(Failed(f"internal error ({type(exc).__name__}) while serving this task; the server's log has the details"))
        finally:
            scratch.release()

    @asynccontextmanager
    async def _instance(self, config: SetupConfig, metadata: Metadata, emit: Callable[[Any], None]):
        """Hold the app, set up with `config`, for one call.

        Calls with the same config share the instance; a call with another config waits
        (FIFO, behind the gate) until the running calls finish, then unloads and sets up.
        """
        async with self._gate:
            if self._setup_key != config.key:
                if self._active:  # else a queued task looks stuck, with nothing said of why
                    metadata.log(f"waiting for {self._active} running task(s) with another setup to finish, "
                                 "then setting up this one's (more replicas would run them side by side)")
                await self._quiet()
                emit(SettingUp())
                await self._unload()
                await self._setup(config, metadata)
            self._active += 1
            self._idle.clear()
        try:
            yield self._app
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def _quiet(self) -> None:
        """Until no call holds the instance, and no cancelled call's thread still runs in it:
        `unload` or another `setup` must not pull the instance from under app code."""
        await self._idle.wait()
        while self._threads:
            await asyncio.wait(set(self._threads))

    async def _setup(self, config: SetupConfig, metadata: Metadata) -> None:
        if self._app is None:
            self._app = self.app_cls()
        # Official apps read `self.context.metadata` ("the engine attaches it at setup").
        try:
            self._app.context = SimpleNamespace(metadata=metadata)
        except (AttributeError, TypeError, ValueError):
            pass
        spec = self.discovery.setup
        args = ([config.value] if spec.takes_config else []) + ([metadata] if spec.takes_metadata else [])
        setup = getattr(self._app, "setup", None)
        if setup is not None:  # apps with no base class may have no setup at all
            await _invoke(setup, args, "setup", self._threads)
        self._setup_key = config.key

    async def _unload(self) -> None:
        if self._setup_key is None or self._app is None:
            return
        self._setup_key = None
        unload = getattr(self._app, "unload", None)
        if unload is not None:
            await _invoke(unload, [], "unload", self._threads)

    async def _call_function(
        self,
        function: AppFunction,
        config: SetupConfig,
        value: Any,
        metadata: Metadata,
        scope: Optional[FileScope],
        emit: Callable[[Any], None],
        scratch: _Scratch,
    ) -> Any:
        """The function's output for this one call; a batched function's comes from its group's call."""
        if function.batch is not None:
            member = _BatchMember(value, config, metadata, emit, scratch)
            scratch.hold()  # the batcher's, released when no batch can read this call's files any more
            return await self._batcher.submit((function.name, config.key), function.batch, member)
        async with self._instance(config, metadata, emit):
            emit(Running())
            return await self._call(function, value, metadata, scope, emit)

    async def _call_batch(self, key: tuple[str, str], members: list[_BatchMember]) -> list[Any]:
        """Call a batched function once for calls of one config: one output (or AppCodeError) per call.

        Each call sees Running and its own `metadata.log` lines; what the function prints or
        logs, and setup's events, go to every call of the batch.
        """
        function = self.functions[key[0]]
        first = members[0]

        def emit_all(event: Any) -> None:
            for member in members:
                member.emit(event)

        with logs.capture(lambda text: emit_all(Log(text))):
            async with self._instance(first.config, first.metadata, emit_all) as app:
                emit_all(Running())
                kwargs = {"metadata": [member.metadata for member in members]} if function.takes_metadata else {}
                values = [member.value for member in members]
                outputs = await _invoke(getattr(app, function.name), [values], function.name, self._threads, **kwargs)
        return _batch_outcomes(function, outputs, len(members))

    async def _call(
        self, function: AppFunction, value: Any, metadata: Metadata, scope: Optional[FileScope], emit: Callable
    ) -> Any:
        method = getattr(self._app, function.name)
        kwargs = {"metadata": metadata} if function.takes_metadata else {}
        if function.call_kind != "generator":
            return await _invoke(method, [value], function.name, self._threads, **kwargs)
        last = None
        try:
            async for snapshot in method(value, **kwargs):
                if _is_stream_delta(snapshot):
                    continue  # a token delta: this server has no delta channel, clients get snapshots and the result
                last = snapshot
                emit(Output(await self._publish_outputs(function, snapshot, scope, verb="yielded")))
        except AppCodeError:
            raise
        except Exception as exc:
            raise AppCodeError(describe(exc), app_traceback(exc)) from exc
        if last is None:
            raise AppCodeError(f"{function.name} yielded no output")
        return last

    async def _prepare_input(self, function: AppFunction, call: Call, scratch: _Scratch) -> Any:
        """Fetch the input's files to local paths (in `scratch`), then validate;
        errors of both kinds are reported together."""
        data = call.input
        if not isinstance(data, dict):
            raise InvalidInput("input", [FieldError("input", f"expected an object, got {type(data).__name__}")])
        data = copy.deepcopy(data)
        errors = []
        slots = file_slots(self.schema_of(function.input_model), data)
        for index, slot in enumerate(slots):
            slot_dir = scratch.path / str(index)
            slot_dir.mkdir()
            try:
                slot.set(await self.files.fetch(slot.value, slot_dir, call.scope))
            except FileFetchError as exc:
                errors.append(FieldError(slot.loc, str(exc)))
        try:
            value = self.validate_input(function, data)
        except InvalidInput as exc:
            failed = {error.loc for error in errors}
            errors += [error for error in exc.errors if error.loc not in failed]
        if errors:
            raise InvalidInput("input", errors)
        return value

    async def _publish_outputs(
        self,
        function: AppFunction,
        output: Any,
        scope: Optional[FileScope],
        announce: Optional[Callable[[], None]] = None,
        verb: str = "returned",
    ) -> Any:
        if not isinstance(output, function.output_model):
            raise AppCodeError(f"{function.name} {verb} {type(output).__name__}, expected {function.output_model.__name__}")
        document = dump_model(output)
        slots = file_slots(self.schema_of(function.output_model), document)
        local = [slot for slot in slots if isinstance(slot.value, dict) and slot.value.get("path")]
        if local and announce is not None:
            announce()
        for slot in local:
            if not os.path.isfile(slot.value["path"]):
                raise AppCodeError(f"{function.name} {verb} a file that does not exist: {slot.loc} = {slot.value['path']}")
            slot.set(await self.files.publish(slot.value, scope))
        return document


def _batch_outcomes(function: AppFunction, outputs: Any, count: int) -> list[Any]:
    """A batched function's outputs, one per input; an exception in an element's place fails only that call.

    Any exception: a CancelledError there (a sub-task the function cancelled) is the app's
    failure, not a cancel of the task.
    """
    expected = f"a batched function returns a list with one {function.output_model.__name__} per input, in order"
    if not isinstance(outputs, (list, tuple)):
        raise AppCodeError(f"{function.name} returned {type(outputs).__name__}; {expected}")
    if len(outputs) != count:
        raise AppCodeError(f"{function.name} returned {len(outputs)} outputs for {count} inputs; {expected}")
    return [AppCodeError(describe(o), app_traceback(o)) if isinstance(o, BaseException) else o for o in outputs]


def validate_model(model: type, data: Any, what: str) -> Any:
    """Validate with a pydantic v2 or v1 model; InvalidInput names each bad field."""
    try:
        if issubclass(model, pydantic.BaseModel):
            return model.model_validate(data)
        return model.parse_obj(data)
    except (pydantic.ValidationError, _v1_validation_error()) as exc:
        raise InvalidInput(what, [FieldError(".".join(map(str, e["loc"])) or what, e["msg"]) for e in exc.errors()])


def dump_model(value: Any) -> Any:
    """A model as JSON-compatible data (v2 `model_dump(mode="json")`, v1 via `.json()`)."""
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    return json.loads(value.json())


def _v1_validation_error() -> type:
    try:
        from pydantic.v1 import ValidationError
    except ImportError:  # pragma: no cover
        return pydantic.ValidationError
    return ValidationError


def config_key(config: Any) -> str:
    """A short stable key of a setup config: equal configs, equal keys."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _is_stream_delta(value: Any) -> bool:
    # By name: the official `inferencesh` package, whose `StreamDelta` (`LLMDelta`, ...) an app may yield, is optional.
    return any(cls.__name__ == "StreamDelta" for cls in type(value).__mro__)


async def _invoke(method: Callable, args: list, what: str, threads: set[asyncio.Future], **kwargs: Any) -> Any:
    """Call app code, sync (in a thread) or async; its exceptions become AppCodeError.

    A cancel cannot stop a thread: a sync call's thread stays in `threads` until it returns,
    while the call itself ends at once (its result is dropped).
    """
    try:
        if inspect.iscoroutinefunction(method):
            return await method(*args, **kwargs)
        thread = asyncio.ensure_future(asyncio.to_thread(_sync_call, method, args, kwargs, what))
        threads.add(thread)
        thread.add_done_callback(_forget(threads))
        result = await asyncio.shield(thread)
        if inspect.isawaitable(result):
            result = await result
        return result
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        prefix = f"{what} failed: " if what in ("setup", "unload") else ""
        raise AppCodeError(prefix + describe(exc), app_traceback(exc)) from exc


def _forget(threads: set[asyncio.Future]) -> Callable[[asyncio.Future], None]:
    def done(thread: asyncio.Future) -> None:
        threads.discard(thread)
        if not thread.cancelled():
            thread.exception()  # retrieved: a cancelled call's failure is dropped, not logged as unhandled

    return done


def _sync_call(method: Callable, args: list, kwargs: dict[str, Any], what: str) -> Any:
    """Call sync app code (in a worker thread), its StopIteration raised as RuntimeError: asyncio cannot
    set StopIteration on a Future (Python 3.11 logs a TypeError), so the await would never end."""
    try:
        return method(*args, **kwargs)
    except StopIteration as exc:
        hint = "(next() on an exhausted iterator?); catch it, or give next() a default"
        error = RuntimeError(f"{what} raised {describe(exc)} {hint}")
        raise error.with_traceback(exc.__traceback__) from exc  # its traceback shows the app's frames


async def _hold(queue: asyncio.Queue, group: list, seconds: float) -> list:
    """`group` and what follows it in `seconds`, stopping at the task's end."""
    deadline = asyncio.get_running_loop().time() + seconds
    while group[-1] is not None and not isinstance(group[-1], TERMINAL_EVENTS):
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            break
        # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancel that comes
        # as the event does, and the call would run on for a consumer that is gone.
        getter = asyncio.ensure_future(queue.get())
        try:
            done, _ = await asyncio.wait({getter}, timeout=left)
        finally:
            getter.cancel()
        if not done:
            break
        group = _drain(queue, [*group, getter.result()])
    return group


def _number_logs(group: list, logged: int) -> tuple[list, int]:
    """`group` with its Log events numbered in the order they left the queue, from `logged` on."""
    numbered = []
    for event in group:
        if isinstance(event, Log):
            event = dataclasses.replace(event, seq=logged)
            logged += 1
        numbered.append(event)
    return numbered, logged


def _drain(queue: asyncio.Queue, group: list) -> list:
    while not queue.empty():
        group.append(queue.get_nowait())
    return group


def _threadsafe_put(queue: asyncio.Queue) -> Callable[[Any], None]:
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()

    def put(event: Any) -> None:
        if threading.get_ident() == loop_thread:
            queue.put_nowait(event)
        else:
            loop.call_soon_threadsafe(queue.put_nowait, event)

    return put
