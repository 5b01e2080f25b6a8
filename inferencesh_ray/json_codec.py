"""JSON of task documents, with orjson.

A task's body is encoded for the store, for `GET /tasks/{id}` and for each stream line;
with a large output (32 embeddings of 384 floats, ~270 KB of JSON) the standard
library took ~6 ms per encoding, orjson ~0.3 ms. The standard library still answers
what orjson refuses (integers past 64 bits), with the same JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_NON_ASCII = re.compile("[^\x00-\x7f]")


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON; keys that are not strings become strings, as with `json`."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def dumps_ascii(value: Any) -> bytes:
    """`json.dumps(value, ensure_ascii=True)`, compact: for clients that read lines without a charset."""
    encoded = dumps(value)
    return encoded if encoded.isascii() else _NON_ASCII.sub(_escape, encoded.decode()).encode()


def loads(data: "str | bytes") -> Any:
    return orjson.loads(data)


def _escape(match: "re.Match[str]") -> str:
    code = ord(match.group())
    if code < 0x10000:
        return "\\u%04x" % code
    code -= 0x10000
    return "\\u%04x\\u%04x" % (0xD800 | (code >> 10), 0xDC00 | (code & 0x3FF))
