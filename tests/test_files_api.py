"""Files through the real HTTP API without Ray: upload, download, inputs, outputs and what is refused."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time

import pytest
from helpers import local_files, run_api, wait_terminal

from inferencesh_ray.status import TaskStatus
from inferencesh_ray.storage import safe_filename

KEYS = ("key-a", "key-b")
A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}
BLOB = bytes(range(256)) * 40  # 10 KiB


def files_scenario(apps, tmp_path, body, **files_options):
    files = local_files(tmp_path / "files", **files_options)
    return run_api(apps / "file_app.py", tmp_path, body, KEYS, files)


async def upload(client, blob=BLOB, headers=A, filename="in.png", content_type="image/png", size=None):
    wanted = {"uri": "", "filename": filename, "content_type": content_type, "size": len(blob) if size is None else size}
    created = await client.post("/files", json={"files": [wanted]}, headers=headers)
    assert created.status_code == 200, created.text
    file = created.json()["data"][0]
    put = await client.put(file["upload_url"], content=blob, headers={"content-type": content_type})
    return file, put


async def finished(client, task_id, headers=A):
    return await wait_terminal(client, task_id, headers)


def test_upload_then_download_with_the_signed_url(apps, tmp_path):
    async def body(client):
        file, put = await upload(client)
        assert put.status_code == 200 and put.json()["data"]["size"] == len(BLOB)
        assert file["upload_url"].startswith("http://test/files/") and file["uri"].startswith("http://test/files/")
        assert set(file) >= {"id", "uri", "upload_url", "filename", "content_type", "size", "created_at"}
        got = await client.get(file["uri"])  # no key: the signature is the credential
        part = await client.get(file["uri"], headers={"Range": "bytes=100-199"})
        tail = await client.get(file["uri"], headers={"Range": "bytes=-10"})
        outside = await client.get(file["uri"], headers={"Range": "bytes=999999-"})
        with_key = await client.get(f"/files/{file['id']}/in.png", headers=A)
        fresh = await client.get(f"/files/{file['id']}", headers=A)
        return got, part, tail, outside, with_key, fresh

    got, part, tail, outside, with_key, fresh = files_scenario(apps, tmp_path, body)
    assert got.status_code == 200 and got.content == BLOB and got.headers["content-type"] == "image/png"
    assert got.headers["accept-ranges"] == "bytes"
    assert part.status_code == 206 and part.content == BLOB[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(BLOB)}"
    assert tail.status_code == 206 and tail.content == BLOB[-10:]
    assert outside.status_code == 416 and outside.headers["content-range"] == f"bytes */{len(BLOB)}"
    assert with_key.status_code == 200 and with_key.content == BLOB
    assert fresh.status_code == 200 and fresh.json()["data"]["uri"].startswith("http://test/files/")


def test_uploads_are_checked_and_files_are_private(apps, tmp_path):
    async def body(client):
        file, _ = await upload(client)
        unsigned = await client.get(f"/files/{file['id']}/in.png")
        other_key = await client.get(f"/files/{file['id']}/in.png", headers=B)
        other_meta = await client.get(f"/files/{file['id']}", headers=B)
        forged = await client.get(file["uri"].replace("signature=", "signature=0"))
        again = await client.put(file["upload_url"], content=BLOB)
        bad_put = await client.put(file["upload_url"].replace("signature=", "signature=0"), content=b"x")
        short_file, short = await upload(client, blob=b"abc", size=10)
        long_file, long = await upload(client, blob=b"abcdef", size=3)
        retried = await client.put(short_file["upload_url"], content=b"0123456789")
        too_big = await client.post("/files", json={"files": [{"size": 10_000_000}]}, headers=A)
        no_key = await client.post("/files", json={"files": [{"size": 1}]})
        escape = await client.get("/files/../../etc/passwd", headers=A)
        return unsigned, other_key, other_meta, forged, again, bad_put, short, long, retried, too_big, no_key, escape

    (unsigned, other_key, other_meta, forged, again, bad_put, short, long, retried, too_big, no_key,
     escape) = files_scenario(apps, tmp_path, body, max_file_bytes=1_000_000)
    for response in (unsigned, other_key, other_meta, forged, escape):
        assert response.status_code == 404, response.text  # never says whether the file exists
    assert again.status_code == 409 and "immutable" in again.json()["detail"]
    assert bad_put.status_code == 403 and bad_put.headers["content-type"] == "application/problem+json"
    assert short.status_code == 400 and "received 3 bytes, but 10 were announced" in short.json()["detail"]
    assert long.status_code == 413
    assert retried.status_code == 200  # a failed upload can be sent again
    assert too_big.status_code == 413 and "limit of 1000000" in too_big.json()["detail"]
    assert no_key.status_code == 401


def test_expired_links_are_refused(apps, tmp_path):
    async def body(client):
        file, put = await upload(client)
        await asyncio.sleep(2.2)
        return put, await client.get(file["uri"]), await client.get(f"/files/{file['id']}/in.png", headers=A)

    put, expired, with_key = files_scenario(apps, tmp_path, body, url_ttl_s=2)
    assert put.status_code == 200
    assert expired.status_code == 403 and "expired" in expired.json()["detail"]
    assert with_key.status_code == 200  # the owner's key still reads it


def test_inputs_are_fetched_and_outputs_become_signed_urls(apps, tmp_path):
    async def body(client):
        file, _ = await upload(client)
        data_uri = "data:text/plain;base64," + base64.b64encode(b"hello").decode()
        run = {"app": "file-app", "function": "inspect", "input": {"image": file["uri"], "extra": [{"uri": data_uri}]}}
        seen = await finished(client, (await client.post("/apps/run", json=run, headers=A)).json()["data"]["id"])
        run = {"app": "file-app", "function": "reverse", "input": {"image": file["uri"]}}
        made = await finished(client, (await client.post("/apps/run", json=run, headers=A)).json()["data"]["id"])
        assert made["status"] == TaskStatus.COMPLETED, made["error"]
        output = made["output"]["image"]
        download = await client.get(output["uri"])
        # An output is a valid input at once: chain it into the next task.
        run = {"app": "file-app", "function": "inspect", "input": {"image": output["uri"]}}
        chained = await finished(client, (await client.post("/apps/run", json=run, headers=A)).json()["data"]["id"])
        return seen, made, download, chained

    seen, made, download, chained = files_scenario(apps, tmp_path, body)
    assert seen["status"] == TaskStatus.COMPLETED, seen
    assert seen["output"]["sha256"] == [hashlib.sha256(BLOB).hexdigest(), hashlib.sha256(b"hello").hexdigest()]
    assert seen["output"]["filenames"][0] == "in.png" and seen["output"]["content_types"] == ["image/png", "text/plain"]
    assert made["status"] == TaskStatus.COMPLETED, made
    output = made["output"]["image"]
    assert set(output) == {"uri", "filename", "content_type", "size"}  # no server path leaks out
    assert TaskStatus.UPLOADING in [event["status"] for event in made["events"]]
    assert download.status_code == 200 and download.content == BLOB[::-1]
    assert chained["output"]["sha256"] == [hashlib.sha256(BLOB[::-1]).hexdigest()]


def test_an_output_file_that_does_not_exist_fails_the_task_clearly(apps, tmp_path):
    async def body(client):
        file, _ = await upload(client)
        run = {"app": "file-app", "function": "missing", "input": {"image": file["uri"]}}
        return await finished(client, (await client.post("/apps/run", json=run, headers=A)).json()["data"]["id"])

    task = files_scenario(apps, tmp_path, body)
    assert task["status"] == TaskStatus.FAILED
    assert task["error"] == "missing returned a file that does not exist: image = /no/such/output.png"


REFUSED = [
    ("/etc/passwd", "is refused"),
    ("file:///etc/passwd", "is refused"),
    ({"path": "/etc/passwd"}, "never by `path`"),
    ({"uri": "OWN", "path": "/etc/passwd"}, "never by `path`"),
    ("../../etc/passwd", "is refused"),
    ("http://127.0.0.1:9/x.png", "is refused"),
    ("s3://bucket/key", "is refused"),
    ("OTHER", "no such file"),
    ("UNSIGNED", "no such file"),
    ("", "expected a file"),
    (42, "expected a file"),
]


@pytest.mark.parametrize("value, why", REFUSED)
def test_refused_file_inputs_are_422_naming_the_field(apps, tmp_path, value, why):
    async def body(client):
        mine, _ = await upload(client)
        theirs, _ = await upload(client, headers=B)
        named = {"OWN": mine["uri"], "OTHER": theirs["uri"].split("?")[0], "UNSIGNED": theirs["uri"].split("?")[0]}
        given = {"uri": named["OWN"], "path": "/etc/passwd"} if value == {"uri": "OWN", "path": "/etc/passwd"} else value
        given = named.get(given, given) if isinstance(given, str) else given
        run = {"app": "file-app", "function": "inspect", "input": {"image": mine["uri"], "extra": [given]}}
        response = await client.post("/apps/run", json=run, headers=A)
        listing = await client.get("/tasks/none", headers=A)
        return response, listing

    response, _ = files_scenario(apps, tmp_path, body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["errors"][0]["loc"] == "input.extra.0" and why in problem["errors"][0]["message"], problem
    assert "Traceback" not in response.text


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "http://169.254.169.254/latest/meta-data", "http://[::1]/x",
                                 "http://10.0.0.1/x", "http://localhost/x"])
def test_remote_urls_to_internal_addresses_are_refused_even_when_remote_urls_are_allowed(apps, tmp_path, url):
    async def body(client):
        run = {"app": "file-app", "function": "inspect", "input": {"image": url}}
        return await client.post("/apps/run", json=run, headers=A)

    response = files_scenario(apps, tmp_path, body, allow_remote_urls=True)
    assert response.status_code == 422
    assert "internal address" in response.json()["detail"]


def test_remote_urls_when_the_operator_allows_them(apps, tmp_path):
    """allow_private_urls lets a test fetch from its own loopback server: a real download, with the size limit."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            blob = BLOB if self.path == "/small.png" else BLOB * 20
            self.send_response(200)
            self.send_header("content-length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    async def body(client):
        results = []
        for name in ("small.png", "big.png"):
            run = {"app": "file-app", "function": "inspect", "input": {"image": f"{base}/{name}"}}
            created = await client.post("/apps/run", json=run, headers=A)
            results.append(await finished(client, created.json()["data"]["id"]))
        return results

    try:
        small, big = files_scenario(apps, tmp_path, body, allow_remote_urls=True, allow_private_urls=True,
                                    max_file_bytes=100_000)
    finally:
        server.shutdown()
    assert small["status"] == TaskStatus.COMPLETED and small["output"]["sha256"] == [hashlib.sha256(BLOB).hexdigest()]
    assert big["status"] == TaskStatus.FAILED and "larger than this server's limit of 100000 bytes" in big["error"]


def test_safe_filenames():
    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("a\\b\\c.png") == "c.png"
    assert safe_filename("bad\x00name\n.txt") == "bad_name_.txt"
    assert safe_filename("..") == "file" and safe_filename(None) == "file"
    assert len(safe_filename("x" * 500 + ".png")) == 200


def test_a_signed_url_is_bound_to_its_file_and_action(tmp_path):
    files = local_files(tmp_path)
    url = files.signer.download_url("http://h", "a" * 32, "f.png")
    query = dict(part.split("=") for part in url.split("?")[1].split("&"))
    assert files.signer.check("get", "a" * 32, query["expires"], query["signature"]) is None
    assert files.signer.check("put", "a" * 32, query["expires"], query["signature"]) == "bad signature"
    assert files.signer.check("get", "b" * 32, query["expires"], query["signature"]) == "bad signature"
    assert files.signer.check("get", "a" * 32, str(int(time.time()) + 10**6), query["signature"]) == "bad signature"


def test_a_storage_failure_fails_the_task_without_naming_server_paths(apps, tmp_path):
    async def body(client):
        file, _ = await upload(client)
        for data in (tmp_path / "files" / "files").glob("*/data"):
            data.unlink()  # the bytes are lost behind the server's back
        run = {"app": "file-app", "function": "inspect", "input": {"image": file["uri"]}}
        return await finished(client, (await client.post("/apps/run", json=run, headers=A)).json()["data"]["id"])

    task = files_scenario(apps, tmp_path, body)
    assert task["status"] == TaskStatus.FAILED
    assert task["error"].startswith("internal error (FileNotFoundError) while serving this task")
    assert str(tmp_path) not in task["error"]


class _SlowHandle:
    """A storage handle whose writes and reads take a while (in their thread), recording what overlaps them."""

    def __init__(self, data: bytes = b"") -> None:
        import threading

        self.data, self.written, self.position = data, bytearray(), 0
        self.busy = self.most_busy = self.overlapped = 0
        self.closed_while_busy = False
        self.more_came = threading.Event()  # set by the body each time it is read from
        self._lock = threading.Lock()

    def _enter(self) -> None:
        with self._lock:
            self.busy += 1
            self.most_busy = max(self.most_busy, self.busy)

    def _leave(self) -> None:
        time.sleep(0.005)
        with self._lock:
            self.busy -= 1

    def write(self, chunk) -> None:
        self._enter()
        self.more_came.clear()
        self.overlapped += self.more_came.wait(0.5)  # is the body read while this write runs?
        self.written += chunk
        self._leave()

    def seek(self, position: int) -> None:
        self.position = position

    def read(self, size: int) -> bytes:
        self._enter()
        chunk = self.data[self.position:self.position + size]
        self.position += len(chunk)
        self._leave()
        return chunk

    def close(self) -> None:
        self.closed_while_busy |= self.busy > 0


class _SlowStore:
    def __init__(self, handle: _SlowHandle) -> None:
        self.handle = handle

    def open_write(self, file):
        return self.handle

    def open_read(self, file):
        return self.handle


def test_a_large_upload_is_written_while_it_comes_in_one_write_at_a_time():
    from inferencesh_ray.files_api import CHUNK, _write

    data, piece = bytes(range(256)) * (14 * CHUNK // 1024), 64 << 10  # 3.5 MiB in 64 KiB pieces
    handle = _SlowHandle()
    most_held = 0

    async def body():
        nonlocal most_held
        for start in range(0, len(data), piece):
            most_held = max(most_held, start - len(handle.written))  # received, not yet stored
            handle.more_came.set()
            yield data[start:start + piece]
            await asyncio.sleep(0.001)
        handle.more_came.set()

    size = asyncio.run(_write(_SlowStore(handle), None, body(), len(data), True))
    assert size == len(data) and bytes(handle.written) == data
    assert handle.overlapped >= 2  # the next MiB came in during the writes (one after the other, never)
    assert handle.most_busy == 1 and most_held <= 2 * (CHUNK + piece) and not handle.closed_while_busy


def test_downloads_read_ahead_one_chunk_and_ranges_cross_chunks_exactly():
    from inferencesh_ray.files_api import CHUNK, _read

    data = bytes(range(256)) * (3 * CHUNK // 256 + 3)

    async def read(start, end, take=None):
        handle = _SlowHandle(data)
        chunks, stream, ahead = [], _read(_SlowStore(handle), None, start, end), 0
        async for chunk in stream:
            chunks.append(chunk)
            delivered = start + sum(map(len, chunks))
            for _ in range(100 if delivered < end else 0):  # while it is sent, the next chunk is read
                if handle.position > delivered:
                    ahead += 1
                    break
                await asyncio.sleep(0.01)
            if take is not None and len(chunks) == take:
                await stream.aclose()  # the client went away mid-download
                break
        return b"".join(chunks), handle, ahead

    for start, end in [(0, len(data)), (CHUNK - 5, 2 * CHUNK + 7), (len(data) - 1, len(data))]:
        got, handle, ahead = asyncio.run(read(start, end))
        assert got == data[start:end] and handle.most_busy == 1 and not handle.closed_while_busy
        assert ahead == len(range(start, end, CHUNK)) - 1  # every chunk but the last was sent while the next was read
    got, handle, _ = asyncio.run(read(0, len(data), take=1))
    assert got == data[:CHUNK] and not handle.closed_while_busy  # the read ahead finished before the close
