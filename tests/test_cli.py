"""`infsh-ray app validate | schema | dev` and `serve`'s checks, driven as a user would, in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from pydantic import ValidationError

from inferencesh_ray.builder import ServeArgs
from inferencesh_ray.errors import AppError
from inferencesh_ray.serve_command import check_keys

EXAMPLE = str(ROOT / "examples" / "image_model")


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "inferencesh_ray.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_validate_lists_functions_and_verbose_rules(apps):
    result = cli("app", "validate", str(apps / "counting.py"))
    assert result.returncode == 0, result.stderr
    assert "✓ run (default): EchoInput -> EchoOutput" in result.stdout
    assert "✓ count: EchoInput yields EchoOutput" in result.stdout
    verbose = cli("app", "validate", str(apps / "skips.py"), "--verbose")
    assert "no_return_hint: SKIPPED" in verbose.stdout
    assert "    ✗ missing return type hint" in verbose.stdout
    assert "good: DISCOVERED" in verbose.stdout
    assert "note: no `run` function" in verbose.stdout
    plain = cli("app", "validate", str(apps / "skips.py"))
    assert "  ✗ returns_dict skipped: return type dict is not a pydantic model\n" in plain.stdout
    assert "_private" not in plain.stdout and "note: a public method not meant as a function" in plain.stdout


def test_default_path_is_inference_py_in_cwd(tmp_path, apps):
    (tmp_path / "inference.py").write_text((apps / "counting.py").read_text())
    (tmp_path / "lifecycle.py").write_text((apps / "lifecycle.py").read_text())  # imported beside it
    result = cli("app", "validate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"app {tmp_path.name.replace('_', '-')!r}" in result.stdout


def test_validate_errors(apps, tmp_path):
    missing = cli("app", "validate", str(tmp_path / "nope.py"))
    assert missing.returncode == 1 and missing.stderr.startswith("error: app file not found")
    none = cli("app", "validate", str(apps / "no_functions.py"))
    assert none.returncode == 1 and "error: no functions found" in none.stderr
    assert "✗ helper skipped: input type int is not a pydantic model" in none.stdout  # why, without --verbose
    broken = cli("app", "validate", str(apps / "broken_import.py"))
    assert broken.returncode == 1
    assert "ImportError: the model weights module is missing" in broken.stderr
    assert "broken_import.py\", line 5" in broken.stderr  # the app's own frames
    assert "Traceback (most recent call last)" not in broken.stderr
    empty_dir = cli("app", "validate", str(tmp_path))
    assert "without an inference.py" in empty_dir.stderr
    no_class = cli("app", "validate", f"{apps / 'counting.py'}:Nope")
    assert "no class 'Nope'" in no_class.stderr and "App" in no_class.stderr


def test_module_reference(apps):
    result = subprocess.run(
        [sys.executable, "-m", "inferencesh_ray.cli", "app", "validate", "counting:App"],
        capture_output=True, text=True, cwd=apps, env={"PYTHONPATH": f"{apps}:{ROOT}"}, timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_schema_to_stdout_and_file(tmp_path):
    result = cli("app", "schema", EXAMPLE)
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert list(schema["functions"]) == ["generate", "upscale", "inpaint", "run"]
    assert schema["setup_schema"]["properties"]["precision"]["enum"] == ["fp32", "fp16"]
    out = tmp_path / "functions_schema.json"
    assert cli("app", "schema", EXAMPLE, "-o", str(out)).returncode == 0
    assert json.loads(out.read_text()) == schema


def test_dev_runs_each_example_function(tmp_path):
    generated = cli("app", "dev", EXAMPLE, "-f", "generate", "--input", '{"width": 32, "height": 24, "seed": 1}')
    assert generated.returncode == 0, generated.stderr
    output = json.loads(generated.stdout)
    assert (output["width"], output["height"]) == (32, 24)
    assert "generating 32x24 texture, seed 1" in generated.stderr  # metadata.log, on stderr
    image = output["image"]["path"]
    (tmp_path / "in.json").write_text(json.dumps({"image": image, "scale": 2}))
    upscaled = cli("app", "dev", EXAMPLE, "-f", "upscale", "--input", f"@{tmp_path / 'in.json'}")
    assert upscaled.returncode == 0, upscaled.stderr
    assert json.loads(upscaled.stdout)["width"] == 64
    inpainted = cli(
        "app", "dev", EXAMPLE, "-f", "inpaint", "--input", json.dumps({"image": image, "box": [4, 4, 8, 8]}),
        "--setup", '{"precision": "fp16"}',
    )
    assert inpainted.returncode == 0, inpainted.stderr
    assert "inpainting 64 pixels" in inpainted.stderr
    default = cli("app", "dev", EXAMPLE, "--input", '{"width": 16, "height": 16}')
    assert default.returncode == 0 and json.loads(default.stdout)["width"] == 16


def test_dev_errors_are_one_clear_line(apps):
    not_json = cli("app", "dev", EXAMPLE, "--input", "{nope")
    assert not_json.returncode == 2 and not_json.stderr.startswith("error: --input is not valid JSON")
    unknown = cli("app", "dev", EXAMPLE, "-f", "sharpen")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == (
        "error: unknown function 'sharpen'; this app's functions are: generate, upscale, inpaint, run"
    )
    invalid = cli("app", "dev", EXAMPLE, "-f", "upscale", "--input", '{"scale": 99}')
    assert invalid.returncode == 1
    assert "image: Field required" in invalid.stderr and "scale: Input should be less than or equal to 8" in invalid.stderr
    bad_setup = cli("app", "dev", EXAMPLE, "--setup", '{"device": "tpu"}')
    assert bad_setup.returncode == 1 and "device: Input should be 'auto', 'cpu' or 'cuda'" in bad_setup.stderr
    crash = cli("app", "dev", str(apps / "counting.py"), "-f", "boom", "--input", '{"text": "t"}')
    assert crash.returncode == 1
    assert "error: RuntimeError: boom: t" in crash.stderr and "counting.py" in crash.stderr
    no_run = cli("app", "dev", str(apps / "skips.py"), "--input", '{"x": 1}')
    assert "this app has no `run` function, so name one; its functions are: good, with_metadata" in no_run.stderr
    missing_file = cli("app", "dev", EXAMPLE, "--input", "@/no/such.json")
    assert missing_file.returncode == 2 and "cannot read /no/such.json" in missing_file.stderr


def test_serve_flags_that_belong_in_a_config_are_refused_with_one():
    result = cli("serve", "deployments/image_model.yaml", "--replicas", "2", "--name", "x", cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: --name, --replicas apply to an app path; with a config file, set them in its `args:`"
    )
    assert cli("serve", str(ROOT / "tests" / "apps" / "counting.py"), "--replicas", "0").returncode == 2


def test_serve_checks_each_apps_keys_where_it_can_be_reached(tmp_path, monkeypatch):
    """A config's own `api_keys_file` guards its app (it used to be ignored: only the environment counted)."""
    monkeypatch.delenv("INFERENCESH_RAY_API_KEYS", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keys.txt").write_text("# one key\nk1\n")
    keyed = {"api_keys_file": "keys.txt", "listen": "0.0.0.0:8124"}
    assert check_keys([keyed], "0.0.0.0") is True
    assert check_keys([{}], "127.0.0.1") is False  # loopback only: allowed, and said
    with pytest.raises(AppError, match="refusing to listen on 0.0.0.0 with no API keys"):
        check_keys([keyed, {"listen": "127.0.0.1:8125"}], "0.0.0.0")  # the second app reached through the proxy
    with pytest.raises(AppError, match="refusing to listen on 0.0.0.0 .*in the app's `args:` for a config"):
        check_keys([{"listen": "0.0.0.0:8124"}], "127.0.0.1")
    with pytest.raises(AppError, match="api_keys_file: cannot read missing.txt: No such file"):
        check_keys([{"api_keys_file": "missing.txt"}], "127.0.0.1")
    monkeypatch.setenv("INFERENCESH_RAY_API_KEYS", "k2")
    assert check_keys([{"listen": "0.0.0.0:8124"}], "0.0.0.0") is True


def test_a_relative_api_keys_file_is_pinned_when_the_app_is_built(tmp_path, monkeypatch):
    """The ingress replica opens it, maybe in another directory: the path is made absolute, and a
    missing file fails the deploy by name instead of the replica's start."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keys.txt").write_text("k1\n")
    assert ServeArgs(path="app.py", api_keys_file="keys.txt").api_keys_file == str(tmp_path / "keys.txt")
    with pytest.raises(ValidationError, match="api_keys_file\n.*no such file: nope.txt"):
        ServeArgs(path="app.py", api_keys_file="nope.txt")


def test_num_cpus_and_num_gpus_reach_each_app_replica_and_not_the_ingress(apps):
    from inferencesh_ray.builder import build

    ingress = build(ServeArgs(path=str(apps / "counting.py"), num_cpus=0.25, num_gpus=0.5))._bound_deployment
    replica = ingress.init_args[1]["counting"]._bound_deployment
    assert replica.ray_actor_options == {"num_cpus": 0.25, "num_gpus": 0.5}
    assert ingress.ray_actor_options == {"num_cpus": 1}
    default = build(ServeArgs(path=str(apps / "counting.py")))._bound_deployment.init_args[1]["counting"]
    assert default._bound_deployment.ray_actor_options == {"num_cpus": 1}  # Serve's own default, untouched
    refused = cli("serve", str(apps / "counting.py"), "--num-gpus", "-1")
    assert (refused.returncode, refused.stderr) == (2, "error: --num-gpus must be 0 or more\n")


def test_a_module_reference_resolves_from_the_current_directory_under_the_console_script(tmp_path):
    (tmp_path / "pkgapp").mkdir()
    (tmp_path / "pkgapp" / "__init__.py").write_text("")
    (tmp_path / "pkgapp" / "inference.py").write_text(
        "from pydantic import BaseModel\n\nclass In(BaseModel):\n    x: int = 0\n\n"
        "class App:\n    def run(self, data: In) -> In:\n        return data\n"
    )
    # A console script's sys.path lacks the current directory, unlike `python -m`'s.
    script = "import sys; sys.path.pop(0); from inferencesh_ray.cli import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", script, "app", "validate", "pkgapp.inference"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "✓ run (default): In -> In" in result.stdout
    # `serve` finds it too (it said "is neither a file, an app directory nor an importable module"),
    # here up to the class it checks before Ray starts.
    served = subprocess.run(
        [sys.executable, "-c", script, "serve", "pkgapp.inference:Missing"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60,
    )
    assert served.returncode == 1 and "no class 'Missing' in pkgapp.inference" in served.stderr, served.stderr


def test_unreadable_files_and_inputs_that_are_no_object_are_usage_errors(tmp_path, apps):
    utf16 = tmp_path / "input.json"
    utf16.write_bytes(b"\xff\xfe{\x00}\x00")
    not_utf8 = cli("app", "dev", str(apps / "counting.py"), "--input", f"@{utf16}")
    assert not_utf8.returncode == 2
    assert not_utf8.stderr == f"error: --input: {utf16} is not UTF-8 text (byte 0); save it as UTF-8 JSON\n"
    unwritable = cli("app", "schema", str(apps / "counting.py"), "-o", str(tmp_path / "no" / "such" / "dir.json"))
    assert unwritable.returncode == 2
    assert unwritable.stderr.startswith(f"error: --output: cannot write {tmp_path / 'no' / 'such' / 'dir.json'}: ")
    a_list = cli("app", "dev", str(apps / "counting.py"), "--input", "[1]")
    assert (a_list.returncode, a_list.stderr) == (2, "error: --input must be a JSON object\n")  # as `app run` says


def test_a_file_without_the_class_is_named_by_its_path(tmp_path):
    (tmp_path / "inference.py").write_text("class Foo:\n    pass\n")
    result = cli("app", "validate", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {tmp_path}: no class 'App' in {tmp_path / 'inference.py'}; ")


def test_log_records_made_outside_a_task_still_reach_stderr():
    # The capture's handler sits on the root logger; a record outside any task (the host's
    # own "internal error" traceback) used to vanish there when no other handler was set.
    script = (
        "import logging; from inferencesh_ray import logs\n"
        "with logs.capture(lambda line: None):\n    logging.getLogger('app').warning('inside a task')\n"
        "logging.getLogger('inferencesh_ray.host').error('outside a task')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "outside a task\n"


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_in_app_dev_unloads_after_a_sync_function_returns_and_twice_quits_at_once(apps, tmp_path, presses):
    """Once: stop, and unload only once the function's thread has returned (it used to unload
    under it). Twice: leave at once, unload skipped (exiting normally would wait for the thread)."""
    events = tmp_path / "events.log"
    seconds = 2 if presses == 1 else 30  # the second Ctrl-C must not wait the 30 s out
    process = subprocess.Popen(
        [sys.executable, "-m", "inferencesh_ray.cli", "app", "dev", str(apps / "long_sync.py"),
         "-i", json.dumps({"seconds": seconds})],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ | {"INFSH_TEST_EVENTS": str(events)},
    )
    try:
        while "run:start" not in (events.read_text() if events.exists() else ""):
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        started = time.monotonic()
        for _ in range(presses):
            process.send_signal(signal.SIGINT)
            time.sleep(0.5)
        _, err = process.communicate(timeout=20)
    finally:
        process.kill()
    recorded = [line.split(" ", 1)[1] for line in events.read_text().splitlines()]
    assert process.returncode == 130 and "unload runs once the function has returned" in err
    if presses == 1:
        assert recorded == ["setup", "run:start", "run:end", "unload"]
    else:
        assert time.monotonic() - started < 5 and "interrupted (unload skipped)" in err
        assert recorded == ["setup", "run:start"]


def test_serve_says_ready_only_once_the_proxy_routes_the_app(monkeypatch):
    """An app is RUNNING before Serve's proxy has its route; until then requests there are 404s."""
    import threading

    from client_support import serving
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from inferencesh_ray.serve_command import _proxy_url, _wait_routed

    asked = []

    def routes(request):
        asked.append(1)
        if len(asked) < 3:
            return PlainTextResponse("Route table is not populated yet.", status_code=503)
        return JSONResponse({"/other": "other", **({"/": "mine"} if len(asked) >= 5 else {})})

    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # the proxy's table is never asked through one
    with serving(Starlette(routes=[Route("/-/routes", routes)])) as url:
        assert _wait_routed(url, ["mine"], threading.Event(), timeout_s=10)
        assert len(asked) == 5
        assert not _wait_routed(url, ["absent"], threading.Event(), timeout_s=0.5)
    assert _wait_routed("http://127.0.0.1:9", [], threading.Event())  # no HTTP route to wait for
    assert _proxy_url("0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert _proxy_url("::", 8000) == "http://[::1]:8000"
    assert _proxy_url("10.1.2.3", 80) == "http://10.1.2.3:80"
    assert _proxy_url("[::1]", 80) == "http://[::1]:80"


def test_what_unload_prints_goes_to_stderr_and_stdout_stays_the_output_json(tmp_path):
    (tmp_path / "inference.py").write_text(
        "import logging\n"
        "from pydantic import BaseModel\n"
        "class In(BaseModel):\n    text: str\n"
        "class App:\n"
        "    def run(self, input_data: In) -> In:\n        return input_data\n"
        "    def unload(self) -> None:\n"
        "        print('unloading')\n        logging.getLogger('app').warning('freed')\n"
    )
    result = cli("app", "dev", str(tmp_path), "--input", '{"text": "hi"}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"text": "hi"}  # `app dev ... | jq` works
    assert result.stderr.endswith("unloading\nWARNING app: freed\n")
