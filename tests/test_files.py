"""The File field type: construction, metadata, pydantic v2 and v1 validation, serialization."""

from __future__ import annotations

from typing import List, Optional

import pytest
from pydantic import BaseModel, ValidationError, v1

from inferencesh_ray import File


class Model(BaseModel):
    image: File
    maybe: Optional[File] = None
    many: List[File] = []


def test_from_path_fills_metadata(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(b"12345")
    file = File.from_path(path)
    assert (file.path, file.filename, file.content_type, file.size) == (str(path), "photo.png", "image/png", 5)
    assert file.exists() and file.uri is None
    path.write_bytes(b"1234567")
    file.refresh_metadata()
    assert file.size == 7


def test_strings_are_uris_or_paths():
    assert File("https://x.test/a.png").uri == "https://x.test/a.png"
    assert File("https://x.test/a.png").path is None
    local = File("relative/b.txt")
    assert local.path == "relative/b.txt" and local.uri is None and not local.exists()
    assert File("data:text/plain;base64,aGk=").uri.startswith("data:")


def test_objects_and_errors():
    file = File({"uri": "s3://b/k.bin", "filename": "k.bin", "size": 3})
    assert file.to_dict() == {"uri": "s3://b/k.bin", "size": 3, "filename": "k.bin"}
    assert File(file) == file
    with pytest.raises(ValueError, match="unknown file keys"):
        File({"uri": "x://y", "upload_url": "z"})
    with pytest.raises(ValueError, match="needs a uri or a path"):
        File()


def test_pydantic_v2_validation_and_dump(tmp_path):
    model = Model(image="https://x.test/a.png", many=[{"path": "/tmp/x.txt"}])
    assert isinstance(model.image, File) and model.many[0].filename == "x.txt"
    assert model.model_dump(mode="json")["image"] == {"uri": "https://x.test/a.png"}
    with pytest.raises(ValidationError, match="a file is required"):
        Model(image="")
    with pytest.raises(ValidationError, match="expected a URI, a path or a file object"):
        Model(image=42)


def test_official_file_objects_are_accepted(tmp_path):
    from inferencesh import File as OfficialFile

    path = tmp_path / "o.txt"
    path.write_text("hi")
    model = Model(image=OfficialFile(path=str(path)))
    assert model.image.path == str(path) and model.image.size == 2


def test_json_schema_is_a_string_with_format_file():
    props = Model.model_json_schema()["properties"]
    assert props["image"] == {"format": "file", "type": "string", "title": "Image"}
    assert {"format": "file", "type": "string"} in props["maybe"]["anyOf"]


def test_pydantic_v1_models():
    class V1(v1.BaseModel):
        image: File

    assert V1(image="https://x.test/a.png").image.uri == "https://x.test/a.png"
    assert V1.schema()["properties"]["image"]["format"] == "file"
    with pytest.raises(v1.ValidationError):
        V1(image="")
