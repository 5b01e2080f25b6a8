"""The ASGI zero-copy send extension for the `listen` door: a file's bytes go out with sendfile(2).

Streamed from Python, every byte of a download is read into the process and written back
out to the socket; on a small machine that copying, not the disk or the network, sets
the speed. The ASGI spec's `http.response.zerocopysend` lets an app hand the server a
file instead, but uvicorn does not implement it and Ray's uvloop has no
`loop.sendfile`. So the listener wraps its app: on uvicorn's httptools connections the
extension is offered, and a zero-copy message is sent by the kernel from a worker thread
(the event loop keeps serving) straight from the page cache to the socket.
"""

from __future__ import annotations

import asyncio
import os
import select
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable

EXTENSION = "http.response.zerocopysend"
STEP = 16 << 20
"""At most this much per trip to a worker thread, so one download never holds a thread for long."""
STALL_S = 60.0
"""A client that reads nothing for this long is cut off, as uvicorn would time out an idle one."""

_threads = ThreadPoolExecutor(max_workers=16, thread_name_prefix="infsh-sendfile")

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


def with_zero_copy(app: ASGIApp) -> ASGIApp:
    """`app`, offered the zero-copy extension on connections that can carry it."""

    async def wrapped(scope: dict, receive: Callable, send: Callable) -> None:
        cycle = getattr(send, "__self__", None)
        if scope["type"] == "http" and _can_carry(cycle):
            scope["extensions"] = {**(scope.get("extensions") or {}), EXTENSION: {}}
            send = _sender(cycle)
        await app(scope, receive, send)

    return wrapped


def _can_carry(cycle: Any) -> bool:
    # Bytes written past uvicorn are accounted for by hand (its expected length), which only
    # its httptools protocol tracks that way; h11 keeps its own state machine, so it streams.
    return (type(cycle).__module__ == "uvicorn.protocols.http.httptools_impl"
            and hasattr(cycle, "transport") and hasattr(cycle, "expected_content_length"))


def _sender(cycle: Any) -> Callable[[dict], Awaitable[None]]:
    async def send(message: dict) -> None:
        if message["type"] != EXTENSION:
            return await cycle.send(message)
        if cycle.disconnected:
            return
        if cycle.scope["method"] != "HEAD":
            try:
                sent = await _send_file(cycle.transport, message["file"], message.get("offset"), message.get("count"))
            except OSError:
                cycle.transport.close()  # the client went away (or stalled): nothing more to say to it
                await asyncio.sleep(0)  # lets uvicorn see the connection lost, so it logs no error
                return
            cycle.expected_content_length -= sent
        await cycle.send({"type": "http.response.body", "body": b"", "more_body": message.get("more_body", False)})

    return send


async def _send_file(transport: Any, file: Any, offset: Any, count: Any) -> int:
    """Send `count` bytes of `file` from `offset` (its position, to its end, by default); the bytes sent."""
    file_fd = file.fileno()
    offset = os.lseek(file_fd, 0, os.SEEK_CUR) if offset is None else offset
    count = os.fstat(file_fd).st_size - offset if count is None else count
    while transport.get_write_buffer_size():  # uvicorn's headers go out first
        await asyncio.sleep(0.001)
    # A duplicate: if the loop closes the connection meanwhile, its number cannot be reused under us.
    sock_fd = os.dup(transport.get_extra_info("socket").fileno())
    loop, sent, last_progress = asyncio.get_running_loop(), 0, time.monotonic()
    try:
        while sent < count:
            step = await loop.run_in_executor(_threads, _send_some, sock_fd, file_fd, offset + sent, min(STEP, count - sent))
            if step < 0:
                break  # the file ended early: the response is short, and uvicorn says so
            sent += step
            if step:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > STALL_S:
                raise TimeoutError(f"the client read nothing for {STALL_S:.0f} s")
    finally:
        os.close(sock_fd)
    return sent


def _send_some(sock_fd: int, file_fd: int, offset: int, count: int) -> int:
    """Up to `count` bytes, waiting at most a second for the socket; -1 at the file's end."""
    sent, poller = 0, select.poll()
    poller.register(sock_fd, select.POLLOUT)
    while sent < count:
        try:
            step = os.sendfile(sock_fd, file_fd, offset + sent, count - sent)
        except BlockingIOError:
            if not poller.poll(1000):
                return sent
            continue
        if step == 0:
            return sent or -1
        sent += step
    return sent
