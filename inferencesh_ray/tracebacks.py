"""Tracebacks that show the app's own frames, not the framework's or asyncio's."""

from __future__ import annotations

import os
import re
import traceback

_HIDDEN = (
    os.path.dirname(os.path.abspath(__file__)),  # inferencesh_ray itself
    os.path.dirname(os.path.abspath(traceback.__file__)),  # the standard library
    "<frozen ",
)
_INSTALLED = re.compile(r"[/\\](site|dist)-packages[/\\]")  # installed libraries, pip's and Debian's


def app_traceback(exc: BaseException) -> str:
    """The frames of `exc`'s traceback that belong to the app, formatted; '' if none.

    Paths are relative to the directory the app's files share, or are base names when they
    share none but the root: a server's paths do not reach its clients.
    """
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith(_HIDDEN) and not _INSTALLED.search(frame.filename)
    ]
    if not frames:
        return ""
    files = [frame.filename for frame in frames if os.path.isabs(frame.filename)]  # not "<string>"
    root = os.path.commonpath([os.path.dirname(path) for path in files]) if files else os.sep
    shown = [traceback.FrameSummary(_relative(frame.filename, root), frame.lineno, frame.name, line=frame.line)
             for frame in frames]
    return "Traceback (app frames):\n" + "".join(traceback.format_list(shown)).rstrip()


def _relative(path: str, root: str) -> str:
    if not os.path.isabs(path):
        return path
    return os.path.basename(path) if root == os.sep else os.path.relpath(path, root)


def describe(exc: BaseException) -> str:
    """`Type: message`, the one line a client sees."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
