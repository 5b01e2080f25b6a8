"""Zero-copy file sends through the listener: offered on uvicorn's connections, exact bytes, ranges, gone clients."""

import asyncio
import os
import socket

import httpx
import pytest
import uvloop
from conftest import APPS, free_port
from helpers import local_files, make_server

from inferencesh_ray import zerocopy
from inferencesh_ray.listener import Listener

SIZE = 3 * (1 << 20) + 12345


@pytest.fixture
def big_file(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


def file_app(path, seen):
    """Sends `path` (or its [offset, offset+count) from the query) with the extension when offered, else streams."""

    async def app(scope, receive, send):
        seen.append(zerocopy.EXTENSION in (scope.get("extensions") or {}))
        query = dict(p.split("=") for p in scope["query_string"].decode().split("&") if p)
        offset, count = int(query.get("offset", 0)), int(query.get("count", SIZE))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(count).encode())]})
        with open(path, "rb") as handle:
            if seen[-1]:
                await send({"type": zerocopy.EXTENSION, "file": handle, "offset": offset, "count": count})
            else:
                handle.seek(offset)
                await send({"type": "http.response.body", "body": handle.read(count)})

    return app


async def serving(app, port, scenario):
    listener = Listener(app, f"127.0.0.1:{port}")
    try:
        for _ in range(100):  # the server starts on the loop's next turns
            try:
                with socket.create_connection(("127.0.0.1", port)):
                    break
            except OSError:
                await asyncio.sleep(0.02)
        return await scenario()
    finally:
        await listener.close()


def test_a_file_goes_out_whole_and_in_ranges_on_the_event_loop_ray_uses(big_file):
    seen, port = [], free_port()
    data = big_file.read_bytes()

    async def scenario():
        async with httpx.AsyncClient() as client:
            whole = await client.get(f"http://127.0.0.1:{port}/")
            part = await client.get(f"http://127.0.0.1:{port}/?offset=1000&count=2000000")
            again = await client.get(f"http://127.0.0.1:{port}/?offset=5&count=7")  # the same connection, kept alive
            return whole, part, again

    whole, part, again = uvloop.run(serving(file_app(big_file, seen), port, scenario))
    assert seen == [True, True, True]
    assert whole.content == data
    assert part.content == data[1000:2001000]
    assert again.content == data[5:12]


def test_a_client_that_goes_away_mid_file_leaves_the_server_serving(big_file, monkeypatch):
    monkeypatch.setattr(zerocopy, "STEP", 1 << 16)  # many trips, so the client leaves during one
    seen, port = [], free_port()

    async def scenario():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        await reader.read(1 << 16)
        writer.transport.abort()  # a reset, mid-body
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient() as client:
            return await client.get(f"http://127.0.0.1:{port}/?offset=0&count=10")

    after = asyncio.run(serving(file_app(big_file, seen), port, scenario))
    assert after.status_code == 200 and after.content == big_file.read_bytes()[:10]


def test_a_file_shorter_than_announced_ends_the_connection_not_the_server(big_file):
    seen, port = [], free_port()

    async def scenario():
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(f"http://127.0.0.1:{port}/?offset={SIZE - 10}&count=20")
            return await client.get(f"http://127.0.0.1:{port}/?offset=0&count=3")

    after = asyncio.run(serving(file_app(big_file, seen), port, scenario))
    assert after.content == big_file.read_bytes()[:3]


class _Transport:
    """What `_send_file` uses of a uvloop transport, over one end of a socket pair."""

    def __init__(self, sock):
        self.sock = sock

    def get_write_buffer_size(self):
        return 0

    def is_closing(self):
        return False

    def get_extra_info(self, name):
        return self.sock if name == "socket" else None


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_cancelled_send_stops_its_thread_before_its_descriptors_are_closed(big_file):
    async def scenario():
        ours, client = socket.socketpair()
        ours.setblocking(False)
        with open(big_file, "rb") as handle:
            before = _open_fds()
            sending = asyncio.create_task(zerocopy._send_file(_Transport(ours), handle, 0, SIZE))
            await asyncio.sleep(0.3)  # the client reads nothing: the thread waits on the full socket
            during = _open_fds()
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
            for _ in range(100):  # the thread notices within a trip, then both duplicates are closed
                if _open_fds() == before:
                    break
                await asyncio.sleep(0.01)
            after = _open_fds()
        client.close()
        ours.close()
        return before, during, after

    before, during, after = asyncio.run(scenario())
    assert during == before + 2 and after == before


def test_a_client_that_reads_nothing_holds_a_thread_for_one_trip_only(big_file):
    import threading
    import time

    ours, client = socket.socketpair()
    ours.setblocking(False)
    with open(big_file, "rb") as handle:
        started = time.monotonic()
        first = zerocopy._send_some(ours.fileno(), handle.fileno(), 0, SIZE, threading.Event())
        second = zerocopy._send_some(ours.fileno(), handle.fileno(), first, SIZE - first, threading.Event())
        took = time.monotonic() - started
    client.close()
    ours.close()
    assert 0 < first < SIZE and second == 0  # the socket's buffer filled, then nothing more was taken
    assert took < 2 * zerocopy.TRIP_S + 0.5


def test_a_zero_copy_send_past_the_announced_length_is_refused_not_sent(big_file):
    port = free_port()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        with open(big_file, "rb") as handle:
            await send({"type": zerocopy.EXTENSION, "file": handle, "offset": 0, "count": 20})

    async def scenario():
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(f"http://127.0.0.1:{port}/")

    asyncio.run(serving(app, port, scenario))


def test_through_the_listen_door_a_file_gone_from_disk_is_410_and_head_is_answered(tmp_path):
    server = make_server(APPS / "file_app.py", tmp_path, ("key-a",), local_files(tmp_path / "files"))
    port = free_port()

    async def scenario():
        async with httpx.AsyncClient() as client:
            base = f"http://127.0.0.1:{port}"
            created = await client.post(f"{base}/files", json={"files": [{"filename": "p.bin", "size": 10}]},
                                        headers={"Authorization": "Bearer key-a"})
            file = created.json()["data"][0]
            await client.put(file["upload_url"], content=b"0123456789")
            head = await client.head(file["uri"], headers={"range": "bytes=2-4"})
            (tmp_path / "files" / "files" / file["id"] / "data").unlink()
            gone = await client.get(file["uri"])
            await server.dispatcher.close()
            return head, gone

    head, gone = uvloop.run(serving(server.app, port, scenario))
    assert head.status_code == 206 and head.headers["content-range"] == "bytes 2-4/10" and head.content == b""
    assert gone.status_code == 410 and "no longer in storage" in gone.json()["detail"]
