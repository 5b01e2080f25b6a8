"""Files through the real HTTP API without Ray: upload, download, inputs, outputs and what is refused."""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import logging
import re
import time
from urllib.parse import unquote, urlencode

import pytest
from helpers import local_files, make_server, run_api, wait_terminal

from inferencesh_ray.status import TaskStatus
from inferencesh_ray.storage import FileStore, safe_filename

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


def test_a_server_without_keys_serves_its_files_plain_link_to_this_machine(apps, tmp_path):
    """`GET /files/{id}/{name}` without the query needs the owner's key, and without keys there is
    none to send: the plain link was a 404 "no file", though `GET /files/{id}` found it."""

    async def body(client):
        file, _ = await upload(client, headers={})
        return await client.get(f"/files/{file['id']}/in.png")

    plain = run_api(apps / "file_app.py", tmp_path, body, (), local_files(tmp_path / "files"))
    assert plain.status_code == 200 and plain.content == BLOB


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
    ("missing.txt", "(a client uploads a local path for you only if that file exists where it runs)"),
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
                                 "http://10.0.0.1/x", "http://localhost/x",
                                 # IPv6 addresses that carry an internal IPv4 one: NAT64, local-use NAT64, 6to4
                                 "http://[64:ff9b::7f00:1]/x", "http://[64:ff9b:1::808:808]/x", "http://[2002:7f00:1::]/x"])
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

    size = asyncio.run(_write(handle, body(), len(data), True))
    assert size == len(data) and bytes(handle.written) == data
    assert handle.overlapped >= 2  # the next MiB came in during the writes (one after the other, never)
    assert handle.most_busy == 1 and most_held <= 2 * (CHUNK + piece) and not handle.closed_while_busy


def test_downloads_read_ahead_one_chunk_and_ranges_cross_chunks_exactly():
    from inferencesh_ray.files_api import CHUNK, _read

    data = bytes(range(256)) * (3 * CHUNK // 256 + 3)

    async def read(start, end, take=None):
        handle = _SlowHandle(data)
        chunks, stream, ahead = [], _read(handle, start, end), 0
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


def file_parts(tmp_path, file_id):
    return sorted(path.name for path in (tmp_path / "files" / "files" / file_id).iterdir())


async def _late(blob, gate):
    await gate.wait()  # the request is in and its part open; its body comes late
    yield blob


def test_an_upload_that_comes_second_never_rewrites_a_completed_file(apps, tmp_path):
    size = 3 << 20

    async def body(client):
        file = (await client.post("/files", json={"files": [{"filename": "x.bin", "size": size}]}, headers=A)).json()["data"][0]
        gate = asyncio.Event()
        second = asyncio.ensure_future(client.put(file["upload_url"], content=_late(b"B" * size, gate),
                                                  headers={"content-length": str(size)}))
        await asyncio.sleep(0.3)
        first = await client.put(file["upload_url"], content=b"A" * size)
        gate.set()
        return file, first, await second, await client.get(file["uri"])

    file, first, second, got = files_scenario(apps, tmp_path, body)
    assert first.status_code == 200
    assert second.status_code == 409 and "immutable" in second.json()["detail"]
    assert got.content == b"A" * size
    assert file_parts(tmp_path, file["id"]) == ["data", "meta.json"]  # the loser's part is gone


def test_an_upload_that_fails_leaves_a_completed_file_as_it_was(apps, tmp_path):
    size = 3 << 20

    async def body(client):
        file = (await client.post("/files", json={"files": [{"filename": "x.bin", "size": size}]}, headers=A)).json()["data"][0]
        gate = asyncio.Event()
        short = asyncio.ensure_future(client.put(file["upload_url"], content=_late(b"XYZ", gate)))
        await asyncio.sleep(0.3)
        whole = await client.put(file["upload_url"], content=b"A" * size)
        gate.set()
        return file, whole, await short, await client.get(file["uri"])

    file, whole, short, got = files_scenario(apps, tmp_path, body)
    assert whole.status_code == 200 and short.status_code == 400
    assert got.content == b"A" * size
    assert file_parts(tmp_path, file["id"]) == ["data", "meta.json"]


def test_a_client_gone_mid_upload_is_answered_quietly_and_leaves_nothing(apps, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    server = make_server(apps / "file_app.py", tmp_path, ("key-a",), local_files(tmp_path / "files"))

    async def main():
        import httpx

        transport = httpx.ASGITransport(app=server.app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            file = (await client.post("/files", json={"files": [{"size": 1000}]}, headers=A)).json()["data"][0]
            path, query = file["upload_url"][len("http://test"):].split("?")
            arriving = [{"type": "http.request", "body": b"a" * 500, "more_body": True}, {"type": "http.disconnect"}]
            sent = []

            async def receive():
                return arriving.pop(0) if arriving else {"type": "http.disconnect"}

            async def send(message):
                sent.append(message)

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "PUT", "scheme": "http",
                     "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
                     "headers": [(b"host", b"test"), (b"content-length", b"1000")], "client": ("127.0.0.1", 5000),
                     "server": ("test", 80)}
            await server.app(scope, receive, send)
            parts = file_parts(tmp_path, file["id"])
            retried = await client.put(file["upload_url"], content=b"b" * 1000)
            await server.dispatcher.close()
            return sent[0], parts, retried

    start, parts, retried = asyncio.run(main())
    assert start["status"] == 400
    assert parts == ["meta.json"]  # its part removed
    assert retried.status_code == 200
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR], caplog.text


def test_an_announced_size_of_zero_is_not_taken_for_no_size(apps, tmp_path):
    async def body(client):
        zero = (await client.post("/files", json={"files": [{"size": 0}]}, headers=A)).json()["data"][0]
        unknown = (await client.post("/files", json={"files": [{}]}, headers=A)).json()["data"][0]
        return (zero, await client.put(zero["upload_url"], content=b"12345"), await client.put(zero["upload_url"], content=b""),
                unknown, await client.put(unknown["upload_url"], content=b"12345"))

    zero, too_big, empty, unknown, any_size = files_scenario(apps, tmp_path, body)
    assert zero["size"] == 0 and unknown["size"] is None
    assert too_big.status_code == 413 and "announced size of 0 bytes" in too_big.json()["detail"]
    assert empty.status_code == 200 and empty.json()["data"]["size"] == 0
    assert any_size.status_code == 200 and any_size.json()["data"]["size"] == 5


def test_a_meta_json_write_that_fails_midway_leaves_the_one_before_whole(tmp_path, monkeypatch):
    store = FileStore(tmp_path.resolve().as_uri())
    file = store.create("me", "a.png", "image/png", 3)
    part, handle = store.open_part(file)
    with handle:
        handle.write(b"abc")
    opened = store.fs.open

    class DiskFull:
        """Writes half of what it is given, then fails as a full disk does."""

        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.fs, "open", lambda path, mode="rb", **kw: DiskFull(opened(path, mode, **kw)) if "w" in mode
                        else opened(path, mode, **kw))
    with pytest.raises(OSError):
        store.commit(file, part, 3)
    monkeypatch.undo()
    assert store.get(file.id) == file  # readers still see the meta.json before it, whole


PARAM = r'\s*;\s*([\w*-]+)=(?:"[^"\\]*"|[^;"\s]*)'  # a Content-Disposition parameter; a quoted value has no quote


def test_downloads_name_the_file_per_rfc_6266_and_serve_its_type_as_stored(apps, tmp_path):
    sent = [("日本.png", "image/png"), ('a"b.png', "text/plain"),
            ("r.pdf\"; filename*=UTF-8''evil.exe; x=\"", 'multipart/mixed; boundary="a b"')]

    async def body(client):
        answers = []
        for name, content_type in sent:
            file, _ = await upload(client, b"hello", filename=name, content_type=content_type)
            answers.append((await client.get(file["uri"]), await client.head(file["uri"])))
        return answers

    answers = files_scenario(apps, tmp_path, body)
    for (name, content_type), (got, head) in zip(sent, answers):
        assert got.status_code == 200 and got.content == b"hello"
        assert got.headers["content-type"] == content_type  # no charset added to text/plain
        assert got.headers["x-content-type-options"] == "nosniff"
        header = got.headers["content-disposition"]
        assert re.fullmatch(rf"inline(?:{PARAM})+", header) and re.findall(PARAM, header) == ["filename", "filename*"]
        assert unquote(header.rsplit("filename*=UTF-8''", 1)[1]) == name  # the exact name
        assert head.status_code == 200 and head.content == b"" and dict(head.headers) == dict(got.headers)
    # The URL names it in plain ASCII: the official SDK's File names its download after the URL, not unquoted.
    assert [got.url.path.rsplit("/", 1)[1] for got, _ in answers] == ["__.png", "a_b.png", "r.pdf___filename__UTF-8__evil.exe__x__"]
    assert answers[0][0].headers["content-disposition"] == "inline; filename=\"__.png\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.png"
    assert answers[1][0].headers["content-disposition"].startswith('inline; filename="a_b.png"')


def test_an_unnamed_upload_gets_an_extension_from_its_content_type(apps, tmp_path):
    """wire-protocol.md §11: the SDK's File names its download after the URL's last part and
    guesses the type from it; bytes and data: URIs come without a name, and were all `file`."""
    sent = [("image/png", "file.png"), ("text/csv; charset=utf-8", "file.csv"), ("application/octet-stream", "file"),
            (None, "file")]

    async def body(client):
        named = []
        for content_type, _ in sent:
            created = await client.post("/files", json={"files": [{"content_type": content_type, "size": 1}]}, headers=A)
            named.append(created.json()["data"][0])
        return named

    for file, (_, filename) in zip(files_scenario(apps, tmp_path, body), sent):
        assert file["filename"] == filename and file["uri"].split("?")[0].endswith(f"/{filename}")


@pytest.mark.parametrize("content_type", ["text/html\r\nX-Evil: 1", "image/png; 日本", "image/" + "a" * 100_000, "png",
                                          "image/png; charset"])
def test_content_types_that_are_no_media_type_are_422_naming_the_field(apps, tmp_path, content_type):
    async def body(client):
        wanted = [{"content_type": "image/png"}, {"content_type": content_type}]
        return await client.post("/files", json={"files": wanted}, headers=A)

    response = files_scenario(apps, tmp_path, body)
    assert response.status_code == 422, response.text[:300]
    error = response.json()["errors"][0]
    assert error["loc"] == "files.1.content_type" and "is not a media type" in error["message"]


def test_ranges_too_long_to_parse_or_invalid_are_answered_not_crashed(apps, tmp_path):
    blob, huge = b"0123456789", "9" * 5000
    ranges = ["bytes=" + huge + "-", "bytes=0-" + huge, "bytes=-" + huge, "bytes=5-2", "bytes=" + "0" * 30 + "3-4",
              "bytes=10-", "bytes=2-4"]

    async def body(client):
        file, _ = await upload(client, blob)
        return [await client.get(file["uri"], headers={"Range": value}) for value in ranges]

    past, to_huge, suffix_huge, backwards, zeros, at_end, plain = files_scenario(apps, tmp_path, body)
    assert past.status_code == 416 and past.headers["content-range"] == "bytes */10"
    for whole in (to_huge, suffix_huge, backwards):  # RFC 9110: an invalid range is ignored
        assert whole.status_code == 200 and whole.content == blob
    assert zeros.status_code == 206 and zeros.content == b"34"
    assert at_end.status_code == 416
    assert plain.status_code == 206 and plain.content == b"234"


def test_bytes_gone_from_storage_are_410_not_a_broken_download(apps, tmp_path):
    async def body(client):
        file, _ = await upload(client)
        (tmp_path / "files" / "files" / file["id"] / "data").unlink()
        return await client.get(file["uri"])

    gone = files_scenario(apps, tmp_path, body)
    assert gone.status_code == 410 and "no longer in storage" in gone.json()["detail"]


@pytest.mark.parametrize("expires, signature", [("\u00b2", "x"), ("9" * 5000, "x"), ("9999999999", "é"),
                                                ("9999999999", "\u0661" * 40)])
def test_signature_params_of_any_shape_are_refused_not_crashed(apps, tmp_path, expires, signature):
    async def body(client):
        file, _ = await upload(client)
        query = {"expires": expires, "signature": signature}
        download = await client.get(f"/files/{file['id']}/in.png", params=query)
        put = await client.put(f"/files/{file['id']}/upload", params=query, content=b"x")
        uri = f"http://test/files/{file['id']}/in.png?{urlencode(query)}"
        run = {"app": "file-app", "function": "inspect", "input": {"image": uri}}
        return download, put, await client.post("/apps/run", json=run, headers=B)

    download, put, run = files_scenario(apps, tmp_path, body)
    assert download.status_code == 404
    assert put.status_code == 403 and "malformed signature" in put.json()["detail"]
    assert run.status_code == 422 and run.json()["errors"][0]["loc"] == "input.image"


def test_a_long_non_ascii_filename_still_reaches_the_task(apps, tmp_path):
    async def body(client):
        file, put = await upload(client, b"hello", filename="日" * 100 + ".png")
        run = {"app": "file-app", "function": "inspect", "input": {"image": file["uri"]}}
        return put, await finished(client, (await client.post("/apps/run", json=run, headers=A)).json()["data"]["id"])

    put, task = files_scenario(apps, tmp_path, body)
    assert put.status_code == 200
    assert task["status"] == TaskStatus.COMPLETED, task["error"]
    assert task["output"]["filenames"][0].endswith(".png") and len(task["output"]["filenames"][0].encode()) <= 200


def test_safe_filenames_fit_a_disk_and_cannot_show_as_another_name():
    long = safe_filename("日" * 100 + ".png")
    assert long == "日" * 65 + ".png"  # at most 200 bytes, cut between characters
    assert safe_filename("invoice\u202egnp.exe") == "invoice_gnp.exe"  # a bidi override would show it as invoice.png
    assert safe_filename("a\x85b\ud800c\u2066d") == "a_b_c_d"


def test_on_s3_an_upload_commits_its_own_part_and_a_later_one_changes_nothing(apps, tmp_path, s3_server):
    import s3fs

    from inferencesh_ray.server_files import FilesConfig, ServerFiles

    root = f"{s3_server.bucket}/api-{tmp_path.name}"
    files = ServerFiles(FilesConfig(root=f"s3://{root}", signing_key=b"test-key", options=s3_server.storage_options))
    s3 = s3fs.S3FileSystem(**s3_server.storage_options)

    def objects(file_id):
        s3.invalidate_cache()
        return sorted(path.rsplit("/", 1)[1] for path in s3.ls(f"{root}/files/{file_id}"))

    async def body(client):
        file = (await client.post("/files", json={"files": [{"filename": "x.bin", "size": 5}]}, headers=A)).json()["data"][0]
        gate = asyncio.Event()
        late = asyncio.ensure_future(client.put(file["upload_url"], content=_late(b"BBBBB", gate),
                                                headers={"content-length": "5"}))
        await asyncio.sleep(0.3)
        first = await client.put(file["upload_url"], content=b"AAAAA")
        gate.set()
        second = await late
        got, after = await client.get(file["uri"]), objects(file["id"])
        s3.rm(f"{root}/files/{file['id']}/data")
        return first, second, got, after, await client.get(file["uri"])

    first, second, got, after, gone = run_api(apps / "file_app.py", tmp_path, body, KEYS, files)
    assert first.status_code == 200 and second.status_code == 409
    assert got.content == b"AAAAA" and after == ["data", "meta.json"]
    assert gone.status_code == 410
