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
    """The frames of `exc`'s traceback that belong to the app, formatted; '' if none."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith(_HIDDEN) and "site-packages" not in frame.filename
    ]
    if not frames:
        return ""
    return "Traceback (app frames):\n" + "".join(traceback.format_list(frames)).rstrip()


def describe(exc: BaseException) -> str:
    """`Type: message`, the one line a client sees."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
