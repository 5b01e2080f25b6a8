"""`infsh-ray`: check, describe and try an app locally; serve it; talk to a server.

Conventions: results (JSON) go to stdout, progress and logs to stderr; a failure prints
one `error: ...` line (plus the app's own traceback frames when its code raised) and
exits non-zero. Nothing here needs Ray unless the command serves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from . import logs
from .batching import BatchSpec
from .discovery import AppFunction, Discovery
from .errors import AppCodeError, AppError, InvalidInput
from .events import Cancelled, Completed, Failed, Log, Output, Running, SettingUp
from .host import AppHost, Call
from .loader import DEFAULT_REF, LoadedApp, is_module_ref, load_app
from .schema import functions_schema


class UsageError(Exception):
    """Bad command-line input; the message says what to give instead."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except InvalidInput as exc:
        print(f"error: invalid {exc.what}:", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    except AppError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if isinstance(exc, AppCodeError) and exc.traceback:
            print(exc.traceback, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infsh-ray", description="Serve inference.sh-style apps on Ray Serve.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    app = commands.add_parser("app", help="check, describe and try an app locally (no Ray needed), or run it on a server")
    app_commands = app.add_subparsers(title="app commands", metavar="COMMAND")
    path_help = f"app directory, .py file or package.module:Class (default {DEFAULT_REF})"

    validate = app_commands.add_parser("validate", help="list the app's functions, or say why there are none")
    validate.add_argument("path", nargs="?", default=DEFAULT_REF, help=path_help)
    validate.add_argument("-v", "--verbose", action="store_true", help="show every rule checked for every method")
    validate.set_defaults(handler=_validate)

    schema = app_commands.add_parser("schema", help="print functions_schema.json")
    schema.add_argument("path", nargs="?", default=DEFAULT_REF, help=path_help)
    schema.add_argument("-o", "--output", type=Path, help="write the schema to this file instead of stdout")
    schema.set_defaults(handler=_schema)

    dev = app_commands.add_parser("dev", help="run one function in this process and print its output")
    dev.add_argument("path", nargs="?", default=DEFAULT_REF, help=path_help)
    dev.add_argument("-f", "--function", help="function to call (default: run)")
    dev.add_argument("-i", "--input", default="{}", help="input as JSON, or @file.json (default {})")
    dev.add_argument("-s", "--setup", help="setup config as JSON, or @file.json")
    dev.set_defaults(handler=_dev)

    serve = commands.add_parser("serve", help="serve an app (or a Serve config) on Ray until Ctrl-C")
    serve.add_argument("target", metavar="PATH|CONFIG.yaml", help="an app (as for `app`) or a Serve config file")
    serve.add_argument("--name", help="the app's name for clients (default: its directory's, _ as -)")
    serve.add_argument("--host", help="Serve's proxy listens on this address (default: the config's, else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="Serve's proxy listens on this port (default: the config's, else 8000)")
    serve.add_argument("--replicas", type=int, help="replicas of the app's deployment (default 1)")
    serve.add_argument("--num-cpus", type=float, help="CPUs each replica and session worker reserves (default 1; "
                       "a fraction such as 0.5 leaves room for sessions on a small machine)")
    serve.add_argument("--num-gpus", type=float, help="GPUs each replica and session worker reserves (default 0)")
    serve.add_argument("--listen", metavar="HOST:PORT",
                       help="the ingress also serves the API itself here, without Serve's proxy (faster)")
    serve.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    serve.add_argument("--data-dir", help="where tasks (and, by default, files) live (default $INFERENCESH_RAY_DATA_DIR, else ~/.inferencesh_ray)")
    serve.add_argument("--storage", help="storage root URL for files: file:///... or s3://bucket/prefix (default DATA_DIR/files)")
    serve.add_argument("--api-keys-file", help="file of API keys, one per line (or set INFERENCESH_RAY_API_KEYS)")
    serve.set_defaults(handler=_serve)

    from . import remote_cli  # app run, task, files: the commands that talk to a running server

    remote_cli.add_commands(commands, app_commands)
    return parser


def read_json_arg(value: Optional[str], flag: str) -> Any:
    """Parse `--flag JSON` or `--flag @file.json`."""
    if value is None:
        return None
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{flag}: cannot read {value[1:]}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise UsageError(
                f"{flag}: {value[1:]} is not UTF-8 text (byte {exc.start}); save it as UTF-8 JSON"
            ) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{flag} is not valid JSON ({exc}); pass a JSON object or @file.json") from exc


def _serve(args: argparse.Namespace) -> int:
    from .listener import parse_address
    from .serve_command import serve_forever

    if args.replicas is not None and args.replicas < 1:
        raise UsageError("--replicas must be at least 1")
    for flag, value in (("--num-cpus", args.num_cpus), ("--num-gpus", args.num_gpus)):
        if value is not None and value < 0:
            raise UsageError(f"{flag} must be 0 or more")
    if args.listen is not None:
        try:
            parse_address(args.listen)
        except ValueError as exc:
            raise UsageError(f"--listen: {exc}") from exc
    if Path(args.target).suffix in (".yaml", ".yml"):
        given = [flag for flag, value in [("--name", args.name), ("--replicas", args.replicas),
                 ("--num-cpus", args.num_cpus), ("--num-gpus", args.num_gpus),
                 ("--data-dir", args.data_dir), ("--storage", args.storage), ("--api-keys-file", args.api_keys_file),
                 ("--listen", args.listen)]
                 if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} apply to an app path; with a config file, set them in its `args:`")
    _find_modules_here(args.target)  # a Ray this command starts finds them there too: Ray adds the directory to its workers' path
    return serve_forever(
        args.target,
        name=args.name,
        host=args.host,
        port=args.port,
        replicas=args.replicas,
        resources={"num_cpus": args.num_cpus, "num_gpus": args.num_gpus},
        address=args.address,
        data_dir=args.data_dir,
        storage=args.storage,
        api_keys_file=args.api_keys_file,
        listen=args.listen,
    )


def _load(ref: str) -> LoadedApp:
    _find_modules_here(ref)
    return load_app(ref)


def _find_modules_here(ref: str) -> None:
    if is_module_ref(ref) and os.getcwd() not in sys.path and "" not in sys.path:
        # As under `python -m`: a console script's sys.path lacks the current directory,
        # so `package.module:Class` would not find a package standing in it.
        sys.path.insert(0, os.getcwd())


def _validate(args: argparse.Namespace) -> int:
    loaded = _load(args.path)
    discovery = AppHost(loaded.app_cls).discovery
    out = sys.stdout
    print(f"app {loaded.name!r}: class {loaded.app_cls.__name__} from {loaded.module.__file__ or args.path}", file=out)
    setup = discovery.setup
    if setup.model is not None:
        print(f"setup config: {setup.model.__name__} ({', '.join(_field_names(setup.model))})", file=out)
    if args.verbose:
        _print_rules(discovery)
    if discovery.functions:
        print(f"{len(discovery.functions)} function(s):", file=out)
    for name, fn in discovery.functions.items():
        default = " (default)" if name == discovery.default_function else ""
        arrow = "yields" if fn.call_kind == "generator" else "->"
        batched = f", {fn.batch.describe()}" if fn.batch else ""
        print(f"  ✓ {name}{default}: {fn.input_model.__name__} {arrow} {fn.output_model.__name__}{batched}", file=out)
    skipped = {} if args.verbose else discovery.skipped
    for name, why in skipped.items():
        print(f"  ✗ {name} skipped: {why}", file=out)
    if not discovery.functions:
        raise AppError(
            "no functions found: a function is a public method taking one pydantic input model and "
            "returning a pydantic output model" + ("" if args.verbose or skipped else " (run with --verbose to see each method)")
        )
    if skipped:
        print("  note: a public method not meant as a function is left out quietly with a leading _", file=out)
    if discovery.default_function is None:
        print("  note: no `run` function, so every call must name its function", file=out)
    return 0


def _print_rules(discovery: Discovery) -> None:
    for report in discovery.reports:
        print(f"{report.name}: {'DISCOVERED' if report.discovered else 'SKIPPED'}")
        for rule in report.rules:
            print(f"    {'✓' if rule.passed else '✗'} {rule.text}")
        if report.function is not None and report.function.batch is not None:
            print(f"    = {_batched_signature(report.function, report.function.batch)}")


def _batched_signature(fn: AppFunction, batch: BatchSpec) -> str:
    inputs, outputs = fn.input_model.__name__, fn.output_model.__name__
    return (f"{fn.name}: {batch.describe()}; takes list[{inputs}], returns list[{outputs}]; "
            f"each task sends one {inputs} and gets one {outputs}")


def _field_names(model: type) -> list[str]:
    fields = getattr(model, "model_fields", None) or getattr(model, "__fields__", {})
    return list(fields)


def _schema(args: argparse.Namespace) -> int:
    loaded = _load(args.path)
    text = json.dumps(functions_schema(AppHost(loaded.app_cls).discovery), indent=2) + "\n"
    if args.output:
        try:
            args.output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--output: cannot write {args.output}: {exc.strerror}") from exc
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _dev(args: argparse.Namespace) -> int:
    data = read_json_arg(args.input, "--input")
    setup = read_json_arg(args.setup, "--setup")
    if not isinstance(data, dict):  # as `app run` says: an input is always one object
        raise UsageError("--input must be a JSON object")
    if setup is not None and not isinstance(setup, dict):
        raise UsageError("--setup must be a JSON object")
    loaded = _load(args.path)
    host = AppHost(loaded.app_cls, app_id=loaded.name)
    if not host.functions:
        raise AppError("no functions found (run `infsh-ray app validate --verbose` to see why each method was skipped)")
    function = host.function(args.function)
    host.setup_config(setup)  # a bad config is reported before anything runs
    return asyncio.run(_dev_run(host, Call(function.name, data, setup)))


async def _dev_run(host: AppHost, call: Call) -> int:
    err = sys.stderr
    try:
        async for event in host.run(call):
            if isinstance(event, SettingUp):
                print(f"setting up {host.app_cls.__name__}...", file=err, flush=True)
            elif isinstance(event, Running):
                print(f"running {call.function}...", file=err, flush=True)
            elif isinstance(event, Log):
                print(event.text, file=err, flush=True)
            elif isinstance(event, Output):
                print(f"progress: {json.dumps(event.output)}", file=err, flush=True)
            elif isinstance(event, Completed):
                print(json.dumps(event.output, indent=2))
                return 0
            elif isinstance(event, Failed):
                print(f"error: {event.error}", file=err)
                if event.traceback:
                    print(event.traceback, file=err)
                return 1
            elif isinstance(event, Cancelled):
                print("cancelled", file=err)
                return 130
    except asyncio.CancelledError:  # Ctrl-C
        print("stopping: unload runs once the function has returned (Ctrl-C again to quit at once)",
              file=err, flush=True)
        signal.signal(signal.SIGINT, _quit_now)
        raise
    finally:
        # What `unload` prints is a log line, not part of the output JSON on stdout.
        with logs.capture(lambda line: print(line, file=sys.__stderr__, flush=True)):
            await host.close()
    return 1


def _quit_now(*_: object) -> None:
    # A sync function runs on in a thread nothing can stop, and a normal exit would wait for it.
    print("interrupted (unload skipped)", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(130)


if __name__ == "__main__":
    sys.exit(main())
