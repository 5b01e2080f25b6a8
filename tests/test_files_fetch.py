"""Input files by URI: malformed URLs and data: URIs refused naming the field, remote fetches that fail
saying why, and a remote fetch connecting only to the public address it checked."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading

import pytest
from helpers import local_files, run_api, wait_terminal

from inferencesh_ray.file_access import DataUri, FileFetchError, FileScope, parse_data_uri
from inferencesh_ray.status import TaskStatus

A = {"Authorization": "Bearer key-a"}


class _Handler(http.server.BaseHTTPRequestHandler):
    redirects = {"/to-ftp": "ftp://8.8.8.8/x", "/to-bad": "http://[::1/x"}

    def do_GET(self):
        if self.path in self.redirects:
            self.send_response(302)
            self.send_header("location", self.redirects[self.path])
            self.end_headers()
            return
        body = b"internal only"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def local_site():
    """An HTTP server on loopback: what an internal service looks like to the fetch."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def run_inputs(apps, tmp_path, images, **files_options):
    """POST /apps/run once per image; the 422 answer, or the finished task."""

    async def body(client):
        results = []
        for image in images:
            run = {"app": "file-app", "function": "inspect", "input": {"image": image}}
            created = await client.post("/apps/run", json=run, headers=A)
            results.append(created if created.status_code != 200 else await wait_terminal(client, created.json()["data"]["id"], A))
        return results

    return run_api(apps / "file_app.py", tmp_path, body, ("key-a",), local_files(tmp_path / "files", **files_options))


MALFORMED = [
    ("http://[::1/x", "is not a valid URL"),
    ("http://8.8.8.8:99999/x", "is not a valid URL"),
    ("http://8.8.8.8:abc/x", "is not a valid URL"),
    ("data:image/png;base64,@@@", "not valid base64"),
    ("data:;base64,YW Jj", "not valid base64"),
    ("data:nocomma", "no comma"),
    ("data:<b>,x", "is not a media type"),
]


@pytest.mark.parametrize("uri, why", MALFORMED)
def test_malformed_urls_and_data_uris_are_422_naming_the_field(apps, tmp_path, uri, why):
    (response,) = run_inputs(apps, tmp_path, [uri], allow_remote_urls=True)
    assert response.status_code == 422, response.text[:300]
    error = response.json()["errors"][0]
    assert error["loc"] == "input.image" and why in error["message"], error


def test_data_uris_decode_to_their_bytes_and_media_type():
    assert parse_data_uri("data:,hello") == DataUri("text/plain", b"hello")
    assert parse_data_uri("data:text/plain;charset=utf-8,%E6%97%A5") == DataUri("text/plain", "日".encode())
    assert parse_data_uri("data:IMAGE/PNG;base64,AAEC") == DataUri("image/png", b"\x00\x01\x02")
    with pytest.raises(FileFetchError, match="not valid base64"):
        parse_data_uri("data:;base64,AA%ZZ")


def test_remote_fetches_that_fail_say_why_naming_the_field(apps, tmp_path, local_site):
    base = f"http://127.0.0.1:{local_site}"
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{closed.getsockname()[1]}/x.png"
    dot_dot, long, to_ftp, to_bad, refused = run_inputs(
        apps, tmp_path, [f"{base}/..", f"{base}/{'a' * 300}", f"{base}/to-ftp", f"{base}/to-bad", nobody],
        allow_remote_urls=True, allow_private_urls=True)
    for saved in (dot_dot, long):  # names no file can have are saved under a safe one
        assert saved["status"] == TaskStatus.COMPLETED, saved["error"]
    assert to_ftp["status"] == TaskStatus.FAILED and "only http(s) redirects are followed" in to_ftp["error"]
    for failed in (to_bad, refused):
        assert failed["status"] == TaskStatus.FAILED and failed["error"].startswith("invalid input: image: GET "), failed["error"]
    assert "ConnectError" in refused["error"]


def test_a_name_that_resolves_to_an_internal_address_when_connected_to_is_refused(tmp_path, local_site, monkeypatch):
    """DNS rebinding: the name answers a public address to the check, then loopback (TTL 0)."""
    resolve, answers = socket.getaddrinfo, []

    def rebinding(host, *args, **kwargs):
        if host != "rebind.example":
            return resolve(host, *args, **kwargs)
        answers.append("8.8.8.8" if not answers else "127.0.0.1")
        return resolve(answers[-1], *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    files = local_files(tmp_path / "files", allow_remote_urls=True)
    workdir = tmp_path / "work"
    workdir.mkdir()
    with pytest.raises(FileFetchError, match=r"rebind.example is an internal address \(127.0.0.1\)"):
        asyncio.run(files.fetch(f"http://rebind.example:{local_site}/x.txt", workdir, FileScope("me", "http://test")))
    assert answers[0] == "8.8.8.8"  # the ingress's check passed; the connection's own refused
