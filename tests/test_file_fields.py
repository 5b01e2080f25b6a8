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


class Tree(BaseModel):
    attachment: Optional[File] = None
    children: List["Tree"] = []


class Embeddings(BaseModel):
    vectors: List[List[float]]
    names: Dict[str, str] = {}
    image: Optional[File] = None


def test_recursive_schemas_are_walked_and_values_that_cannot_hold_files_are_not(monkeypatch):
    tree = {"attachment": "root", "children": [{"children": [{"attachment": "deep"}]}]}
    assert sorted(slot.loc for slot in file_slots(Tree.model_json_schema(), tree)) == ["attachment",
                                                                                         "children.0.children.0.attachment"]

    class Untouchable(list):
        def __iter__(self):
            raise AssertionError("a list of floats was walked")

    output = {"vectors": Untouchable([[0.1] * 384] * 32), "names": {"a": "b"}, "image": "img"}
    assert [slot.loc for slot in file_slots(Embeddings.model_json_schema(), output)] == ["image"]
