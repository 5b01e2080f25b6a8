"""`infsh-ray app run | task | files` driven as a user would, in a subprocess, against the real
HTTP API (no Ray: in-process task store and app host, uvicorn in a thread)."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

import httpx
import pytest
from client_support import api_server_fixture
from conftest import free_port

from inferencesh_ray.remote_cli import LiveProgress
from inferencesh_ray.status import TaskStatus

KEY = "cli-key"


server = api_server_fixture("counting.py", KEY)
files_server = api_server_fixture("file_app.py", KEY)


def environment(url: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_")}
    if url:
        env.update(INFERENCE_BASE_URL=url, INFERENCE_API_KEY=KEY)
    return env


def cli(url: str | None, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "inferencesh_ray.cli", *args],
        capture_output=True, text=True, timeout=60, env=environment(url), cwd=cwd, stdin=subprocess.DEVNULL,
    )


def start(url: str, *args: str, **options) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "inferencesh_ray.cli", *args], env=environment(url), text=True, **options
    )


def task_of(url: str, task_id: str) -> dict:
    return httpx.get(f"{url}/tasks/{task_id}", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]


def test_app_run_prints_output_and_shows_progress(server):
    result = cli(server.url, "app", "run", "counting", "--input", '{"text": "hi", "times": 2}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"text": "hihi", "mode": "a"}
    lines = result.stderr.splitlines()
    assert lines[0].startswith("task ") and lines[0].endswith(" created")
    assert "echoing hi" in lines and lines[-1] == "completed"
    assert "\r" not in result.stderr  # piped: plain lines, no spinner

    progress = cli(server.url, "app", "run", "counting:progress", "-i", '{"text": "p", "times": 3}')
    assert progress.returncode == 0, progress.stderr
    assert json.loads(progress.stdout)["text"] == "p2"
    shown = progress.stderr.splitlines()
    assert shown.index("running...") < shown.index("step 0") < shown.index("step 1") < shown.index("step 2")
    assert 'progress: {"text": "p0", "mode": "a"}' in shown
    assert len([line for line in shown if line == "step 1"]) == 1  # re-sent snapshots do not repeat logs


def test_a_run_with_the_same_idempotency_key_follows_the_first_runs_task(server):
    first = cli(server.url, "app", "run", "counting", "-i", '{"text": "k"}', "--idempotency-key", "nightly-7", "--no-wait")
    again = cli(server.url, "app", "run", "counting", "-i", '{"text": "k"}', "--idempotency-key", "nightly-7")
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    task_id = json.loads(first.stdout)["id"]
    assert again.stderr.splitlines()[0] == f"task {task_id} created" and json.loads(again.stdout)["text"] == "k"
    other = cli(server.url, "app", "run", "counting", "-i", '{"text": "other"}', "--idempotency-key", "nightly-7")
    assert other.returncode == 1 and "was first sent with a different request (another input)" in other.stderr


def test_no_wait_then_task_get_stream_and_cancel(server):
    created = cli(server.url, "app", "run", "counting", "-f", "progress", "-i", '{"text": "n", "times": 3}', "--no-wait")
    assert created.returncode == 0, created.stderr
    task = json.loads(created.stdout)
    assert set(task) == {"id", "created_at", "updated_at", "input", "output", "logs", "status"}
    assert created.stderr == f"task {task['id']} created\n"
    got = cli(server.url, "task", "get", task["id"])
    assert json.loads(got.stdout)["function"] == "progress"
    streamed = cli(server.url, "task", "stream", task["id"])
    assert streamed.returncode == 0, streamed.stderr
    updates = [json.loads(line) for line in streamed.stdout.splitlines()]
    assert updates[-1]["status"] == TaskStatus.COMPLETED and updates[-1]["output"]["text"] == "n2"
    finished = cli(server.url, "task", "cancel", task["id"])
    assert finished.returncode == 0 and "had already ended COMPLETED" in finished.stderr

    slow = json.loads(cli(server.url, "app", "run", "counting:slow", "-i", '{"text": "z"}', "--no-wait").stdout)
    cancelled = cli(server.url, "task", "cancel", slow["id"])
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["status"] in (TaskStatus.CANCELLING, TaskStatus.CANCELLED)
    waited = cli(server.url, "task", "stream", slow["id"])
    assert waited.returncode == 1 and waited.stderr.strip() == f"error: task {slow['id']} was cancelled"


def test_a_run_that_opens_a_session_says_which_even_without_waiting(server):
    """--no-wait printed the created task and returned before saying, as a run does, that it opened a session."""
    opened = cli(server.url, "app", "run", "counting", "-i", '{"text": "s"}', "--session", "new", "--no-wait")
    assert opened.returncode == 0, opened.stderr
    task = json.loads(opened.stdout)
    assert f"task {task['id']} created in session {task['session_id']} (continue it with" in opened.stderr

    # And the session is read and ended from the command line too (it took curl -X DELETE).
    session = task["session_id"]
    assert session in [listed["id"] for listed in json.loads(cli(server.url, "session", "list").stdout)]
    assert json.loads(cli(server.url, "session", "get", session).stdout)["status"] == "active"
    ended = cli(server.url, "session", "end", session)
    assert (ended.returncode, ended.stderr) == (0, f"ended session {session}\n")
    assert json.loads(cli(server.url, "session", "get", session).stdout)["status"] == "ended"
    unknown = cli(server.url, "session", "get", "nope")
    assert unknown.returncode == 1 and "nope" in unknown.stderr


def test_run_stream_prints_one_json_line_per_update(server):
    result = cli(server.url, "app", "run", "counting:progress", "-i", '{"text": "l", "times": 3}', "--stream")
    assert result.returncode == 0, result.stderr
    updates = [json.loads(line) for line in result.stdout.splitlines()]
    statuses = [update["status"] for update in updates]
    assert statuses == sorted(statuses) and statuses[-1] == TaskStatus.COMPLETED and len(updates) >= 3


def test_a_stream_ends_with_the_terminal_update_of_a_failed_task_too(server):
    """A `| jq .status` pipeline sees FAILED (it used to see no line at all), with the error."""
    result = cli(server.url, "app", "run", "counting:boom", "-i", '{"text": "x"}', "--stream")
    assert result.returncode == 1 and "failed: RuntimeError: boom: x" in result.stderr
    last = json.loads(result.stdout.splitlines()[-1])
    assert last["status"] == TaskStatus.FAILED and last["error"] == "RuntimeError: boom: x"


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["app", "run", "counting:boom", "-i", '{"text": "x"}'], 1, "failed: RuntimeError: boom: x"),
        (["app", "run", "counting", "-i", '{"times": 99}'], 1, "error: HTTP 422: invalid request: input.text: field required"),
        (["app", "run", "nope"], 1, "error: HTTP 404: unknown app 'nope'"),
        (["app", "run", "counting", "-i", "{nope"], 2, "error: --input is not valid JSON"),
        (["app", "run", "counting", "-i", "[1]"], 2, "error: --input must be a JSON object"),
        (["app", "run", "counting:slow", "-i", '{"text": "t"}', "--timeout", "0.5"], 1, "did not finish within 0.5 s"),
        (["app", "run", "counting", "--timeout", "-5"], 2, "--timeout: expected a number of seconds above 0, got '-5'"),
        (["task", "get", "no-such-task"], 1, "error: HTTP 404: no task 'no-such-task'"),
        (["files", "upload", "/no/such/file.png"], 2, "error: no such file: /no/such/file.png"),
        (["task", "get", "x", "--api-key", "wrong"], 1, "error: HTTP 401: invalid API key"),
    ],
)
def test_failures_are_one_line_and_a_nonzero_exit(server, args, code, message):
    result = cli(server.url, *args)
    assert result.returncode == code, result.stderr
    assert message in result.stderr.splitlines()[-1], result.stderr
    assert result.stdout == ""


def test_no_server_configured_or_reachable():
    missing = cli(None, "task", "get", "x")
    assert missing.returncode == 2 and missing.stderr.startswith("error: no server address: pass --base-url")
    down = cli(None, "task", "get", "x", "--base-url", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and down.stderr.startswith("error: could not connect to http://127.0.0.1:")


def test_files_upload_and_run_with_a_local_file(files_server, tmp_path):
    (tmp_path / "photo.png").write_bytes(b"\x89PNG cli")
    uploaded = cli(files_server.url, "files", "upload", "photo.png", cwd=tmp_path)
    assert uploaded.returncode == 0, uploaded.stderr
    file = json.loads(uploaded.stdout)
    assert file["uri"].startswith(files_server.url + "/files/") and file["filename"] == "photo.png"
    run = cli(files_server.url, "app", "run", "file-app:reverse", "-i", '{"image": "photo.png"}', cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    output = json.loads(run.stdout)["image"]
    assert httpx.get(output["uri"]).content == b"\x89PNG cli"[::-1]


def test_usage_errors_of_upload_and_run_say_what_is_wrong(tmp_path):
    directory = cli("http://127.0.0.1:9", "files", "upload", str(tmp_path))
    assert (directory.returncode, directory.stderr) == (2, f"error: {tmp_path} is a directory; upload its files one by one\n")
    key = cli("http://127.0.0.1:9", "app", "run", "a", "-i", "{}", "--idempotency-key", "é")
    assert key.returncode == 2
    assert key.stderr == "error: idempotency_key must be 1-255 printable ASCII characters, not 'é'\n"
    # Said before anything is sent (it came back from the server: an HTTP 400, exit 1).
    timeout = cli("http://127.0.0.1:9", "app", "run", "a", "-i", "{}", "--session-timeout", "30")
    assert (timeout.returncode, timeout.stderr) == (
        2, "error: --session-timeout is the idle timeout of a new session: add --session new\n")


def wait_running(url: str, proc: subprocess.Popen, stderr_lines: list[str]) -> str:
    """The id of the task the CLI created, once it runs."""
    line = proc.stderr.readline()
    stderr_lines.append(line)
    task_id = line.split()[1]
    deadline = time.monotonic() + 20
    while task_of(url, task_id)["status"] != TaskStatus.RUNNING:
        assert time.monotonic() < deadline, "the task never ran"
        time.sleep(0.05)
    return task_id


def test_ctrl_c_without_a_terminal_cancels_the_task(server):
    proc = start(server.url, "app", "run", "counting:slow", "-i", '{"text": "sigint"}',
                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: list[str] = []
    task_id = wait_running(server.url, proc, seen)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert f"cancelled task {task_id}" in stderr and stdout == ""
    deadline = time.monotonic() + 10
    while task_of(server.url, task_id)["status"] != TaskStatus.CANCELLED:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def read_until(fd: int, needle: bytes, timeout: float = 20) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        assert time.monotonic() < deadline, f"never saw {needle!r} in {seen!r}"
        if select.select([fd], [], [], 0.1)[0]:
            seen += os.read(fd, 4096)
    return seen


def test_ctrl_c_on_a_terminal_asks_first(server):
    """stdin and stderr on a pseudo-terminal: a spinner while waiting, and a question on Ctrl-C."""
    controller, terminal = pty.openpty()
    proc = start(server.url, "app", "run", "counting:slow", "-i", '{"text": "asked"}',
                 stdin=terminal, stdout=subprocess.PIPE, stderr=terminal)
    os.close(terminal)
    try:
        created = read_until(controller, b" created")
        task_id = created.decode().split("task ", 1)[1].split()[0]
        read_until(controller, b"running (")  # the spinner, redrawn in place
        proc.send_signal(signal.SIGINT)
        read_until(controller, f"cancel task {task_id}? [y/N]".encode())
        os.write(controller, b"n\n")  # keep waiting
        read_until(controller, b"running (")
        assert proc.poll() is None and task_of(server.url, task_id)["status"] == TaskStatus.RUNNING
        proc.send_signal(signal.SIGINT)
        read_until(controller, b"[y/N]")
        os.write(controller, b"y\n")
        read_until(controller, f"cancelled task {task_id}".encode())
        assert proc.wait(timeout=20) == 130
    finally:
        proc.kill()
        os.close(controller)


def test_live_progress_on_a_terminal_draws_a_spinner_above_which_logs_scroll():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Terminal()
    view = LiveProgress(err)
    view.update({"status": TaskStatus.RUNNING, "logs": [{"id": "t-0", "content": "loading"}], "output": None})
    time.sleep(0.25)
    view.update({"status": TaskStatus.RUNNING, "logs": [{"id": "t-0", "content": "loading"}], "output": {"n": 1}})
    view.pause()
    text = err.getvalue()
    assert "\r\x1b[Kloading\n" in text and text.count("loading\n") == 1
    assert "\r\x1b[Kprogress: {\"n\": 1}\n" in text
    assert "running (0 s)" in text and text.endswith("\r\x1b[K")


def test_a_second_interrupt_while_cancelling_says_the_task_may_still_run(monkeypatch, capsys):
    """Ctrl-C sent to a process group (`timeout -s INT`) reached the CLI twice: the second, during
    the cancel, ended it with a bare "interrupted", the task still RUNNING and nothing said of it."""
    from types import SimpleNamespace

    from inferencesh_ray.remote_cli import _wait

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    client = SimpleNamespace(tasks=SimpleNamespace(stream=interrupted, cancel=interrupted))
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # no terminal: the first Ctrl-C cancels
    assert _wait(client, "t-1", None, LiveProgress(io.StringIO())) == 130
    assert "interrupted while cancelling: task t-1 may still run (`infsh-ray task cancel t-1` cancels it)" in (
        capsys.readouterr().err)
