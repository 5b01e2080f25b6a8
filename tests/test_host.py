"""The app host: setup per config, calls, logs, generators, errors, cancel, files."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import AsyncGenerator

import pytest
from helpers import events_of
from pydantic import BaseModel

from inferencesh_ray.events import Completed, Failed, Log, Output, Running, SettingUp, Uploading
from inferencesh_ray.host import AppHost, Call
from inferencesh_ray.loader import load_app
from inferencesh_ray.status import TaskStatus
from inferencesh_ray.store import TaskStore


@pytest.fixture
def counting(apps):
    loaded = load_app(str(apps / "counting.py"))
    loaded.module.EVENTS.clear()
    return loaded.app_cls, loaded.module.EVENTS


def test_setup_once_per_config_and_unload_before_next_setup(counting):
    app_cls, lifecycle = counting

    async def scenario():
        host = AppHost(app_cls)
        for mode in ["a", "a", "b", "b", "a"]:
            events = await events_of(host, Call("run", {"text": "x"}, {"mode": mode}))
            assert events[-1] == Completed({"text": "x", "mode": mode})
        await host.close()

    asyncio.run(scenario())
    assert lifecycle == ["setup:a", "unload:a", "setup:b", "unload:b", "setup:a", "unload:a"]


def test_events_in_order_with_metadata_log(counting):
    app_cls, _ = counting

    async def scenario():
        host = AppHost(app_cls)
        first = await events_of(host, Call(None, {"text": "hi", "times": 2}))
        second = await events_of(host, Call(None, {"text": "hi"}))
        return first, second

    first, second = asyncio.run(scenario())
    assert first == [SettingUp(), Running(), Log("echoing hi"), Completed({"text": "hihi", "mode": "a"})]
    assert SettingUp() not in second  # same (default) config: already warm


def test_sync_function_prints_are_captured(counting):
    app_cls, _ = counting

    async def scenario():
        return await events_of(AppHost(app_cls), Call("shout", {"text": "hey"}))

    events = asyncio.run(scenario())
    assert Log("shouting hey") in events
    assert events[-1] == Completed({"text": "HEY", "mode": "a"})


def test_async_generator_snapshots(counting):
    app_cls, _ = counting

    async def scenario():
        return await events_of(AppHost(app_cls), Call("count", {"text": "n", "times": 3}))

    events = asyncio.run(scenario())
    snapshots = [event.output["text"] for event in events if isinstance(event, Output)]
    assert snapshots == ["n0", "n1", "n2"]
    assert events[-1] == Completed({"text": "n2", "mode": "a"})


def test_function_errors_carry_message_and_app_frames(counting):
    app_cls, _ = counting

    async def scenario():
        host = AppHost(app_cls)
        boom = await events_of(host, Call("boom", {"text": "bad"}))
        empty = await events_of(host, Call("nothing", {"text": "x"}))
        wrong = await events_of(host, Call("wrong_type", {"text": "x"}))
        after = await events_of(host, Call("run", {"text": "ok"}))
        return boom[-1], empty[-1], wrong[-1], after[-1]

    boom, empty, wrong, after = asyncio.run(scenario())
    assert isinstance(boom, Failed) and boom.error == "RuntimeError: boom: bad"
    assert "counting.py" in boom.traceback and "inferencesh_ray" not in boom.traceback
    # It reaches clients in the task's logs: paths relative to the app's directory, none of the server's.
    assert '  File "counting.py", line ' in boom.traceback and "/" not in boom.traceback
    assert empty.error == "nothing yielded no output"
    assert "wrong_type returned dict, expected EchoOutput" in wrong.error
    assert isinstance(after, Completed)


class Out(BaseModel):
    text: str


class YieldsADict:
    async def run(self, input_data: Out) -> AsyncGenerator[Out, None]:
        yield {"text": "not a model"}  # type: ignore[misc]


def test_a_generator_yielding_the_wrong_type_is_told_so_in_its_own_words():
    failed = asyncio.run(events_of(AppHost(YieldsADict), Call("run", {"text": "x"})))[-1]
    assert isinstance(failed, Failed) and failed.error == "run yielded dict, expected Out"  # not "AppCodeError: ... returned"


def test_failing_setup_fails_the_call_and_the_next_config_still_works(counting):
    app_cls, lifecycle = counting

    async def scenario():
        host = AppHost(app_cls)
        failed = await events_of(host, Call("run", {"text": "x"}, {"fail": True}))
        ok = await events_of(host, Call("run", {"text": "x"}, {"mode": "b"}))
        return failed[-1], ok[-1]

    failed, ok = asyncio.run(scenario())
    assert failed == Failed(failed.error, failed.traceback)
    assert failed.error == "setup failed: ValueError: setup was told to fail"
    assert ok == Completed({"text": "x", "mode": "b"})
    assert lifecycle == ["setup:a", "setup:b"]  # the failed setup is not unloaded


def test_invalid_input_and_setup_name_each_field(counting):
    app_cls, lifecycle = counting

    async def scenario():
        host = AppHost(app_cls)
        bad_input = await events_of(host, Call("run", {"times": "many"}))
        bad_setup = await events_of(host, Call("run", {"text": "x"}, {"mode": "z"}))
        unknown = await events_of(host, Call("nope", {}))
        return bad_input[-1], bad_setup[-1], unknown[-1]

    bad_input, bad_setup, unknown = asyncio.run(scenario())
    assert "text: Field required" in bad_input.error and "times: Input should be a valid integer" in bad_input.error
    assert bad_setup.error.startswith("invalid setup: mode:")
    assert unknown.error.startswith("unknown function 'nope'; this app's functions are: run, shout, count")
    assert lifecycle == []  # nothing invalid ever reaches setup


async def cancel_once_started(host: AppHost, call: Call, lifecycle: list, started: str) -> list:
    """Run `call`, cancel its consumer as soon as `started` is recorded; the events it saw."""
    seen = []

    async def consume():
        async for event in host.run(call):
            seen.append(event)

    task = asyncio.create_task(consume())
    while started not in lifecycle:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return seen


def test_cancel_cancels_the_function_and_the_host_serves_on(counting):
    app_cls, lifecycle = counting

    async def scenario():
        host = AppHost(app_cls)
        seen = await cancel_once_started(host, Call("slow", {"text": "x"}), lifecycle, "slow:start:x")
        after = await events_of(host, Call("run", {"text": "y"}))
        return seen, after[-1]

    seen, after = asyncio.run(scenario())
    assert "slow:cancelled:x" in lifecycle
    assert Running() in seen
    assert after == Completed({"text": "y", "mode": "a"})


def test_a_cancelled_sync_call_ends_at_once_but_its_instance_is_not_unloaded_under_its_thread(counting):
    """The thread of a cancelled sync call runs on: another config's unload and setup (and close's
    unload) wait for it. They used to run while it still used the instance."""
    app_cls, lifecycle = counting

    async def scenario():
        host = AppHost(app_cls)
        seen = await cancel_once_started(host, Call("blocking", {"text": "old", "times": 3}), lifecycle,
                                         "blocking:start:old")
        cancelled_while_running = "blocking:end:old" not in lifecycle
        after = await events_of(host, Call("run", {"text": "new"}, {"mode": "b"}))
        await host.close()
        return seen, cancelled_while_running, after[-1]

    seen, cancelled_while_running, after = asyncio.run(scenario())
    assert Running() in seen and cancelled_while_running
    assert lifecycle == ["setup:a", "blocking:start:old", "blocking:end:old", "unload:a", "setup:b", "unload:b"]
    assert after == Completed({"text": "new", "mode": "b"})


def test_config_switch_waits_for_running_calls(counting):
    app_cls, lifecycle = counting

    async def scenario():
        host = AppHost(app_cls)
        await events_of(host, Call("run", {"text": "warm"}, {"mode": "a"}))
        gate = asyncio.Event()
        original = app_cls.shout

        def blocking_shout(self, data):
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result()
            lifecycle.append("shout:done")
            return original(self, data)

        loop = asyncio.get_running_loop()
        app_cls.shout = blocking_shout
        try:
            slow = asyncio.create_task(events_of(host, Call("shout", {"text": "x"}, {"mode": "a"})))
            await asyncio.sleep(0.05)
            switch = asyncio.create_task(events_of(host, Call("run", {"text": "x"}, {"mode": "b"})))
            await asyncio.sleep(0.05)
            assert lifecycle == ["setup:a"]  # the switch waits for the running call
            gate.set()
            await slow
            return await switch
        finally:
            app_cls.shout = original

    switched = asyncio.run(scenario())
    assert lifecycle == ["setup:a", "shout:done", "unload:a", "setup:b"]
    # Its logs say why it waits (a task QUEUED behind another setup's looked stuck).
    assert switched[0] == Log("waiting for 1 running task(s) with another setup to finish, then setting up "
                              "this one's (more replicas would run them side by side)")


def test_official_app_gets_context_metadata_log_and_files(apps, tmp_path):
    image = tmp_path / "pic.png"
    image.write_bytes(b"\x89PNG fake")
    loaded = load_app(str(apps / "official_app.py"))

    async def scenario():
        host = AppHost(loaded.app_cls)
        run = await events_of(host, Call("run", {"name": "ann", "image": str(image)}, {"greeting": "yo"}))
        save = await events_of(host, Call("save", {"name": "saved text"}, {"greeting": "yo"}))
        return host, run, save

    host, run, save = asyncio.run(scenario())
    assert run[-1] == Completed({"output_meta": None, "message": "yo ann", "image_size": 9, "saved": None})
    assert Log("official app running") in run
    assert any(isinstance(e, Log) and "a warning from logging" in e.text for e in run)
    assert host._app.seen_context
    saved = save[-1].output["saved"]
    assert Uploading() in save  # a local output file is published
    assert open(saved["path"]).read() == "saved text" and saved["filename"].endswith(".txt")


def test_files_in_lists_dicts_and_data_uris(apps, tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("1")
    data_uri = "data:text/plain;base64," + base64.b64encode(b"two!").decode()
    loaded = load_app(str(apps / "schema_app.py"))
    call = Call(
        "run",
        {"zeta": "z", "image": str(one), "images": [{"path": str(one)}, data_uri], "named_images": {"k": str(one)}},
    )

    async def scenario():
        return await events_of(AppHost(loaded.app_cls), call)

    events = asyncio.run(scenario())
    assert isinstance(events[-1], Completed), events[-1]
    files = events[-1].output["files"]
    assert [f["size"] for f in files] == [1, 1, 4, 1]
    assert files[2]["content_type"] == "text/plain"


def test_missing_and_malformed_files_are_input_errors(apps):
    loaded = load_app(str(apps / "schema_app.py"))

    async def scenario():
        host = AppHost(loaded.app_cls)
        missing = await events_of(host, Call("run", {"zeta": "z", "image": "/no/such/file.png"}))
        bad = await events_of(host, Call("run", {"zeta": "z", "image": "data:nonsense", "count": "x"}))
        return missing[-1], bad[-1]

    missing, bad = asyncio.run(scenario())
    assert missing.error == "invalid input: image: no such file: /no/such/file.png"
    assert "image: malformed data: URI" in bad.error and "count: Input should be a valid integer" in bad.error


def test_v1_app_runs(apps):
    loaded = load_app(str(apps / "pydantic_v1_app.py"))

    async def scenario():
        host = AppHost(loaded.app_cls)
        ok = await events_of(host, Call(None, {"name": "bo", "tags": ["a", "b"]}))
        bad = await events_of(host, Call(None, {"tags": "nope"}))
        return ok[-1], bad[-1]

    ok, bad = asyncio.run(scenario())
    assert ok == Completed({"greeting": "hello bo", "count": 2})
    assert "name: field required" in bad.error


def test_host_close_runs_unload(counting):
    app_cls, lifecycle = counting

    async def scenario():
        host = AppHost(app_cls)
        await events_of(host, Call("run", {"text": "x"}))
        await host.close()
        await host.close()  # idempotent

    asyncio.run(scenario())
    assert lifecycle == ["setup:a", "unload:a"]


def test_server_files_never_read_the_servers_disk(apps, tmp_path):
    """The replica's own check, behind the ingress's: a server host refuses paths whoever calls it."""
    from helpers import local_files

    from inferencesh_ray.file_access import FileScope

    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    loaded = load_app(str(apps / "schema_app.py"))
    data_uri = "data:text/plain;base64," + base64.b64encode(b"fine").decode()
    scope = FileScope(owner="me", base_url="http://server")

    async def scenario():
        host = AppHost(loaded.app_cls, files=local_files(tmp_path / "store"))
        results = []
        for value in [str(secret), f"file://{secret}", {"path": str(secret)}, {"uri": data_uri, "path": str(secret)}]:
            results.append((await events_of(host, Call("run", {"zeta": "z", "image": value}, scope=scope)))[-1])
        results.append((await events_of(host, Call("run", {"zeta": "z", "image": data_uri})))[-1])  # no owner
        results.append((await events_of(host, Call("run", {"zeta": "z", "image": data_uri}, scope=scope)))[-1])
        return results

    *refused, allowed = asyncio.run(scenario())
    for event in refused:
        assert isinstance(event, Failed) and event.error.startswith("invalid input: image:"), event
        assert "do not read" not in event.error
    assert isinstance(allowed, Completed), allowed
    assert allowed.output["files"][0]["size"] == 4 and allowed.output["files"][0]["uri"].startswith("http://server/files/")



def test_cancel_of_a_sync_function_stops_waiting_and_drops_its_result(counting):
    app_cls, lifecycle = counting

    async def scenario():
        host = AppHost(app_cls)
        call = Call("blocking", {"text": "s", "times": 5})
        seen = await cancel_once_started(host, call, lifecycle, "blocking:start:s")
        assert "blocking:end:s" not in lifecycle  # cancelled while the thread still ran
        after = await events_of(host, Call("run", {"text": "next"}))
        await asyncio.sleep(1.2)  # the thread finishes on its own; nothing is emitted for it
        return seen, after[-1]

    seen, after = asyncio.run(scenario())
    assert "blocking:end:s" in lifecycle
    assert not any(isinstance(event, Completed) for event in seen)
    assert after == Completed({"text": "next", "mode": "a"})


def test_an_app_with_no_base_class_and_no_setup_runs(apps):
    loaded = load_app(str(apps / "file_app.py"))

    async def scenario():
        host = AppHost(loaded.app_cls)
        data_uri = "data:text/plain;base64," + base64.b64encode(b"hi").decode()
        events = await events_of(host, Call("inspect", {"image": data_uri}))
        await host.close()
        return events[-1]

    done = asyncio.run(scenario())
    assert isinstance(done, Completed) and done.output["sizes"] == [2]


def test_two_apps_with_same_named_helper_modules_each_get_their_own(tmp_path):
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "helpers.py").write_text(f"WHO = {name!r}\n")
        (tmp_path / name / "inference.py").write_text(
            "from pydantic import BaseModel\nfrom helpers import WHO\n\n"
            "class In(BaseModel):\n    x: int = 0\n\nclass Out(BaseModel):\n    who: str\n\n"
            "class App:\n    def run(self, data: In) -> Out:\n        return Out(who=WHO)\n"
        )
    first, second = (load_app(str(tmp_path / name)) for name in ("first", "second"))
    assert first.module.WHO == "first" and second.module.WHO == "second"
    assert load_app(str(tmp_path / "first")).module.WHO == "first"  # loading again changes nothing
    # The tests' own `helpers` (imported before) is what other code still imports.
    assert Path(sys.modules["helpers"].__file__).parent == Path(__file__).parent


def test_grouped_events_carry_a_quick_tasks_running_with_its_end(counting):
    app_cls, lifecycle = counting

    async def scenario():
        host = AppHost(app_cls)
        warm = [group async for group in host.run_grouped(Call("shout", {"text": "a"}))]
        quick = [group async for group in host.run_grouped(Call("shout", {"text": "b"}))]
        slow = [group async for group in host.run_grouped(Call("blocking", {"text": "c"}), hold_running_s=0.05)]
        # Closed early, the call is cancelled at once, as `run`'s is.
        groups = host.run_grouped(Call("slow", {"text": "d"}))
        first = await anext(groups)
        await groups.aclose()
        return warm, quick, slow, first

    warm, quick, slow, first = asyncio.run(scenario())
    assert warm[-1][-3:] == [Running(), Log("shouting a"), Completed({"text": "A", "mode": "a"})]  # after setup's
    # A sync function, in a thread: its print and its end come after Running, in the same message.
    assert quick == [[Running(), Log("shouting b"), Completed({"text": "B", "mode": "a"})]]
    assert slow == [[Running()], [Completed({"text": "c", "mode": "a"})]]  # 0.2 s: Running is not held that long
    assert first == [Running()]
    assert "slow:cancelled:d" in lifecycle


def test_events_sent_together_keep_the_times_they_happened_at(counting, tmp_path):
    app_cls, _ = counting

    async def scenario():
        host = AppHost(app_cls)
        groups = [group async for group in host.run_grouped(Call("blocking", {"text": "t"}), hold_running_s=5)]
        store = TaskStore(str(tmp_path / "tasks.db"))
        task = await store.create("me", {}, "d1")
        for group in groups:
            await store.apply(task["id"], group)
        return groups[-1], await store.get(task["id"], "me")

    last, task = asyncio.run(scenario())
    running, completed = last[-2:]  # held together: one message, sent once the call ended
    assert isinstance(running, Running) and isinstance(completed, Completed)
    assert completed.at - running.at >= 0.2  # `blocking` takes 0.2 s
    times = {event["status"]: datetime.fromisoformat(event["event_time"].replace("Z", "+00:00")) for event in task["events"]}
    assert (times[TaskStatus.COMPLETED] - times[TaskStatus.RUNNING]).total_seconds() >= 0.2


def test_a_consumer_cancelled_while_running_is_held_cancels_the_call(counting):
    app_cls, lifecycle = counting

    async def scenario():
        host = AppHost(app_cls)

        async def consume():
            async for _ in host.run_grouped(Call("slow", {"text": "h"}), hold_running_s=5):
                pass

        consumer = asyncio.create_task(consume())
        while "slow:start:h" not in lifecycle:
            await asyncio.sleep(0.01)
        consumer.cancel()  # the ingress went away while Running waits for company
        with pytest.raises(asyncio.CancelledError):
            await consumer

    asyncio.run(scenario())
    assert "slow:cancelled:h" in lifecycle


def test_stop_iteration_in_sync_app_code_fails_the_task_instead_of_hanging(apps):
    app_cls = load_app(str(apps / "stop_iteration.py")).app_cls
    hint = "raised StopIteration (next() on an exhausted iterator?); catch it, or give next() a default"

    async def scenario():
        host = AppHost(app_cls)
        # On Python 3.11 asyncio cannot hand StopIteration over from a thread: without the fix these never end.
        missing = await asyncio.wait_for(events_of(host, Call("run", {"text": "zz"})), 5)
        found = await asyncio.wait_for(events_of(host, Call("run", {"text": "a"})), 5)
        broken = await asyncio.wait_for(events_of(host, Call("run", {"text": "a"}, {"broken": True})), 5)
        return missing[-1], found[-1], broken[-1]

    missing, found, broken = asyncio.run(scenario())
    assert missing.error == f"RuntimeError: run {hint}"
    assert "stop_iteration.py" in missing.traceback and "in _look_up" in missing.traceback
    assert found == Completed({"text": "A"})  # the instance is free again
    assert broken.error == f"setup failed: RuntimeError: setup {hint}"


def test_metadata_output_dir_outside_a_server_is_one_new_directory_left_in_place():
    from inferencesh_ray import Metadata

    metadata = Metadata()
    assert metadata.output_dir == metadata.output_dir and metadata.output_dir.is_dir()
    assert Metadata().output_dir != metadata.output_dir
    assert "output_dir" not in metadata.model_dump()  # not a fact sent with the task


def test_log_lines_are_numbered_in_the_order_they_leave_the_host(counting):
    """The store keeps each numbered line once, however often a write carrying it is sent."""
    app_cls, _ = counting

    async def scenario():
        host = AppHost(app_cls)
        return [await events_of(host, Call("progress", {"text": "hi", "times": 3})) for _ in range(2)]

    for events in asyncio.run(scenario()):
        logs = [event for event in events if isinstance(event, Log)]
        assert [log.seq for log in logs] == [0, 1, 2]  # per task, from 0


def test_a_tasks_directory_asked_for_after_the_task_ended_is_refused_not_leaked(tmp_path, monkeypatch):
    """A cancelled sync call's thread runs on and may save its output: it made a new directory nobody removed."""
    import tempfile

    from inferencesh_ray.host import _Scratch

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    scratch = _Scratch()
    scratch.release()  # the task ended (cancelled) before the thread got this far
    with pytest.raises(RuntimeError, match="this task has ended"):
        scratch.outputs
    assert list(tmp_path.iterdir()) == []


def test_threads_asking_for_a_tasks_directory_together_get_one(tmp_path, monkeypatch):
    """Four threads saving outputs at once each made a directory, and all but one leaked."""
    import tempfile
    import threading

    from inferencesh_ray.host import _Scratch

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for _ in range(50):
        scratch, seen, start = _Scratch(), [], threading.Barrier(4)

        def save():
            start.wait()
            seen.append(scratch.outputs)

        threads = [threading.Thread(target=save) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(seen)) == 1
        scratch.release()
    assert list(tmp_path.iterdir()) == []


def test_an_unload_that_raises_is_logged_with_the_apps_frames_as_a_replica_or_session_worker_goes(tmp_path, caplog):
    """It escaped a replica's __del__ into Serve's log as a tuple per line, and a session
    worker's release swallowed it: nothing said why the app did not unload."""
    from helpers import local_files

    from inferencesh_ray.replica import AppReplica
    from inferencesh_ray.session_worker import SessionWorker, WorkerSpec

    (tmp_path / "inference.py").write_text(
        "from pydantic import BaseModel\n"
        "class In(BaseModel):\n    text: str\n"
        "class App:\n"
        "    def run(self, data: In) -> In:\n        return data\n"
        "    def unload(self) -> None:\n        raise RuntimeError('the GPU is stuck')\n"
    )
    files = local_files(tmp_path / "files")
    worker = SessionWorker(WorkerSpec("stuck", str(tmp_path), files.config))
    # Its __init__ pins Serve's gRPC server, which needs a replica: the method on a stand-in.
    replica = SimpleNamespace(host=AppHost.load(str(tmp_path), app_id="stuck", files=files))

    async def scenario():
        for host in (worker.host, replica.host):
            await events_of(host, Call("run", {"text": "x"}))
        await worker.close()
        await AppReplica.__del__(replica)

    with caplog.at_level("ERROR"):
        asyncio.run(scenario())
    failures = [record.getMessage() for record in caplog.records if "unload failed" in record.getMessage()]
    assert len(failures) == 2
    for message in failures:
        assert message.startswith("stuck: unload failed: RuntimeError: the GPU is stuck\nTraceback (app frames):")
        assert "inference.py" in message


def test_app_frames_are_named_relative_to_the_files_they_share_and_code_from_strings_keeps_its_name(tmp_path):
    from inferencesh_ray.tracebacks import app_traceback

    (tmp_path / "app" / "appkit").mkdir(parents=True)
    (tmp_path / "app" / "appkit" / "deco.py").write_text("def fail():\n    raise ValueError('deep')\n")
    (tmp_path / "app" / "main.py").write_text("from appkit.deco import fail\n\ndef run():\n    fail()\n")
    sys.path.insert(0, str(tmp_path / "app"))
    try:
        namespace: dict = {}
        # The caught exception's traceback starts in the "<string>" frame, as an app's would start in its method.
        source = "import main\ndef first():\n    try:\n        main.run()\n    except ValueError as exc:\n        return exc\n"
        exec(compile(source, "<string>", "exec"), namespace)
        raised = namespace["first"]()
    finally:
        sys.path.remove(str(tmp_path / "app"))
        for name in ("main", "appkit", "appkit.deco"):
            sys.modules.pop(name, None)
    shown = app_traceback(raised)
    assert str(tmp_path) not in shown
    assert '"<string>", line 4' in shown  # the first frame has no path to make relative
    assert '"main.py", line 4' in shown and f'"appkit{os.sep}deco.py", line 2' in shown


def test_token_deltas_an_official_app_yields_are_passed_over_not_taken_for_its_output():
    """The official contract sends yielded `StreamDelta`s (`LLMDelta`) to a delta channel: the task failed,
    "run yielded LLMDelta, expected Out"."""
    from inferencesh.models import LLMDelta

    class Chat:
        async def run(self, input_data: Out) -> AsyncGenerator[Out, None]:
            for token in ("hel", "lo"):
                yield LLMDelta(response=token)
            yield Out(text="hello")

    events = asyncio.run(events_of(AppHost(Chat), Call("run", {"text": "x"})))
    assert events[-1] == Completed({"text": "hello"})
    assert [event.output for event in events if isinstance(event, Output)] == [{"text": "hello"}]
