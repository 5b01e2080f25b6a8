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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Optional

EXTENSION = "http.response.zerocopysend"
STEP = 4 << 20
"""At most this much per sendfile call."""
TRIP_S = 0.1
"""At most this long per trip to a worker thread, so a slow client never holds one for long."""
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
    # Never under TLS: the kernel would send plaintext.
    return (type(cycle).__module__ == "uvicorn.protocols.http.httptools_impl"
            and hasattr(cycle, "transport") and hasattr(cycle, "expected_content_length")
            and cycle.transport.get_extra_info("sslcontext") is None)


def _sender(cycle: Any) -> Callable[[dict], Awaitable[None]]:
    async def send(message: dict) -> None:
        if message["type"] != EXTENSION:
            return await cycle.send(message)
        if cycle.disconnected:
            return
        if cycle.scope["method"] != "HEAD":
            file, offset, count = message["file"], message.get("offset"), message.get("count")
            offset = os.lseek(file.fileno(), 0, os.SEEK_CUR) if offset is None else offset
            count = os.fstat(file.fileno()).st_size - offset if count is None else count
            if cycle.chunked_encoding or count > cycle.expected_content_length:
                raise RuntimeError("a zero-copy send needs a content-length response that covers it")
            try:
                sent = await _send_file(cycle.transport, file, offset, count)
            except OSError:
                cycle.transport.close()  # the client went away (or stalled): nothing more to say to it
                await asyncio.sleep(0)  # lets uvicorn see the connection lost, so it logs no error
                return
            cycle.expected_content_length -= sent
        await cycle.send({"type": "http.response.body", "body": b"", "more_body": message.get("more_body", False)})

    return send


async def _send_file(transport: Any, file: Any, offset: int, count: int) -> int:
    """Send `count` bytes of `file` from `offset`; the bytes sent (fewer if the file ends first)."""
    await _flushed(transport)  # uvicorn's headers go out first
    sock = transport.get_extra_info("socket")
    if sock is None:
        raise ConnectionResetError("the client went away")
    # The thread works on duplicates, closed only once it is done: numbers closed under it could
    # be reused by another file or connection of this process, which it would then write into.
    sock_fd, file_fd, stop = os.dup(sock.fileno()), os.dup(file.fileno()), threading.Event()
    loop, sent, last_progress = asyncio.get_running_loop(), 0, time.monotonic()
    trip: Optional[asyncio.Future] = None
    try:
        while sent < count:
            trip = loop.run_in_executor(_threads, _send_some, sock_fd, file_fd, offset + sent, count - sent, stop)
            step = await asyncio.shield(trip)
            trip = None
            if step < 0:
                break  # the file ended early: the response is short, and uvicorn says so
            sent += step
            if step:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > STALL_S:
                raise TimeoutError(f"the client read nothing for {STALL_S:.0f} s")
    finally:
        if trip is None:
            _close(sock_fd, file_fd)
        else:  # cancelled mid-trip: the thread stops at its next look, then they are closed
            stop.set()
            trip.add_done_callback(lambda _: _close(sock_fd, file_fd))
    return sent


async def _flushed(transport: Any) -> None:
    deadline, pause = time.monotonic() + STALL_S, 0.001
    while transport.get_write_buffer_size() and not transport.is_closing():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the client read nothing for {STALL_S:.0f} s")
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.05)


def _send_some(sock_fd: int, file_fd: int, offset: int, count: int, stop: threading.Event) -> int:
    """What the socket takes of `count` bytes within TRIP_S (so slow clients share the threads); -1 at the file's end."""
    sent, poller, deadline = 0, select.poll(), time.monotonic() + TRIP_S
    poller.register(sock_fd, select.POLLOUT)
    while sent < count and not stop.is_set():
        try:
            step = os.sendfile(sock_fd, file_fd, offset + sent, min(STEP, count - sent))
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(max(1, int(left * 1000))):
                return sent
            continue
        if step == 0:
            return sent or -1
        sent += step
        if time.monotonic() > deadline:
            break
    return sent


def _close(*fds: int) -> None:
    for fd in fds:
        os.close(fd)
