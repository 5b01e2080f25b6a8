"""Find the file values in a JSON document, guided by its JSON schema (`format: file`).

Works for the schemas of pydantic v2 (`$defs`) and v1 (`definitions`), through
Optional, unions, lists, dicts and nested models, so the app host can fetch input
files and store output files for any app, whichever `File` class it uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Union

Key = Union[str, int]


@dataclass(frozen=True)
class Slot:
    """Where a file value sits: `container[key]`, at the dotted location `loc`."""

    container: Union[dict, list]
    key: Key
    loc: str

    @property
    def value(self) -> Any:
        return self.container[self.key]

    def set(self, new: Any) -> None:
        self.container[self.key] = new


def file_slots(schema: dict, document: Any) -> list[Slot]:
    """Every place in `document` holding a file value (a string or an object), per the schema."""
    slots: dict[tuple[int, Key], Slot] = {}
    for slot in _walk(schema, schema, document, (), depth=0, seen={}):
        if isinstance(slot.value, (str, dict)):
            slots[(id(slot.container), slot.key)] = slot
    return list(slots.values())


def _resolve(root: dict, schema: dict) -> dict:
    seen = 0
    while "$ref" in schema and seen < 64:
        pointer = schema["$ref"]
        if not pointer.startswith("#/"):
            return {}
        node: Any = root
        for part in pointer[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        schema, seen = node, seen + 1
    return schema


def _walk(root: dict, schema: dict, value: Any, loc: tuple, depth: int, seen: dict) -> Iterator[Slot]:
    if depth > 64 or not isinstance(schema, dict) or not _may_hold_file(root, schema, seen):
        return
    schema = _resolve(root, schema)
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, ()):
            yield from _walk(root, option, value, loc, depth + 1, seen)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            sub = properties.get(name, extra if isinstance(extra, dict) else None)
            if sub is None:
                continue
            if _is_file(root, sub):
                yield Slot(value, name, _dotted(loc + (name,)))
            yield from _walk(root, sub, item, loc + (name,), depth + 1, seen)
    elif isinstance(value, list):
        prefix = schema.get("prefixItems") or []
        items = schema.get("items")
        for index, item in enumerate(value):
            sub = prefix[index] if index < len(prefix) else items
            if not isinstance(sub, dict):
                continue
            if _is_file(root, sub):
                yield Slot(value, index, _dotted(loc + (index,)))
            yield from _walk(root, sub, item, loc + (index,), depth + 1, seen)


def _may_hold_file(root: dict, schema: Any, seen: dict, depth: int = 0) -> bool:
    """Whether a value of this schema can be, or contain, a file: a list of 10,000 floats is not walked.

    Memoized per schema node (by id; `seen` lives for one `file_slots` call, so ids stay valid).
    A node met again while it is being answered (a recursive `$ref`) counts as "may": never wrong, only slower.
    """
    if not isinstance(schema, dict) or depth > 64:
        return False
    key = id(schema)
    if key in seen:
        return seen[key]
    seen[key] = True  # provisional, for recursive schemas
    node = _resolve(root, schema)
    children = [*node.get("properties", {}).values(), *(node.get("prefixItems") or [])]
    children += [node[k] for k in ("items", "additionalProperties") if isinstance(node.get(k), dict)]
    children += [option for k in ("anyOf", "oneOf", "allOf") for option in node.get(k, ())]
    found = _is_file(root, node) or any(_may_hold_file(root, child, seen, depth + 1) for child in children)
    seen[key] = found
    return found


def _is_file(root: dict, schema: dict) -> bool:
    schema = _resolve(root, schema)
    if schema.get("format") == "file":
        return True
    return any(
        isinstance(option, dict) and _resolve(root, option).get("format") == "file"
        for key in ("anyOf", "oneOf", "allOf")
        for option in schema.get(key, ())
    )


def _dotted(loc: tuple) -> str:
    return ".".join(str(part) for part in loc)
