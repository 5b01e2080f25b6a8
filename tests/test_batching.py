"""Dynamic batching: `@batched`, its discovery and schemas, and how the app host groups calls."""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
import time

import pytest
from helpers import events_of, run_api, wait_terminal
from test_cli import cli
from test_discovery import failed, reports

from inferencesh_ray import batched
from inferencesh_ray.batching import BatchSpec
from inferencesh_ray.catalog import AppCatalog, AppInfo
from inferencesh_ray.errors import AppError
from inferencesh_ray.events import Completed, Failed, Log, Running, SettingUp
from inferencesh_ray.host import AppHost, Call
from inferencesh_ray.loader import load_app
from inferencesh_ray.problems import ApiProblem
from inferencesh_ray.schema import functions_schema
from inferencesh_ray.status import TaskStatus


@pytest.fixture
def app(apps):
    """The batched test app: (its class, the texts of each batch it ran, its lifecycle events)."""
    loaded = load_app(str(apps / "batched_app.py"))
    loaded.module.BATCHES.clear()
    loaded.module.EVENTS.clear()
    return loaded.app_cls, loaded.module.BATCHES, loaded.module.EVENTS


def embeds(*texts: str, function: str = "embed", **setup) -> list[Call]:
    return [Call(function, {"text": text}, setup or None) for text in texts]


async def run_together(host: AppHost, calls: list[Call]) -> list[list]:
    """Each call's events, the calls started at the same moment."""
    return await asyncio.gather(*(events_of(host, call) for call in calls))


def run_on(app_cls, scenario, **host_options):
    return asyncio.run(scenario(AppHost(app_cls, **host_options)))


# The decorator


def test_batched_marks_the_function_and_checks_its_settings():
    async def embed(self, inputs): ...

    assert batched(max_batch_size=32, max_wait_ms=5)(embed) is embed
    assert embed.__infsh_batch__ == BatchSpec(max_batch_size=32, max_wait_ms=5)
    assert batched(embed).__infsh_batch__ == BatchSpec()  # bare @batched: the defaults
    for settings, message in [
        ({"max_batch_size": 0}, "max_batch_size must be a whole number >= 1, got 0"),
        ({"max_batch_size": 2.5}, "max_batch_size must be a whole number >= 1"),
        ({"max_batch_size": True}, "max_batch_size must be a whole number >= 1"),
        ({"max_wait_ms": -1}, "max_wait_ms must be a number of milliseconds >= 0, got -1"),
        ({"max_wait_ms": float("inf")}, "max_wait_ms must be a number of milliseconds >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            batched(**settings)
    with pytest.raises(TypeError, match="by name: @batched\\(max_batch_size=32"):
        batched(32)


# Discovery and schemas


def test_discovery_takes_the_element_types_and_names_each_wrong_signature(apps):
    discovery, by_name = reports(apps / "batched_skips.py")
    assert list(discovery.functions) == ["good"]
    good = discovery.functions["good"]
    assert (good.input_model.__name__, good.output_model.__name__, good.call_kind) == ("In", "Out", "sync")
    assert good.batch == BatchSpec(max_batch_size=2, max_wait_ms=0)
    assert "batched (max 2 per batch, waits up to 0 ms)" in [rule.text for rule in by_name["good"].rules]
    assert failed(by_name["lists_unbatched"]) == [
        "input type list[In] is not a pydantic model (a function on list[Model] must be @batched)",
        "return type list[Out] is not a pydantic model (a function on list[Model] must be @batched)",
    ]
    assert failed(by_name["single_input"]) == [
        "input type In is not a list of pydantic models; a @batched function takes list[Model]"
    ]
    assert failed(by_name["single_output"]) == [
        "return type Out is not a list of pydantic models; a @batched function returns list[Model]"
    ]
    assert failed(by_name["list_of_ints"]) == [
        "input type list[int] is not a list of pydantic models; a @batched function takes list[Model]"
    ]
    assert failed(by_name["generator"]) == ["@batched, but an async generator: a batched function returns a list"]


def test_schemas_and_validation_are_per_element(apps):
    loaded = load_app(str(apps / "batched_app.py"))
    schema = functions_schema(AppHost(loaded.app_cls).discovery)
    embed = schema["functions"]["embed"]
    assert embed["input_schema"]["title"] == "EmbedInput" and list(embed["input_schema"]["properties"]) == ["text", "fail"]
    assert embed["output_schema"]["title"] == "EmbedOutput"
    assert embed["description"].startswith("Echo each text")
    catalog = AppCatalog([AppInfo(name="batched", schema=schema)])
    info = catalog.app("batched")
    assert catalog.validate(info, "embed", {"text": "one"}, None)[0] == {"text": "one"}
    with pytest.raises(ApiProblem):
        catalog.validate(info, "embed", [{"text": "a list is not one task's input"}], None)


def test_deployment_overrides_are_applied_and_checked(app):
    app_cls, _, _ = app
    host = AppHost(app_cls, batching={"embed": {"max_batch_size": 64, "max_wait_ms": 10}, "slow": {"max_wait_ms": 0}})
    assert host.functions["embed"].batch == BatchSpec(max_batch_size=64, max_wait_ms=10)
    assert host.functions["slow"].batch == BatchSpec(max_batch_size=8, max_wait_ms=0)
    batched_names = "embed, embed_sync, explode, drop_one, slow"
    for overrides, message in [
        ({"nope": {}}, f"batching: 'nope' is an unknown function; this app's batched functions are: {batched_names}"),
        ({"single": {}}, "batching: 'single' is a function that is not @batched; this app's batched functions are"),
        ({"embed": {"max_batch_size": 0}}, "batching of 'embed': max_batch_size must be a whole number >= 1, got 0"),
        ({"embed": {"max_size": 3}}, "batching of 'embed': unknown setting\\(s\\) max_size; the settings are max_batch_size, max_wait_ms"),
        ({"embed": 64}, "batching of 'embed': give a mapping like"),
    ]:
        with pytest.raises(AppError, match=message):
            AppHost(app_cls, batching=overrides)


# The host: grouping and timing


def test_calls_that_arrive_together_run_in_batches_of_at_most_max_batch_size(app):
    app_cls, batches, _ = app
    texts = [f"t{index}" for index in range(10)]
    results = run_on(app_cls, lambda host: run_together(host, embeds(*texts)))
    assert [len(batch) for batch in batches] == [4, 4, 2]
    assert sorted(text for batch in batches for text in batch) == sorted(texts)
    for text, events in zip(texts, results):
        size = next(len(batch) for batch in batches if text in batch)
        assert events[-1] == Completed({"text": text, "batch_size": size, "mode": "a"})
        assert Running() in events
        assert Log(f"batch of {size}") in events  # printed once by the batch: every task's log has it
        own = [event.text for event in events if isinstance(event, Log) and event.text.startswith("embedding")]
        assert own == [f"embedding {text}"]  # metadata[i].log reaches task i only


def test_a_lone_call_waits_max_wait_ms_and_a_full_batch_does_not_wait(app):
    app_cls, batches, _ = app

    async def scenario(host):
        await events_of(host, Call("embed", {"text": "warm"}))  # setup, out of the timing
        started = time.monotonic()
        await events_of(host, Call("embed", {"text": "alone"}))
        lone = time.monotonic() - started
        started = time.monotonic()
        host_full = AppHost(app_cls, batching={"embed": {"max_wait_ms": 5000}})
        await run_together(host_full, embeds("a", "b", "c", "d"))
        return lone, time.monotonic() - started

    lone, full = run_on(app_cls, scenario, batching={"embed": {"max_wait_ms": 200}})
    assert 0.19 <= lone < 1.0, lone
    assert full < 1.0, full  # 4 = max_batch_size: it ran at once, not after 5 s
    assert batches[-1] == ["a", "b", "c", "d"]


def test_different_setup_configs_never_share_a_batch(app):
    app_cls, batches, lifecycle = app
    calls = embeds("a1", "a2", "a3", mode="a") + embeds("b1", "b2", "b3", mode="b")
    results = run_on(app_cls, lambda host: run_together(host, calls))
    assert sorted(batches) == [["a1", "a2", "a3"], ["b1", "b2", "b3"]]
    for call, events in zip(calls, results):
        assert events[-1] == Completed({"text": call.input["text"], "batch_size": 3, "mode": call.setup["mode"]})
        assert events.count(SettingUp()) <= 1
    assert lifecycle == ["setup:a", "unload:a", "setup:b"]


def test_a_sync_batched_function_runs_once_per_batch_in_a_thread(app):
    app_cls, batches, lifecycle = app
    results = run_on(app_cls, lambda host: run_together(host, embeds("x", "y", "z", function="embed_sync")))
    assert batches == [["x", "y", "z"]]
    assert lifecycle == ["setup:a", "embed_sync:main_thread=False"]
    for events in results:
        assert Log("sync batch of 3") in events and events[-1].output["batch_size"] == 3


# The host: failures


def test_an_exception_in_an_elements_place_fails_only_that_task(app):
    app_cls, batches, _ = app
    calls = [Call("embed", {"text": "a"}), Call("embed", {"text": "b", "fail": True}), Call("embed", {"text": "c"})]
    first, bad, last = run_on(app_cls, lambda host: run_together(host, calls))
    assert batches == [["a", "b", "c"]]
    assert bad[-1] == Failed("ValueError: cannot embed b")
    assert first[-1] == Completed({"text": "a", "batch_size": 3, "mode": "a"})
    assert last[-1] == Completed({"text": "c", "batch_size": 3, "mode": "a"})


def test_an_exception_of_the_function_fails_every_task_of_the_batch(app):
    app_cls, _, _ = app
    results = run_on(app_cls, lambda host: run_together(host, embeds("a", "b", "c", function="explode")))
    for events in results:
        assert isinstance(events[-1], Failed) and events[-1].error == "RuntimeError: the model ran out of memory"
        assert "batched_app.py" in events[-1].traceback


def test_a_wrong_number_of_outputs_fails_every_task_saying_so(app):
    app_cls, _, _ = app
    results = run_on(app_cls, lambda host: run_together(host, embeds("a", "b", "c", function="drop_one")))
    for events in results:
        assert events[-1] == Failed(
            "drop_one returned 2 outputs for 3 inputs; "
            "a batched function returns a list with one EmbedOutput per input, in order"
        )


def test_invalid_input_fails_its_own_task_before_batching(app):
    app_cls, batches, _ = app
    calls = [Call("embed", {"text": "ok"}), Call("embed", {"fail": True})]
    good, bad = run_on(app_cls, lambda host: run_together(host, calls))
    assert bad[-1].error == "invalid input: text: Field required"
    assert good[-1].output["batch_size"] == 1 and batches == [["ok"]]


def test_stop_iteration_in_a_sync_batched_function_fails_its_batch_and_the_next_batch_runs(apps):
    app_cls = load_app(str(apps / "stop_iteration.py")).app_cls

    async def scenario(host):
        # Without the fix the batch never ends, and the function's later batches wait behind it.
        failed_batch = await asyncio.wait_for(run_together(host, embeds("zz", "a")), 5)
        after = await asyncio.wait_for(events_of(host, Call("embed", {"text": "a"})), 5)
        return failed_batch, after

    failed_batch, after = run_on(app_cls, scenario)
    for events in failed_batch:
        assert events[-1].error == (
            "RuntimeError: embed raised StopIteration (next() on an exhausted iterator?); "
            "catch it, or give next() a default"
        )
        assert "in _look_up" in events[-1].traceback
    assert after[-1] == Completed({"text": "A"})


def test_a_cancelled_error_in_an_elements_place_fails_that_task_not_cancels_it(apps):
    app_cls = load_app(str(apps / "batched_subtasks.py")).app_cls
    calls = [Call("run", {"text": "ok"}), Call("run", {"text": "slow"})]
    done, late = run_on(app_cls, lambda host: run_together(host, calls))
    assert done[-1] == Completed({"text": "ok"})
    assert isinstance(late[-1], Failed) and late[-1].error == "CancelledError"


# The host: cancellation


async def start(host: AppHost, call: Call) -> asyncio.Task:
    task = asyncio.create_task(events_of(host, call))
    await asyncio.sleep(0)
    return task


async def cancelled(task: asyncio.Task) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_task_cancelled_before_its_batch_starts_leaves_the_group(app):
    app_cls, batches, _ = app

    async def scenario(host):
        first, gone, last = [await start(host, call) for call in embeds("a", "gone", "c")]
        await asyncio.sleep(0.05)  # all three wait for the batch (max_wait_ms 300)
        await cancelled(gone)
        return await first, await last

    first, last = run_on(app_cls, scenario, batching={"embed": {"max_wait_ms": 300}})
    assert batches == [["a", "c"]]
    assert first[-1].output["batch_size"] == 2 and last[-1].output["text"] == "c"


def test_a_task_cancelled_while_its_batch_runs_leaves_the_batch_running(app):
    app_cls, batches, lifecycle = app

    async def scenario(host):
        gone, kept = [await start(host, call) for call in embeds("gone", "kept", function="slow")]
        while "slow:start:2" not in lifecycle:
            await asyncio.sleep(0.01)
        await cancelled(gone)
        return await kept

    kept = run_on(app_cls, scenario)
    assert kept[-1] == Completed({"text": "kept", "batch_size": 2, "mode": "a"})
    assert "slow:cancelled" not in lifecycle and batches == [["gone", "kept"]]


def test_when_every_task_of_a_running_batch_is_cancelled_the_call_is_too(app):
    app_cls, _, lifecycle = app

    async def scenario(host):
        tasks = [await start(host, call) for call in embeds("x", "y", function="slow")]
        while "slow:start:2" not in lifecycle:
            await asyncio.sleep(0.01)
        for task in tasks:
            await cancelled(task)
        return await events_of(host, Call("embed", {"text": "next"}))

    after = run_on(app_cls, scenario)
    assert "slow:cancelled" in lifecycle
    assert after[-1] == Completed({"text": "next", "batch_size": 1, "mode": "a"})


# The dev loop, validate and the HTTP API


def test_validate_explains_the_batched_signature_and_dev_runs_a_batch_of_one(apps):
    path = str(apps / "batched_app.py")
    summary = cli("app", "validate", path)
    assert "  ✓ embed: EmbedInput -> EmbedOutput, batched (max 4 per batch, waits up to 50 ms)" in summary.stdout
    verbose = cli("app", "validate", path, "--verbose")
    assert (
        "    = embed: batched (max 4 per batch, waits up to 50 ms); takes list[EmbedInput], returns list[EmbedOutput]; "
        "each task sends one EmbedInput and gets one EmbedOutput"
    ) in verbose.stdout
    dev = cli("app", "dev", path, "-f", "embed", "--input", '{"text": "hello"}')
    assert dev.returncode == 0, dev.stderr
    assert json.loads(dev.stdout) == {"text": "hello", "batch_size": 1, "mode": "a"}
    assert "running embed...\nbatch of 1\nembedding hello" in dev.stderr
    failing = cli("app", "dev", path, "-f", "embed", "--input", '{"text": "no", "fail": true}')
    assert failing.returncode == 1 and "error: ValueError: cannot embed no" in failing.stderr


def test_tasks_sent_together_over_http_are_batched(apps, tmp_path):
    async def body(client):
        created = await asyncio.gather(
            *(client.post("/apps/run", json={"app": "batched-app:embed", "input": {"text": f"t{i}"}}) for i in range(4))
        )
        return [await wait_terminal(client, response.json()["data"]["id"]) for response in created]

    done = run_api(apps / "batched_app.py", tmp_path, body)
    assert [task["status"] for task in done] == [TaskStatus.COMPLETED] * 4
    assert sorted(task["output"]["text"] for task in done) == ["t0", "t1", "t2", "t3"]
    assert max(task["output"]["batch_size"] for task in done) > 1


# The host: input files


@pytest.fixture
def files_app(apps):
    """The batched files app: (its class, its lifecycle events)."""
    loaded = load_app(str(apps / "batched_files.py"))
    loaded.module.EVENTS.clear()
    return loaded.app_cls, loaded.module.EVENTS


@pytest.fixture
def scratch_dirs(tmp_path, monkeypatch):
    """The tasks' scratch directories that exist now (made under tmp_path for the test)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return lambda: sorted(tmp_path.glob("infsh-task-*"))


def doc(blob: bytes) -> dict[str, str]:
    return {"doc": "data:text/plain;base64," + base64.b64encode(blob).decode()}


def test_a_task_cancelled_while_its_batch_runs_leaves_its_input_files_to_the_batch(files_app, scratch_dirs):
    app_cls, lifecycle = files_app

    async def scenario(host):
        gone, kept = [await start(host, Call("read", doc(b"hello"))) for _ in range(2)]
        while "read:start:2" not in lifecycle:
            await asyncio.sleep(0.01)
        await cancelled(gone)  # the batch reads gone's file after this
        return await kept

    kept = run_on(app_cls, scenario)
    assert kept[-1] == Completed({"size": 5})
    assert scratch_dirs() == []  # the batch let go of gone's files when it ended


def test_each_task_writes_its_outputs_in_its_own_directory_which_goes_once_they_are_stored(files_app, scratch_dirs, tmp_path):
    from helpers import local_files

    from inferencesh_ray.file_access import FileScope

    app_cls, _ = files_app
    scope = FileScope(owner="me", base_url="http://server")
    calls = [Call("write", doc(b"one"), scope=scope), Call("write", doc(b"three"), scope=scope)]
    results = run_on(app_cls, lambda host: run_together(host, calls), files=local_files(tmp_path / "store"))
    stored = [events[-1].output["doc"] for events in results]
    assert [file["size"] for file in stored] == [3, 5]  # not one task's file stored for both
    assert [file["filename"] for file in stored] == ["out.txt", "out.txt"]
    blobs = sorted(path.read_bytes() for path in (tmp_path / "store").rglob("*") if path.is_file() and path.suffix != ".json")
    assert b"ONE" in blobs and b"THREE" in blobs
    assert scratch_dirs() == []  # the written files went with their tasks


def test_in_the_dev_loop_output_files_stay_where_the_app_wrote_them(files_app, scratch_dirs):
    app_cls, _ = files_app
    results = run_on(app_cls, lambda host: run_together(host, [Call("write", doc(b"one")), Call("write", doc(b"two"))]))
    paths = [events[-1].output["doc"]["path"] for events in results]
    assert [open(path, "rb").read() for path in paths] == [b"ONE", b"TWO"]  # nothing stores a copy of them
    assert scratch_dirs() == []


def test_batched_tasks_input_files_live_until_their_outputs_are_published_and_no_longer(files_app, scratch_dirs):
    app_cls, _ = files_app

    async def scenario(host):
        gone = await start(host, Call("echo", doc(b"never batched")))
        await asyncio.sleep(0.05)  # it waits for its batch (max_wait_ms 300)
        await cancelled(gone)
        left_after_cancel = scratch_dirs()
        return left_after_cancel, await run_together(host, [Call("echo", doc(b"one")), Call("echo", doc(b"three"))])

    left_after_cancel, results = run_on(app_cls, scenario, batching={"echo": {"max_wait_ms": 300}})
    assert left_after_cancel == []
    assert [events[-1].output["doc"]["size"] for events in results] == [3, 5]  # published after the batch ended
    assert scratch_dirs() == []


def test_batches_run_apart_from_the_caller_that_started_the_queue():
    """The drainer inherited its first caller's context, and kept it for every later batch:
    on a replica, the app's Ray calls in them counted as that request's, cancelled with it."""
    import contextvars

    from inferencesh_ray.batching import Batcher

    request = contextvars.ContextVar("request", default=None)
    seen: list = []

    async def run_batch(key, items):
        seen.append(request.get())
        return items

    async def body():
        request.set("the first request")
        return await Batcher(run_batch).submit("key", BatchSpec(max_batch_size=2, max_wait_ms=1), "item")

    assert asyncio.run(body()) == "item" and seen == [None]
