"""Route what an app prints or logs into the logs of the task that is running it.

`print`, `sys.stderr.write` and `logging` calls made while a task runs (in its asyncio
task, or in the thread a sync function runs in, since contextvars follow
`asyncio.to_thread`) go to that task's sink, line by line. Everything else passes
through to the real streams, and log records to the handlers configured (to stderr
when there are none, as Python does).
"""

from __future__ import annotations

import contextvars
import io
import logging
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

_current: contextvars.ContextVar["LineSink | None"] = contextvars.ContextVar("infsh_log_sink", default=None)
_install_lock = threading.Lock()
_installed = False


class LineSink:
    """Turns writes into whole lines for one task."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()
        for line in lines:
            self._emit(line)

    def flush(self) -> None:
        with self._lock:
            rest, self._partial = self._partial, ""
        if rest:
            self._emit(rest)


class _StreamProxy(io.TextIOBase):
    def __init__(self, real: TextIO) -> None:
        self._real = real

    def write(self, text: str) -> int:
        sink = _current.get()
        if sink is None:
            return self._real.write(text)
        sink.write(text)
        return len(text)

    def flush(self) -> None:
        if _current.get() is None:
            self._real.flush()

    def __getattr__(self, name: str):
        return getattr(self._real, name)


class _SinkHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        sink = _current.get()
        if sink is not None:
            sink.write(self.format(record) + "\n")
        elif not _other_handlers(self, record):
            # Python writes such a record to stderr when no handler is configured; being on
            # the root logger, this handler would otherwise swallow it (a host's own errors too).
            last_resort = logging.lastResort
            if last_resort is not None and record.levelno >= last_resort.level:
                last_resort.handle(record)


def _other_handlers(handler: logging.Handler, record: logging.LogRecord) -> bool:
    """Whether a handler besides `handler` sees `record`, on its logger or one it propagates to."""
    logger: "logging.Logger | None" = logging.getLogger(record.name)
    while logger is not None:
        if any(other is not handler for other in logger.handlers):
            return True
        logger = logger.parent if logger.propagate else None
    return False


def install() -> None:
    """Wrap stdout/stderr (again, if something swapped them since) and add a root logging handler once."""
    global _installed
    with _install_lock:
        if not isinstance(sys.stdout, _StreamProxy):
            sys.stdout = _StreamProxy(sys.stdout)
        if not isinstance(sys.stderr, _StreamProxy):
            sys.stderr = _StreamProxy(sys.stderr)
        if not _installed:
            handler = _SinkHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            logging.getLogger().addHandler(handler)
            _installed = True


@contextmanager
def capture(emit: Callable[[str], None]) -> Iterator[LineSink]:
    """Within this block (and threads started via asyncio.to_thread), output goes to `emit`."""
    install()
    sink = LineSink(emit)
    token = _current.set(sink)
    try:
        yield sink
    finally:
        sink.flush()
        _current.reset(token)
