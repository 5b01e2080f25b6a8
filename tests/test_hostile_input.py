"""Hostile input against the real HTTP API (in-process, no Ray): property-based over the OpenAPI, and a table.

Schemathesis generates requests for every operation of `/openapi.json` (valid and
invalid by the schema, with and without a key); none may answer 5xx. The table checks
hand-written cases get the right 4xx.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from conftest import APPS
from helpers import make_server, run_api
from hypothesis import HealthCheck, settings

KEY = {"Authorization": "Bearer key-a"}
SERVER = make_server(APPS / "file_app.py", Path(tempfile.mkdtemp(prefix="infsh-hostile-")), keys=("key-a",))
schema = schemathesis.openapi.from_asgi("/openapi.json", SERVER.app)


@schema.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error(case):
    for headers in (KEY, {}):
        response = case.call(headers=headers)
        assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"


def hostile_scenario(tmp_path, requests):
    async def body(client):
        created = await client.post("/files", json={"files": [{"filename": "a.png", "size": 3}]}, headers=KEY)
        file = created.json()["data"][0]
        await client.put(file["upload_url"], content=b"abc")
        answers = []
        for method, path, kwargs in requests:
            kwargs = {**kwargs, "headers": {**KEY, **kwargs.get("headers", {})}}
            if kwargs.get("content") == "CHUNKED":  # no content-length: counted as it streams in
                kwargs["content"] = _chunks(b"x" * (1 << 19), 4)
            answers.append(await client.request(method, path, **kwargs))
        return answers

    return run_api(APPS / "file_app.py", tmp_path, body, keys=("key-a",), max_request_bytes=1 << 20)


async def _chunks(chunk: bytes, count: int):
    for _ in range(count):
        yield chunk


def _nested(depth):
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def run_with(image, **extra):
    return ("POST", "/apps/run", {"json": {"app": "file-app", "function": "inspect", "input": {"image": image, **extra}}})


CASES = [
    # (what, request, status, phrase in detail)
    ("oversized body", ("POST", "/apps/run", {"content": b"x" * (2 << 20)}), 413, "over this server's limit"),
    ("oversized body, chunked", ("POST", "/apps/run", {"content": "CHUNKED"}), 413, "limit"),
    ("deep JSON nesting", ("POST", "/apps/run", {"content": b'{"app":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                                  "headers": {"content-type": "application/json"}}), 400, "nested too deeply"),
    ("deep nesting in the input, parsed", run_with("data:,x", extra=_nested(128)), 400,
     "input is nested more than 128 levels deep"),
    ("NaN in the input", ("POST", "/apps/run", {"content": b'{"app": "file-app:inspect", "input": {"image": "data:,x", '
                                                           b'"extra": [1, NaN]}}', "headers": {"content-type": "application/json"}}),
     400, "input.extra.1: nan is not JSON"),
    ("a number past a float's range, read as inf", ("POST", "/apps/run", {"content": b'{"app": "file-app:inspect", '
                                                 b'"input": {"image": "data:,x", "extra": [1e999]}}', "headers": {
                                                 "content-type": "application/json"}}), 400, "input.extra.0: inf is not JSON"),
    ("NaN in a UTF-16 body", ("POST", "/apps/run", {"content": '{"app": "file-app:inspect", "input": {"image": "data:,x", '
                                                               '"extra": [NaN]}}'.encode("utf-16"), "headers": {
                                                    "content-type": "application/json"}}), 400, "input.extra.0: nan"),
    ("Infinity in the setup", ("POST", "/apps/run", {"content": b'{"app": "file-app:inspect", "input": {"image": "data:,x"}, '
                                                                b'"setup": {"s": -Infinity}}', "headers": {"content-type": "application/json"}}),
     400, "setup.s: -inf is not JSON"),
    ("huge string in a field", run_with("data:text/plain;base64," + "A" * (2 << 20)), 413, "limit"),
    ("wrong type", run_with(42), 422, "input.image: expected a file"),
    ("wrong type of a list", run_with("data:,x", extra="nope"), 422, "input.extra"),
    ("not JSON", ("POST", "/apps/run", {"content": b"{nope", "headers": {"content-type": "application/json"}}), 400,
     "not valid JSON"),
    ("JSON sent as a form, as curl -d does", ("POST", "/apps/run", {"content": b'{"app": "file-app"}', "headers": {
        "content-type": "application/x-www-form-urlencoded"}}), 415, "sent as 'application/x-www-form-urlencoded'"),
    ("no body", ("POST", "/apps/run", {"content": b""}), 400, "the request has no body"),
    ("a body that is no object", ("POST", "/apps/run", {"json": [1]}), 422, "must be a JSON object"),
    ("input is not an object", ("POST", "/apps/run", {"json": {"app": "file-app:inspect", "input": "x"}}), 422, "input"),
    ("dot-dot path in a file field", run_with("../../etc/passwd"), 422, "is refused"),
    ("absolute path in a file field", run_with("/etc/passwd"), 422, "is refused"),
    ("file:// URI in a file field", run_with("file:///etc/passwd"), 422, "is refused"),
    ("unknown keys in a file object", run_with({"uri": "data:,x", "id": "f1", "upload_url": "u"}), 422,
     "input.image: unknown file keys ['id', 'upload_url']; give the file's `uri`"),
    ("path key in a file field", run_with({"uri": "data:,x", "path": "/etc/shadow"}), 422, "never by `path`"),
    ("loopback URL", run_with("http://127.0.0.1:8265/api/jobs/"), 422, "is refused"),
    ("link-local URL", run_with("http://169.254.169.254/latest/meta-data/"), 422, "is refused"),
    ("dot-dot in a file id", ("GET", "/files/..%2F..%2Fetc%2Fpasswd/x", {}), 404, "Not Found"),
    ("not a file id", ("GET", "/files/..%2Fpasswd", {}), 404, "no file"),
    ("invalid session id", ("POST", "/apps/run", {"json": {"app": "file-app:inspect", "input": {"image": "data:,x"},
                                                           "session": "../../x"}}), 404, "no session"),
    ("unicode everywhere", ("POST", "/apps/run", {"json": {"app": "fïle-äpp\u2028", "input": {"ü": "\u2029"}}}), 404,
     "unknown app"),
    ("unicode in a file name", ("POST", "/files", {"json": {"files": [{"filename": "\u202e\u0000☃.png", "size": 1}]}}),
     200, None),
    ("negative size", ("POST", "/files", {"json": {"files": [{"size": -1}]}}), 422, "files.0.size"),
    ("unknown session function", ("POST", "/apps/run", {"json": {"app": "file-app:zap", "input": {}}}), 404, "no function"),
    ("malformed URL in a file field", run_with("http://[::1/x"), 422, "input.image: 'http://[::1/x' is not a valid URL"),
    ("data: URI without a comma", run_with("data:nocomma"), 422, "input.image: malformed data: URI"),
    ("content type with CR LF", ("POST", "/files", {"json": {"files": [{"content_type": "text/plain\r\nX-Evil: 1"}]}}),
     422, "files.0.content_type"),
]


@pytest.mark.parametrize("what, request_, status, phrase", CASES, ids=[case[0] for case in CASES])
def test_hand_written_hostile_requests_get_the_right_4xx(tmp_path, what, request_, status, phrase):
    (response,) = hostile_scenario(tmp_path, [request_])
    assert response.status_code == status, response.text[:500]
    if phrase is not None:
        assert response.headers["content-type"] == "application/problem+json"
        assert phrase in response.json()["detail"], response.json()
    assert "Traceback" not in response.text and "/work/" not in response.text
