"""JSON of task documents, with orjson.

A task's body is encoded for the store, for `GET /tasks/{id}` and for each stream line;
with a large output (32 embeddings of 384 floats, ~270 KB of JSON) the standard
library took ~6 ms per encoding, orjson ~0.3 ms. The standard library still answers
what orjson refuses or misreads (integers past 64 bits, lone surrogates, NaN written by
`json` before), with the same JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_NON_ASCII = re.compile("[^\x00-\x7f]")
_LONG_NUMBER = re.compile(rb"\d{19}")  # orjson reads integers past 64 bits as floats


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


def _escape(match: "re.Match[str]") -> str:
    code = ord(match.group())
    if code < 0x10000:
        return "\\u%04x" % code
    code -= 0x10000
    return "\\u%04x\\u%04x" % (0xD800 | (code >> 10), 0xDC00 | (code & 0x3FF))
