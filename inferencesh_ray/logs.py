"""Route what an app prints or logs into the logs of the task that is running it.

`print`, `sys.stderr.write` and `logging` calls made while a task runs (in its asyncio
task, or in the thread a sync function runs in, since contextvars follow
`asyncio.to_thread`) go to that task's sink, line by line. Everything else passes
through to the real streams, and log records to the handlers configured (to stderr
when there are none, as Python does).
"""

from __future__ import annotations

import builtins
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
_print_before: Callable[..., None] = builtins.print
_printing = threading.local()


MAX_LINE_CHARS = 8192


class LineSink:
    """Turns writes into whole lines for one task, as a terminal would show them.

    A carriage return starts its line over (a progress bar's redraws become the one line
    it ends as, not thousands), and a line longer than MAX_LINE_CHARS goes in pieces of
    that size (as Docker's logs do), so a line that never ends holds no unbounded memory.
    Each stream has its own unfinished line: a bar redrawn on stderr does not wipe a
    `print(..., end="")` waiting on stdout.
    """

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self._partials: dict[str, str] = {}
        self._lock = threading.Lock()

    def write(self, text: str, stream: str = "stdout") -> None:
        with self._lock:
            *ended, partial = (self._partials.get(stream, "") + text).split("\n")
            lines = [piece for line in ended for piece in _pieces(_shown(line).rstrip("\r"))]
            *full, self._partials[stream] = _pieces(_shown(partial))
            lines += full
            for line in lines:  # under the lock: two threads' lines keep the order they were written in
                self._emit(line)

    def flush(self) -> None:
        with self._lock:
            rests, self._partials = [rest.rstrip("\r") for rest in self._partials.values()], {}
            for rest in rests:
                if rest:
                    self._emit(rest)


def _shown(line: str) -> str:
    """What a terminal shows of `line`: the text after its last carriage return (a CRLF's aside)."""
    cut = line.rstrip("\r").rfind("\r")
    return line[cut + 1:] if cut >= 0 else line


def _pieces(line: str) -> list[str]:
    return [line[start:start + MAX_LINE_CHARS] for start in range(0, len(line), MAX_LINE_CHARS)] or [""]


class _StreamProxy(io.TextIOBase):
    def __init__(self, real: TextIO, name: str) -> None:
        self._real = real
        self._name = name

    def write(self, text: str) -> int:
        sink = _current.get()
        if sink is None:
            return self._real.write(text)
        sink.write(text, self._name)
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
            sink.write(self.format(record) + "\n", "logging")  # whole lines, whatever a stream has pending
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


def _print(*objects: object, sep: "str | None" = " ", end: "str | None" = "\n", file: "TextIO | None" = None,
           flush: bool = False) -> None:
    sep, end = " " if sep is None else sep, "\n" if end is None else end
    if _current.get() is None and file in (None, sys.stdout, sys.stderr) and not getattr(_printing, "now", False):
        _printing.now = True  # a print set over ours that calls ours (`partial(print, flush=True)`) comes back here
        try:
            _print_before(*objects, sep=sep, end=end, file=file, flush=flush)
        finally:
            _printing.now = False
        return
    # In a task, or to a file of the app's own: as the builtin does (Serve's replacement
    # writes the tuple of `objects` to such a file).
    stream = sys.stdout if file is None else file
    stream.write(sep.join(map(str, objects)) + end)
    if flush:
        stream.flush()


def install() -> None:
    """Wrap stdout/stderr and `print` (again, if something swapped them since) and add a root logging handler once.

    `print` too, since Serve's throughput mode points it at its own logger on replicas,
    past both the streams and the root logger (and does again when its logging config changes).
    """
    global _installed, _print_before
    with _install_lock:
        if builtins.print is not _print:
            _print_before, builtins.print = builtins.print, _print
        if not isinstance(sys.stdout, _StreamProxy):
            sys.stdout = _StreamProxy(sys.stdout, "stdout")
        if not isinstance(sys.stderr, _StreamProxy):
            sys.stderr = _StreamProxy(sys.stderr, "stderr")
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
