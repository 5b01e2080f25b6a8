"""Tracebacks that show the app's own frames, not the framework's or asyncio's."""

from __future__ import annotations

import os
import traceback

_HIDDEN = (
    os.path.dirname(os.path.abspath(__file__)),  # inferencesh_ray itself
    os.path.dirname(os.path.abspath(traceback.__file__)),  # the standard library
    "<frozen ",
)


def app_traceback(exc: BaseException) -> str:
    """The frames of `exc`'s traceback that belong to the app, formatted; '' if none.

    Paths are relative to the directory of the outermost app frame (the app's own file), and
    a file outside it is named by its base name: a server's paths do not reach its clients.
    """
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith(_HIDDEN) and "site-packages" not in frame.filename
    ]
    if not frames:
        return ""
    root = os.path.dirname(frames[0].filename) + os.sep
    shown = [traceback.FrameSummary(_relative(frame.filename, root), frame.lineno, frame.name, line=frame.line)
             for frame in frames]
    return "Traceback (app frames):\n" + "".join(traceback.format_list(shown)).rstrip()


def _relative(path: str, root: str) -> str:
    return path[len(root):] if path.startswith(root) else os.path.basename(path)


def describe(exc: BaseException) -> str:
    """`Type: message`, the one line a client sees."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
