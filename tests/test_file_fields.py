"""Finding file values in JSON documents by schema."""

from __future__ import annotations

from typing import Dict, List, Optional, Union

from pydantic import BaseModel, v1

from inferencesh_ray import File
from inferencesh_ray.file_fields import file_slots


class Inner(BaseModel):
    doc: File
    label: str = ""


class Outer(BaseModel):
    top: File
    maybe: Optional[File] = None
    items: List[Inner] = []
    mapping: Dict[str, File] = {}
    either: Union[File, int] = 0
    text: str = "not a file"


def test_finds_files_everywhere_with_locations():
    doc = {
        "top": "a",
        "maybe": None,
        "items": [{"doc": {"uri": "b"}, "label": "x"}, {"doc": "c"}],
        "mapping": {"k": "d"},
        "either": "e",
        "text": "f",
    }
    slots = file_slots(Outer.model_json_schema(), doc)
    assert sorted(slot.loc for slot in slots) == ["either", "items.0.doc", "items.1.doc", "mapping.k", "top"]
    for slot in slots:
        slot.set("replaced")
    assert doc["items"][0]["doc"] == "replaced" and doc["text"] == "f"


class V1Inner(v1.BaseModel):
    doc: File


class V1Outer(v1.BaseModel):
    inner: V1Inner
    files: List[File] = []


def test_v1_definitions():
    slots = file_slots(V1Outer.schema(), {"inner": {"doc": "x"}, "files": ["y", "z"]})
    assert sorted(slot.loc for slot in slots) == ["files.0", "files.1", "inner.doc"]
