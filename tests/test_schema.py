"""functions_schema.json: per-function input/output schemas and the setup schema."""

from __future__ import annotations

from inferencesh_ray.discovery import discover
from inferencesh_ray.loader import load_app
from inferencesh_ray.schema import functions_schema

FILE = {"type": "string", "format": "file"}


def schema_of(path):
    return functions_schema(discover(load_app(str(path)).app_cls))


def test_field_types_and_declaration_order(apps):
    schema = schema_of(apps / "schema_app.py")
    assert schema["default_function"] == "run"
    run = schema["functions"]["run"]
    assert run["description"] == "Echo the files back."
    props = run["input_schema"]["properties"]
    assert list(props) == [
        "zeta", "count", "ratio", "flag", "image", "maybe_image", "images",
        "named_images", "color", "points", "note", "alpha",
    ]
    assert props["zeta"]["type"] == "string" and props["zeta"]["description"] == "declared first"
    assert props["count"] == {"default": 3, "title": "Count", "type": "integer"}
    assert props["ratio"]["type"] == "number" and props["flag"]["type"] == "boolean"
    assert {k: props["image"][k] for k in ("type", "format")} == FILE
    assert FILE in props["maybe_image"]["anyOf"]
    assert props["images"]["items"] == FILE
    assert props["named_images"]["additionalProperties"] == FILE
    assert props["color"]["enum"] == ["red", "green"]
    assert props["points"]["items"] == {"$ref": "#/$defs/Point"}
    assert run["input_schema"]["required"] == ["zeta", "image"]
    assert run["output_schema"]["properties"]["files"]["items"] == FILE
    assert schema["setup_schema"]["properties"]["size"]["enum"] == ["small", "large"]


def test_v1_models_and_official_files(apps):
    v1 = schema_of(apps / "pydantic_v1_app.py")["functions"]["run"]["input_schema"]
    assert v1["properties"]["image"] == {"title": "Image", **FILE} or v1["properties"]["image"]["format"] == "file"
    assert v1["required"] == ["name"]
    official = schema_of(apps / "official_app.py")
    image = official["functions"]["run"]["input_schema"]["properties"]["image"]
    assert FILE in image["anyOf"]
    assert "setup_schema" in official


def test_no_setup_schema_without_typed_setup(apps):
    assert "setup_schema" not in schema_of(apps / "skips.py")


def test_a_function_whose_model_has_no_json_schema_is_left_out_not_a_crash(apps):
    # `raw` returns a model holding an arbitrary type; validation accepts it, JSON schema cannot.
    assert list(schema_of(apps / "odd_attributes.py")["functions"]) == ["run"]
