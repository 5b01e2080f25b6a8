"""Serve the HTTP API straight from the ingress replica, without Serve's proxy in between.

Through Serve's proxy every request crosses two processes and an actor call, ~10 ms on
a 2-core machine, and the official client makes three requests per task; the proxy also
buffers a request body without flow control, so a large upload sits in its memory. An
ingress given `listen` runs uvicorn on its own event loop at that address as well, with
the same app: one process, flow control from the socket to storage, and downloads of
files on local disk sent by the kernel (zerocopy.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import time
from typing import Any, Iterator, Optional

import uvicorn

from .zerocopy import with_zero_copy

_log = logging.getLogger(__name__)
# A redeploy starts the new ingress replica while the old one still drains its door: the
# port is waited for this long before the replica's start fails (Serve gives up on a
# deployment after three failed starts, so failing at once could fail the redeploy).
PORT_WAIT_S = 30.0


def parse_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:8000`) -> (host, port); ValueError says what is wrong."""
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"listen address {address!r} is not HOST:PORT, e.g. 127.0.0.1:8000 or [::1]:8000")
    return host, int(port)


def bind(address: str, wait_s: float = PORT_WAIT_S) -> socket.socket:
    """A listening socket at `address`; an address in use is waited for `wait_s`, then reported, never shared."""
    host, port = parse_address(address)
    family = socket.AF_INET6 if _is_ipv6(host) else socket.AF_INET
    deadline = time.monotonic() + wait_s
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            break
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                raise OSError(exc.errno, f"the ingress cannot listen on {address}: {exc.strerror}") from exc
            _log.warning("%s is in use (a replica still shutting down?); waiting up to %.0f s", address, wait_s)
            time.sleep(0.5)
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The replica's process belongs to Ray: its signals stay Ray's.
        yield


class Listener:
    """uvicorn serving `app` on `address` inside the running event loop, until `close`."""

    def __init__(self, app: Any, address: str) -> None:
        self._sock = bind(address)
        config = uvicorn.Config(
            with_zero_copy(app),
            lifespan="off",
            log_config=None,
            access_log=False,
            # The API's loopback rule must see the real peer, never a forwarded header.
            proxy_headers=False,
            # Longer than a stream's quiet wait (5 s), after which it sees that watches ended.
            timeout_graceful_shutdown=10,
        )
        self._server = _Server(config)
        self._task: Optional[asyncio.Task] = asyncio.get_running_loop().create_task(self._server.serve([self._sock]))

    async def close(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await self._task
        self._sock.close()
        self._task = None


def _is_ipv6(host: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).version == 6
    return False
