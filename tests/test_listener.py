"""The ingress's own listener: addresses, a port already taken, serving and closing."""

import asyncio
import socket
import threading
import time

import httpx
import pytest
from conftest import free_port
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from inferencesh_ray.listener import Listener, bind, parse_address


def test_addresses_parse_and_bad_ones_say_what_is_expected():
    assert parse_address("127.0.0.1:8000") == ("127.0.0.1", 8000)
    assert parse_address("[::1]:9000") == ("::1", 9000)
    assert parse_address("localhost:1") == ("localhost", 1)
    for bad in ("8000", ":8000", "host:", "host:port", "host:70000", "host:0"):
        with pytest.raises(ValueError, match="is not HOST:PORT, e.g. 127.0.0.1:8000"):
            parse_address(bad)


def test_a_port_in_use_is_reported_not_shared():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"the ingress cannot listen on 127.0.0.1:{port}"):
            bind(f"127.0.0.1:{port}", wait_s=0.6)


def test_a_port_freed_while_waiting_is_taken():
    """A redeploy's new ingress starts while the old one still holds the port: it used to fail
    at once, and after three such starts Serve fails the whole redeploy."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    threading.Timer(1.0, taken.close).start()
    started = time.monotonic()
    sock = bind(f"127.0.0.1:{port}", wait_s=10)
    assert 0.9 < time.monotonic() - started < 5 and sock.getsockname()[1] == port
    sock.close()


def test_it_serves_the_app_in_the_running_loop_and_closes():
    async def peer(request):
        return JSONResponse({"client": request.client.host, "forwarded": request.headers.get("x-forwarded-for")})

    app = Starlette(routes=[Route("/", peer)])

    async def scenario():
        listener = Listener(app, f"127.0.0.1:{port}")
        async with httpx.AsyncClient() as client:
            for _ in range(50):  # the server starts on the loop's next turns
                try:
                    answer = await client.get(f"http://127.0.0.1:{port}/", headers={"x-forwarded-for": "8.8.8.8"})
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.02)
        await listener.close()
        return answer.json()

    port = free_port()
    seen = asyncio.run(scenario())
    # The loopback rule of the API reads the real peer: a forwarded header is not it.
    assert seen["client"] == "127.0.0.1"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/")
