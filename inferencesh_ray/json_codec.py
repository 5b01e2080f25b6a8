"""JSON of task documents, with orjson.

A task's body is encoded for the store, for `GET /tasks/{id}` and for each stream line;
with a large output (32 embeddings of 384 floats, ~270 KB of JSON) the standard
library took ~6 ms per encoding, orjson ~0.3 ms. The standard library still answers
what orjson refuses or misreads (integers past 64 bits, lone surrogates, NaN written by
`json` before), with the same JSON.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Optional

import orjson

_NON_ASCII = re.compile("[^\x00-\x7f]")
_LONG_NUMBER = re.compile(rb"\d{19}")  # orjson reads integers past 64 bits as floats
# A task's input crosses Ray inside a few more levels; ~490 levels of lists already failed
# its serialization there (as a 503, as if the store were down), so requests stop far short.
MAX_DEPTH = 128
# What Python's json reads as a float past its range (inf): a 3-digit exponent, or 309 digits.
_MAY_OVERFLOW = re.compile(rb"[eE]\+?\d{3}|\d{309}")


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON; keys that are not strings become strings, as with `json`."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # integers past 64 bits, lone surrogates (from surrogateescape'd bytes)
        return json.dumps(value, separators=(",", ":")).encode()


def dumps_ascii(value: Any) -> bytes:
    """`json.dumps(value, ensure_ascii=True)`, compact: for clients that read lines without a charset."""
    encoded = dumps(value)
    return encoded if encoded.isascii() else _NON_ASCII.sub(_escape, encoded.decode()).encode()


def loads(data: "str | bytes") -> Any:
    """What `dumps` wrote, or `json.dumps` before it: integers past 64 bits stay integers."""
    raw = data.encode() if isinstance(data, str) else data
    if _LONG_NUMBER.search(raw):
        return json.loads(data)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:  # NaN and Infinity, escaped lone surrogates
        return json.loads(data)


def may_need_checking(body: bytes) -> bool:
    """Whether a request body could hold what `request_problem` finds: a cheap look at the bytes,
    so that a large body of plain numbers is not walked on the event loop."""
    return (b"NaN" in body or b"Infinity" in body or b"\x00" in body  # NUL: UTF-16 or -32, which json reads too
            or _MAY_OVERFLOW.search(body) is not None or body.count(b"[") + body.count(b"{") > MAX_DEPTH)


def request_problem(value: Any, where: str) -> Optional[str]:
    """Why `value`, read from a request, cannot be a task's JSON: nested over MAX_DEPTH levels,
    or holding NaN or Infinity (which `json` reads, though they are not JSON); None if it can."""
    stack: list[tuple[Any, int, Any]] = [(value, 0, (where,))] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth, path = stack.pop()
        if depth == MAX_DEPTH:
            return f"{where} is nested more than {MAX_DEPTH} levels deep"
        for key, child in item.items() if isinstance(item, dict) else enumerate(item):
            if type(child) is float and not math.isfinite(child):
                return f"{_dotted((path, key))}: {child} is not JSON (there is no NaN or Infinity); send a number or null"
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1, (path, key)))
    return None


def _dotted(path: Any) -> str:
    keys = []
    while len(path) == 2:
        path, key = path
        keys.append(str(key))
    return ".".join([path[0], *reversed(keys)])


def _escape(match: "re.Match[str]") -> str:
    code = ord(match.group())
    if code < 0x10000:
        return "\\u%04x" % code
    code -= 0x10000
    return "\\u%04x\\u%04x" % (0xD800 | (code >> 10), 0xDC00 | (code & 0x3FF))
