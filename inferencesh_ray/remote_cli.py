"""`infsh-ray app run`, `task get|cancel|stream` and `files upload`: the command line of a running server.

The conventions of `app dev`: results (JSON) go to stdout; status changes and log lines
go to stderr as they arrive (with a spinner when stderr is a terminal, plain lines when
it is not); a failure is one `error: ...` line and exit 1, bad command-line input exit 2.
Ctrl-C while waiting asks whether to cancel the task (on a terminal; otherwise it
cancels), then exits 130. The server comes from --base-url or INFERENCE_BASE_URL.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import threading
import time
from typing import Any, Callable, Optional, TextIO

from .cli import UsageError, read_json_arg
from .client import (
    API_KEY_ENV,
    BASE_URL_ENV,
    ConfigurationError,
    Inference,
    InferenceError,
    TaskCancelled,
    TaskError,
    inference,
    parse_status,
)
from .client._tasks import strip_task
from .status import TaskStatus

Handler = Callable[[argparse.Namespace], int]


def add_commands(commands: Any, app_commands: Any) -> None:
    """Register `app run` under `app`, and the `task`, `session` and `files` commands."""
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--base-url", help=f"the server, e.g. http://127.0.0.1:8000 (default ${BASE_URL_ENV})")
    server.add_argument("--api-key", help=f"API key to send (default ${API_KEY_ENV}; a server without keys needs none)")
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--timeout", type=_seconds, help="stop waiting after this many seconds (the task keeps running)")

    run = app_commands.add_parser("run", parents=[server, waiting], help="run a function on a server and print its output")
    run.add_argument("app", metavar="APP", help="the app: name[@version][:function]")
    run.add_argument("-f", "--function", help="function to call (wins over APP's :function; default: run)")
    run.add_argument("-i", "--input", default="{}", help="input as JSON, or @file.json (default {}); local files in it are uploaded")
    run.add_argument("-s", "--setup", help="setup config as JSON, or @file.json")
    run.add_argument("--session", metavar="new|ID", help='run in a session: "new" starts one, an id continues it')
    run.add_argument("--session-timeout", type=int, metavar="S", help="idle timeout of a new session, seconds")
    run.add_argument("--idempotency-key", metavar="KEY",
                     help="the run's Idempotency-Key: run again with the same key, this command follows the "
                          "first run's task instead of starting another (default: a new key)")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--no-wait", action="store_true", help="print the created task and return at once")
    mode.add_argument("--stream", action="store_true", help="print every update as one JSON line")
    run.set_defaults(handler=_app_run)

    task = commands.add_parser("task", help="read, cancel or follow a task on a server")
    task_commands = task.add_subparsers(title="task commands", metavar="COMMAND")
    get = task_commands.add_parser("get", parents=[server], help="print the task as it is now")
    cancel = task_commands.add_parser("cancel", parents=[server], help="cancel the task, then print it")
    stream = task_commands.add_parser("stream", parents=[server, waiting], help="print every update as one JSON line until it ends")
    for command, handler in ((get, _task_get), (cancel, _task_cancel), (stream, _task_stream)):
        command.add_argument("task_id", metavar="ID", help="the task's id")
        command.set_defaults(handler=handler)

    session = commands.add_parser("session", help="list, read or end your sessions on a server")
    session_commands = session.add_subparsers(title="session commands", metavar="COMMAND")
    listed = session_commands.add_parser("list", parents=[server], help="print your sessions, live and recently ended")
    listed.set_defaults(handler=_session_list)
    shown = session_commands.add_parser("get", parents=[server], help="print the session as it is now")
    ended = session_commands.add_parser("end", parents=[server], help="end the session, releasing its worker")
    for command, handler in ((shown, _session_get), (ended, _session_end)):
        command.add_argument("session_id", metavar="ID", help="the session's id")
        command.set_defaults(handler=handler)

    files = commands.add_parser("files", help="files on a server")
    file_commands = files.add_subparsers(title="files commands", metavar="COMMAND")
    upload = file_commands.add_parser("upload", parents=[server], help="upload a local file and print its file object")
    upload.add_argument("path", metavar="PATH", help="the file to upload")
    upload.set_defaults(handler=_files_upload)


def _remote(handler: Handler) -> Handler:
    """Turn the client's errors into one `error: ...` line and an exit status."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (UsageError, ConfigurationError, ValueError) as exc:
            # Reported here, not by cli.main: under `python -m inferencesh_ray.cli` that
            # module is __main__, whose UsageError is another class than the one we import.
            # ValueError: an input value the client cannot upload.
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except TaskCancelled as exc:
            print(f"error: task {exc.task_id} was cancelled", file=sys.stderr)
            return 1
        except TaskError as exc:
            print(f"error: task {exc.task_id} failed: {exc}", file=sys.stderr)
            return 1
        except InferenceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:  # also NaN
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


def _client(args: argparse.Namespace) -> Inference:
    if not (args.base_url or os.environ.get(BASE_URL_ENV)):
        raise UsageError(f"no server address: pass --base-url URL or set {BASE_URL_ENV} (e.g. http://127.0.0.1:8000)")
    return inference(api_key=args.api_key, base_url=args.base_url)


@_remote
def _app_run(args: argparse.Namespace) -> int:
    data = read_json_arg(args.input, "--input")
    setup = read_json_arg(args.setup, "--setup")
    if not isinstance(data, dict):
        raise UsageError("--input must be a JSON object")
    if setup is not None and not isinstance(setup, dict):
        raise UsageError("--setup must be a JSON object")
    if args.session_timeout is not None and args.session != "new":
        raise UsageError("--session-timeout is the idle timeout of a new session: add --session new")
    params: dict[str, Any] = {"app": args.app, "input": data}
    optional = {"function": args.function, "setup": setup, "session": args.session, "session_timeout": args.session_timeout}
    params.update({key: value for key, value in optional.items() if value is not None})
    client = _client(args)
    task = client.tasks.run(params, wait=False, idempotency_key=args.idempotency_key)
    session = task.get("session_id")
    where = f" in session {session} (continue it with --session {session})" if session else ""
    print(f"task {task['id']} created{where}", file=sys.stderr, flush=True)
    if args.no_wait:
        _print_json(task)
        return 0
    return _wait(client, task["id"], args.timeout, JsonLines() if args.stream else LiveProgress())


@_remote
def _session_list(args: argparse.Namespace) -> int:
    _print_json(_client(args).sessions.list())
    return 0


@_remote
def _session_get(args: argparse.Namespace) -> int:
    _print_json(_client(args).sessions.get(args.session_id))
    return 0


@_remote
def _session_end(args: argparse.Namespace) -> int:
    _client(args).sessions.end(args.session_id)
    print(f"ended session {args.session_id}", file=sys.stderr)
    return 0


@_remote
def _task_get(args: argparse.Namespace) -> int:
    _print_json(_client(args).tasks.get(args.task_id).data)
    return 0


@_remote
def _task_cancel(args: argparse.Namespace) -> int:
    client = _client(args)
    client.tasks.cancel(args.task_id)
    task = client.tasks.get(args.task_id).data
    status = parse_status(task.get("status"))
    if status is not None and status.is_terminal and status.name != "CANCELLED":
        print(f"task {args.task_id} had already ended {status.name}", file=sys.stderr)
    else:
        print(f"task {args.task_id} is {status.name if status else 'UNKNOWN'}", file=sys.stderr)
    _print_json(task)
    return 0


@_remote
def _task_stream(args: argparse.Namespace) -> int:
    return _wait(_client(args), args.task_id, args.timeout, JsonLines())


@_remote
def _files_upload(args: argparse.Namespace) -> int:
    if os.path.isdir(args.path):
        raise UsageError(f"{args.path} is a directory; upload its files one by one")
    if not os.path.isfile(args.path):
        raise UsageError(f"no such file: {args.path}")
    _print_json(_client(args).files.upload(args.path))
    return 0


# -- waiting on a task ---------------------------------------------------------------------


class TaskView:
    """How updates are shown while waiting; `result` prints the completed task."""

    def update(self, update: dict[str, Any]) -> None:
        raise NotImplementedError

    def result(self, task: dict[str, Any]) -> None:
        pass

    def failed(self, task: dict[str, Any]) -> None:
        """The task ended FAILED, CANCELLED or REJECTED (its error line follows on stderr)."""

    def pause(self) -> None:
        """Stop drawing (before a prompt or an error line)."""


class JsonLines(TaskView):
    """Every update, one JSON object per line on stdout, as it arrives; the last is the terminal one."""

    def update(self, update: dict[str, Any]) -> None:
        print(json.dumps(update), flush=True)

    def failed(self, task: dict[str, Any]) -> None:
        # The client raises instead of yielding this update; a pipeline still needs to see the end, and why.
        self.update({**strip_task(task), "error": task.get("error")})


class LiveProgress(TaskView):
    """Status changes, new log lines and output snapshots on stderr; the output JSON on stdout at the end."""

    def __init__(self, err: TextIO = sys.stderr) -> None:
        self._err = err
        self._spinner: Optional[Spinner] = None
        self._status: Optional[str] = None
        self._logs_seen: set[str] = set()
        self._output: Optional[str] = None

    def update(self, update: dict[str, Any]) -> None:
        status = parse_status(update.get("status"))
        ended = status is not None and status.is_terminal
        if not ended:
            self._show_status(status)
        for entry in update.get("logs") or []:
            if not isinstance(entry, dict):
                continue
            key = str(entry.get("id") or (entry.get("created_at"), entry.get("content")))
            if key not in self._logs_seen:
                self._logs_seen.add(key)
                self._say(str(entry.get("content", "")))
        output = update.get("output")
        if output is not None and not ended and json.dumps(output) != self._output:
            self._output = json.dumps(output)
            self._say(f"progress: {self._output}")
        if ended:  # after the lines that came with it, which happened before
            self._show_status(status)

    def result(self, task: dict[str, Any]) -> None:
        self.pause()
        print(json.dumps(task.get("output"), indent=2), flush=True)

    def pause(self) -> None:
        if self._spinner is not None:
            self._spinner.stop()
            self._spinner = None

    def _show_status(self, status: Optional[TaskStatus]) -> None:
        label = status.name.lower().replace("_", " ") if status is not None else "waiting"
        if label != self._status and not self._err.isatty():
            print(label if status is not None and status.is_terminal else f"{label}...", file=self._err, flush=True)
        self._status = label
        if self._err.isatty():
            if self._spinner is None:  # again after a pause, too
                self._spinner = Spinner(self._err)
            self._spinner.label = label

    def _say(self, text: str) -> None:
        if self._spinner is not None:
            self._spinner.print_above(text)
        else:
            print(text, file=self._err, flush=True)


class Spinner:
    """One line on a terminal, redrawn ten times a second: a frame, the status, the time waited."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, err: TextIO) -> None:
        self.label = "waiting"
        self._err = err
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="infsh-spinner", daemon=True)
        self._thread.start()

    def print_above(self, text: str) -> None:
        with self._lock:
            self._err.write(f"\r\x1b[K{text}\n")
            self._draw()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
        with self._lock:
            self._err.write("\r\x1b[K")
            self._err.flush()

    def _spin(self) -> None:
        while not self._stopped.wait(0.1):
            with self._lock:
                self._draw()

    def _draw(self) -> None:
        frame = self.FRAMES[int(time.monotonic() * 10) % len(self.FRAMES)]
        self._err.write(f"\r\x1b[K{frame} {self.label} ({time.monotonic() - self._started:.0f} s)")
        self._err.flush()


def _wait(client: Inference, task_id: str, timeout: Optional[float], view: TaskView) -> int:
    """Follow the task until it ends; Ctrl-C asks whether to cancel it, and exits 130 when it is."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            with client.tasks.stream(task_id, timeout=left) as stream:
                for update in stream:
                    view.update(update)
            assert stream.result is not None  # the stream ends only at COMPLETED; otherwise it raised
            view.result(stream.result)
            return 0
        except TaskError as exc:
            view.failed(exc.task)
            raise
        except KeyboardInterrupt:
            view.pause()
            answer = _ask_to_cancel(task_id)
            if answer is None:
                print(f"\nstopped waiting; task {task_id} keeps running {_cancel_hint(task_id)}", file=sys.stderr)
                return 130
            if answer:
                try:
                    client.tasks.cancel(task_id)
                except KeyboardInterrupt:  # a second one, as a process group's signal can be
                    print(f"\ninterrupted while cancelling: task {task_id} may still run {_cancel_hint(task_id)}",
                          file=sys.stderr)
                    return 130
                print(f"cancelled task {task_id}", file=sys.stderr)
                return 130
        finally:
            view.pause()


def _cancel_hint(task_id: str) -> str:
    return f"(`infsh-ray task cancel {task_id}` cancels it)"


def _ask_to_cancel(task_id: str) -> Optional[bool]:
    """True to cancel, False to keep waiting, None to leave without cancelling (a second Ctrl-C)."""
    if not sys.stdin.isatty():
        return True  # nobody to ask: an interrupted script should not leave work running
    print(f"\ncancel task {task_id}? [y/N] ", end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        return None
    return answer.strip().lower() in ("y", "yes")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2), flush=True)
