"""The example apps, each function run through the app host that `infsh-ray app dev` uses (no Ray)."""

from __future__ import annotations

import asyncio
import csv
import json

import numpy as np
import pytest
import torch
from conftest import ROOT
from helpers import events_of
from PIL import Image

from inferencesh_ray.discovery import discover
from inferencesh_ray.events import Completed, Failed, Log, SettingUp
from inferencesh_ray.host import AppHost, Call
from inferencesh_ray.loader import load_app

EXAMPLES = ROOT / "examples"
FUNCTIONS = {
    "image_model": ["generate", "upscale", "inpaint", "run"],
    "text_embeddings": ["embed", "embed_batched", "similarity"],
    "chat": ["chat", "completion"],
    "csv_pipeline": ["validate", "process", "export"],
}
ORDERS = """order_id,date,region,product,quantity,unit_price
1001,2026-01-05,north,Widget,3,2.50
1002,2026-01-05, South ,gadget,1,10
1003,2026-02-30,east,gizmo,1,7.99
1004,2026-01-17,North,widget,12,2.45
1005,2026-02-11,west,,4,3.10
1004,2026-02-20,north,widget,1,2.50
1006,2026-03-02,west,widget,five,2.50
1007,2026-03-09,east,gizmo,6,7.5
1008,2026-03-15,south,gadget,2
"""


class Session:
    """One app host on one event loop for a test module: what a warm replica or session actor holds."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.host = AppHost.load(str(EXAMPLES / name))

    def events(self, function: str | None, data: dict, setup: dict | None = None) -> list:
        return self.concurrent_events(function, [data], setup)[0]

    def concurrent_events(self, function: str | None, inputs: list[dict], setup: dict | None = None) -> list[list]:
        """The events of one call per input, all started together (as tasks reaching one replica)."""
        async def together() -> list[list]:
            return await asyncio.gather(*(events_of(self.host, Call(function, data, setup)) for data in inputs))

        return self.loop.run_until_complete(together())

    def __call__(self, function: str | None, data: dict, setup: dict | None = None) -> dict:
        last = self.events(function, data, setup)[-1]
        assert isinstance(last, Completed), last
        return last.output

    def close(self) -> None:
        self.loop.run_until_complete(self.host.close())
        self.loop.close()


def session_of(name: str):
    @pytest.fixture(scope="module")
    def fixture():
        session = Session(name)
        yield session
        session.close()

    return fixture


image = session_of("image_model")
embeddings = session_of("text_embeddings")
chat = session_of("chat")
pipeline = session_of("csv_pipeline")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_example_is_a_valid_app_with_documented_fields(name):
    discovery = discover(load_app(str(EXAMPLES / name)).app_cls)
    assert list(discovery.functions) == FUNCTIONS[name]
    skipped = [r.name for r in discovery.reports if r.function is None and not r.name.startswith("_")]
    assert skipped in ([], ["setup", "unload"])
    for function in discovery.functions.values():
        assert function.description, f"{name}.{function.name} has no docstring"
        for model in (function.input_model, function.output_model):
            undocumented = [field for field, info in model.model_fields.items() if not info.description]
            assert not undocumented, f"{name}: {model.__name__} fields without a description: {undocumented}"


# --- image model ---------------------------------------------------------------------------------


def read_bytes(file: dict) -> bytes:
    with open(file["path"], "rb") as data:
        return data.read()


def pixels(file: dict) -> np.ndarray:
    return np.asarray(Image.open(file["path"]).convert("RGB"), dtype=np.int16)


def test_image_generate_upscale_inpaint_round_trip(image, tmp_path):
    generated = image("generate", {"width": 40, "height": 24, "seed": 3})
    assert (generated["width"], generated["height"]) == (40, 24)
    default = image(None, {"width": 40, "height": 24, "seed": 3})  # run: the same as generate
    assert read_bytes(default["image"]) == read_bytes(generated["image"])

    upscaled = image("upscale", {"image": generated["image"]["path"], "scale": 2, "mode": "nearest"})
    assert Image.open(upscaled["image"]["path"]).size == (80, 48)
    assert (pixels(upscaled["image"])[::2, ::2] == pixels(generated["image"])).all()  # nearest keeps each pixel

    mask = np.zeros((24, 40), dtype=np.uint8)
    mask[8:16, 10:20] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    source = pixels(generated["image"])
    source[8:16, 10:20] = 0  # a black hole to fill
    Image.fromarray(source.astype(np.uint8)).save(tmp_path / "holed.png")
    inpainted = pixels(image("inpaint", {"image": str(tmp_path / "holed.png"), "mask": str(tmp_path / "mask.png")})["image"])
    assert (inpainted[mask == 0] == source[mask == 0]).all()  # outside the mask nothing changes
    assert inpainted[8:16, 10:20].mean() > 30  # the hole is filled from its neighbours


def failure(session: "Session", function: str, data: dict) -> str:
    last = session.events(function, data)[-1]
    assert isinstance(last, Failed), last
    return last.error


def test_upscale_and_inpaint_refuse_images_over_the_pixel_limit(image, tmp_path):
    Image.new("1", (600, 600)).save(tmp_path / "small.png")  # 4800x4800 at scale 8
    error = failure(image, "upscale", {"image": str(tmp_path / "small.png"), "scale": 8})
    assert "image 600x600 at scale 8.0 would be 4800x4800" in error and "pixel limit" in error
    assert image("upscale", {"image": str(tmp_path / "small.png"), "scale": 6.8, "mode": "nearest"})["width"] == 4080
    Image.new("1", (4097, 4096)).save(tmp_path / "huge.png")  # a few KB on disk, refused from its header
    error = failure(image, "inpaint", {"image": str(tmp_path / "huge.png"), "box": [0, 0, 2, 2]})
    assert "image is 4097x4096, over the 16777216 pixel limit" in error


def test_a_file_that_is_no_image_is_refused_naming_its_field_not_the_replicas_path(image, tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not pixels")
    Image.new("RGB", (8, 8)).save(tmp_path / "fine.png")
    assert failure(image, "upscale", {"image": str(tmp_path / "empty.png")}) == (
        "ValueError: image: not an image (0 bytes); send a PNG, JPEG or WebP")  # it showed PIL's own path
    error = failure(image, "inpaint", {"image": str(tmp_path / "fine.png"), "mask": str(tmp_path / "notes.png")})
    assert error == "ValueError: mask: not an image (10 bytes); send a PNG, JPEG or WebP"


def test_inpaint_works_on_the_mask_region_with_the_same_result_as_on_the_whole_image():
    module = load_app(str(EXAMPLES / "image_model")).module
    app = module.App()
    app.ops = module.ImageOps()
    source = torch.rand(1, 3, 20, 30)
    for rows, cols in ((slice(5, 9), slice(7, 12)), (slice(0, 3), slice(25, 30))):  # inside; at a corner
        mask = torch.zeros(1, 1, 20, 30)
        mask[..., rows, cols] = 1
        assert torch.allclose(app._fill(source, mask, 50), app.ops.inpaint(source, mask, 50), atol=1e-6)


@pytest.mark.parametrize("box, message", [
    ([-5, -5, 3, 3], "box x and y must be 0 or more"), ([5, 5, -3, 3], "box width and height must be at least 1"),
    ([5, 5, 0, 3], "box width and height must be at least 1"), (None, "give a mask or a box"),
])
def test_inpaint_refuses_a_box_that_fills_nothing_or_wraps_before_the_task_runs(box, message):
    from pydantic import ValidationError

    inpaint_input = load_app(str(EXAMPLES / "image_model")).module.InpaintInput
    with pytest.raises(ValidationError, match=message):
        inpaint_input(image="x.png", **({} if box is None else {"box": box}))


def test_inpaint_clips_a_box_to_the_image_and_refuses_one_wholly_outside(image, tmp_path):
    Image.new("RGB", (40, 24), (0, 0, 0)).save(tmp_path / "black.png")
    Image.new("RGB", (40, 24), (200, 200, 200)).save(tmp_path / "grey.png")
    grey = pixels(image("inpaint", {"image": str(tmp_path / "grey.png"), "box": [30, 20, 50, 50]})["image"])
    assert (grey == 200).all()  # the corner is filled from its grey surroundings, nothing else changed
    black = np.asarray(Image.open(tmp_path / "black.png").convert("RGB"), dtype=np.int16)
    black[0:2, 0:2] = 255
    Image.fromarray(black.astype(np.uint8)).save(tmp_path / "dots.png")
    filled = pixels(image("inpaint", {"image": str(tmp_path / "dots.png"), "box": [0, 0, 2, 2]})["image"])
    assert (filled == 0).all()  # the white corner was replaced, so the clipped box did fill it
    outside = {"image": str(tmp_path / "black.png"), "box": [40, 0, 3, 3]}
    assert "lies outside the 40x24 image" in failure(image, "inpaint", outside)


def test_generate_bounds_the_seed_to_64_bits(image):
    assert "seed" in failure(image, "generate", {"seed": 2**64, "width": 8, "height": 8})
    assert "seed" in failure(image, "generate", {"seed": -1, "width": 8, "height": 8})
    assert image("generate", {"seed": 2**63 - 1, "width": 8, "height": 8})["width"] == 8


def test_sixteen_bit_grey_keeps_its_level_and_transparency_becomes_white(image, tmp_path):
    Image.fromarray(np.full((6, 8), 32768, dtype=np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    grey = pixels(image("upscale", {"image": str(tmp_path / "g16.png"), "scale": 2, "mode": "nearest"})["image"])
    assert (grey == 128).all()  # mid-grey, not clipped to near white
    rgba = np.zeros((6, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red hidden under alpha 0 on the left half, opaque blue on the right
    rgba[:, 4:] = (0, 0, 255, 255)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    out = pixels(image("upscale", {"image": str(tmp_path / "rgba.png"), "scale": 2, "mode": "nearest"})["image"])
    assert (out[:, :8] == 255).all() and (out[:, 8:] == (0, 0, 255)).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given on a machine without CUDA")
@pytest.mark.parametrize("name, function, data", [
    ("image_model", "generate", {"width": 8, "height": 8}), ("text_embeddings", "embed", {"texts": ["x"]}),
])
def test_torch_examples_refuse_cuda_when_there_is_none_and_default_to_it(name, function, data):
    session = Session(name)
    try:
        assert session.host.setup_config(None).value.device == "auto"  # auto: CUDA when present
        failed = session.events(function, data, {"device": "cuda"})[-1]
        assert isinstance(failed, Failed) and "no CUDA device is visible" in failed.error
    finally:
        session.close()


# --- text embeddings -----------------------------------------------------------------------------


def test_embed_gives_one_unit_vector_per_text(embeddings):
    output = embeddings("embed", {"texts": ["A cat sat on the mat.", "A cat sat on the mat.", "Stock prices fell."]})
    vectors = np.array(output["embeddings"])
    assert vectors.shape == (3, 384) and output["dimensions"] == 384
    assert output["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert np.allclose(vectors[0], vectors[1], atol=1e-5)
    assert vectors[0] @ vectors[2] < 0.5  # unrelated sentences are far apart


def test_embed_batched_encodes_concurrent_tasks_together_and_gives_each_its_own_vectors(embeddings):
    inputs = [{"texts": ["A cat sat on the mat."]}, {"texts": ["Stock prices fell.", "The bakery opens at seven."]},
              {"texts": ["A cat sat on the mat.", "GPUs are fast.", "Stock prices fell."]}]
    runs = embeddings.concurrent_events("embed_batched", inputs)
    for data, events in zip(inputs, runs):
        assert isinstance(events[-1], Completed), events[-1]
        alone = embeddings("embed", data)  # the unbatched function, one task at a time
        assert np.allclose(events[-1].output["embeddings"], alone["embeddings"], atol=1e-5)
        assert events[-1].output["dimensions"] == 384
    logs = [event.text for event in runs[1] if isinstance(event, Log)]
    assert "embedding 2 text(s), batched with 2 other task(s)" in logs  # one batch of the three tasks


def test_similarity_ranks_the_relevant_document_first(embeddings):
    documents = [
        "The recipe needs two eggs, flour and sugar.",
        "Ray Serve scales model inference across a cluster of machines.",
        "The football match ended in a draw.",
    ]
    ranked = embeddings("similarity", {"query": "How do I serve machine learning models at scale?", "documents": documents})
    results = ranked["results"]
    assert [r["index"] for r in results][0] == 1 and results[0]["document"] == documents[1]
    assert results[0]["score"] > results[1]["score"] >= results[2]["score"]
    assert -1 <= results[-1]["score"] and results[0]["score"] <= 1
    top = embeddings("similarity", {"query": "baking a cake", "documents": documents, "top_k": 1})["results"]
    assert [r["index"] for r in top] == [0]


def test_embeddings_model_is_loaded_once_for_both_functions(embeddings):
    embeddings("embed", {"texts": ["warm"]})
    events = embeddings.events("similarity", {"query": "q", "documents": ["d"]})
    assert SettingUp() not in events  # the instance that embedded is already set up
    assert "ranking 1 document(s)" in [event.text for event in events if isinstance(event, Log)]


# --- chat vs completion --------------------------------------------------------------------------


def test_chat_keeps_the_history_across_calls_on_one_instance(chat):
    first = chat("chat", {"message": "Hello there!", "reset": True})
    assert first["turn"] == 1 and first["reply"]
    second = chat("chat", {"message": "Tell me about sessions."})
    assert second["turn"] == 2
    assert [(m["role"], m["content"]) for m in second["history"]] == [
        ("user", "Hello there!"), ("assistant", first["reply"]),
        ("user", "Tell me about sessions."), ("assistant", second["reply"]),
    ]
    assert second["reply"].lower().startswith("session")  # replies from the most telling word it knows
    # a message with no word it knows is answered from the conversation's earlier turns
    assert chat("chat", {"message": "Why?"})["reply"].lower().startswith("session")
    assert chat("chat", {"message": "Hello there!", "reset": True})["turn"] == 1


def test_chat_is_deterministic_for_the_same_conversation(chat):
    replies = [chat("chat", {"message": text, "reset": i == 0, "seed": 5})["reply"]
               for _ in range(2) for i, text in enumerate(["What is a replica?", "And a GPU?"])]
    assert replies[:2] == replies[2:]


def test_completion_is_stateless_and_deterministic(chat):
    before = chat("chat", {"message": "Tell me about files.", "reset": True})["history"]
    one = chat("completion", {"prompt": "A session keeps", "seed": 1})
    assert one == chat("completion", {"prompt": "A session keeps", "seed": 1})
    assert one["text"].startswith("A session keeps ") and one["text"].endswith(one["completion"])
    assert one["completion"] and not one["completion"][0].isupper()  # continues mid-sentence
    assert chat("chat", {"message": "Tell me about files."})["history"][:2] == before  # completion left no trace
    limited = chat("completion", {"prompt": "The", "max_words": 3})["completion"]
    assert len([w for w in limited.split() if any(c.isalnum() for c in w)]) <= 3


def test_chat_counts_turns_past_the_trimmed_history_and_keeps_varying_its_replies(chat):
    replies = [chat("chat", {"message": "Tell me about replicas.", "reset": i == 0, "max_words": 3})
               for i in range(105)]
    assert [r["turn"] for r in replies[99:]] == list(range(100, 106))
    assert len(replies[-1]["history"]) == 200  # the history is trimmed, the turn count is not
    assert len({r["reply"] for r in replies[100:]}) > 1  # the seed moves on with the turn
    assert chat("chat", {"message": "Hi", "reset": True})["turn"] == 1


def test_completion_of_a_blank_prompt_starts_with_its_first_word(chat):
    text = chat("completion", {"prompt": "   ", "seed": 1})["text"]
    assert text and text == text.lstrip()


def test_a_new_setup_config_starts_a_fresh_conversation(chat):
    chat("chat", {"message": "Tell me about tasks.", "reset": True})
    bigram = chat("chat", {"message": "Tell me about tasks."}, {"order": 2})
    assert bigram["turn"] == 1  # unload, then setup with order 2: a new instance state


# --- CSV pipeline --------------------------------------------------------------------------------


@pytest.fixture
def orders(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text(ORDERS)
    return str(path)


def test_validate_reports_each_bad_row(pipeline, orders):
    report = pipeline("validate", {"table": orders})
    assert report["ok"] is False
    assert (report["rows"], report["valid_rows"], report["invalid_rows"]) == (9, 4, 5)
    assert report["columns"] == ["order_id", "date", "region", "product", "quantity", "unit_price"]
    assert [(e["line"], e["column"]) for e in report["errors"]] == [
        (4, "date"), (6, "product"), (7, "order_id"), (8, "quantity"), (10, None),
    ]
    assert "first on line 5" in report["errors"][2]["message"]
    assert report["errors"][4]["message"] == "expected 6 fields, found 5"
    assert len(pipeline("validate", {"table": orders, "max_errors": 2})["errors"]) == 2


def test_validate_names_missing_columns_and_passes_a_clean_semicolon_file(pipeline, tmp_path):
    (tmp_path / "bad.csv").write_text("id,when\n1,2026-01-01\n")
    report = pipeline("validate", {"table": str(tmp_path / "bad.csv")})
    assert report["ok"] is False and report["rows"] == 1
    assert report["missing_columns"] == ["order_id", "date", "region", "product", "quantity", "unit_price"]
    (tmp_path / "good.csv").write_text("order_id;date;region;product;quantity;unit_price;note\n7;2026-05-01;north;x;1;2.5;hi\n")
    good = pipeline("validate", {"table": str(tmp_path / "good.csv")})
    assert good["ok"] is True and good["valid_rows"] == 1 and good["errors"] == []


def test_process_writes_cleaned_rows_and_totals(pipeline, orders):
    processed = pipeline("process", {"table": orders})
    assert (processed["rows_in"], processed["rows_out"], processed["dropped"]) == (9, 4, 5)
    with open(processed["table"]["path"], newline="") as result:
        rows = list(csv.DictReader(result))
    assert [row["order_id"] for row in rows] == ["1001", "1002", "1004", "1007"]  # by date
    assert rows[1] == {"order_id": "1002", "date": "2026-01-05", "region": "South", "product": "gadget",
                       "quantity": "1", "unit_price": "10.00", "revenue": "10.00"}
    assert rows[2]["region"] == "North" and rows[2]["revenue"] == "29.40"

    by_region = pipeline("process", {"table": orders, "group_by": "region"})
    with open(by_region["table"]["path"], newline="") as result:
        totals = {row["group"]: row for row in csv.DictReader(result)}
    assert totals["North"] == {"group": "North", "orders": "2", "quantity": "15", "revenue": "36.90"}
    assert list(totals) == ["East", "North", "South"]
    by_month = pipeline("process", {"table": orders, "group_by": "month"})
    assert by_month["rows_out"] == 2  # 2026-01 and 2026-03


def test_export_writes_typed_json_and_json_lines(pipeline, orders):
    exported = pipeline("export", {"table": orders})
    records = json.loads(read_bytes(exported["file"]))
    assert exported["records"] == len(records) == 4 and exported["dropped"] == 5
    assert records[0] == {"order_id": "1001", "date": "2026-01-05", "region": "North", "product": "widget",
                          "quantity": 3, "unit_price": 2.5, "revenue": 7.5}
    jsonl = pipeline("export", {"table": orders, "format": "jsonl"})["file"]
    assert jsonl["path"].endswith(".jsonl") and jsonl["content_type"] == "application/x-ndjson"
    lines = read_bytes(jsonl).decode().splitlines()
    assert [json.loads(line) for line in lines] == records


def test_process_and_export_refuse_a_table_without_the_columns(pipeline, tmp_path):
    (tmp_path / "bad.csv").write_text("id,when\n1,2026-01-01\n")
    for function in ("process", "export"):
        failed = pipeline.events(function, {"table": str(tmp_path / "bad.csv")})[-1]
        assert isinstance(failed, Failed)
        assert "the CSV lacks the column(s) order_id, date, region, product, quantity, unit_price" in failed.error


HEADER = "order_id,date,region,product,quantity,unit_price\n"


def test_an_error_in_a_multi_line_record_names_the_line_it_starts_on(pipeline, tmp_path):
    (tmp_path / "quoted.csv").write_text(HEADER + '1,2026-01-05,north,"big\nwidget",x,3.50\n2,2026-01-06,south,gadget,y,2\n')
    errors = pipeline("validate", {"table": str(tmp_path / "quoted.csv")})["errors"]
    assert [(e["line"], e["value"]) for e in errors] == [(2, "x"), (4, "y")]


def test_a_file_that_is_not_utf8_is_refused_with_the_field_and_the_remedy(pipeline, tmp_path):
    (tmp_path / "latin1.csv").write_bytes((HEADER + "1,2026-01-05,Münster,widget,1,2\n").encode("latin-1"))
    error = failure(pipeline, "validate", {"table": str(tmp_path / "latin1.csv")})
    assert "table: the file is not UTF-8 text" in error and "save it as UTF-8" in error


@pytest.mark.parametrize("quantity, price", [("1_000", "2"), ("+5", "2"), ("\u0665", "2"), ("5", "1_0"), ("5", "1e3")])
def test_numbers_must_be_plain_ascii_digits(pipeline, tmp_path, quantity, price):
    (tmp_path / "odd.csv").write_text(HEADER + f"1,2026-01-05,north,widget,{quantity},{price}\n", encoding="utf-8")
    report = pipeline("validate", {"table": str(tmp_path / "odd.csv")})
    assert report["invalid_rows"] == 1, report


def test_a_price_of_minus_zero_is_written_as_zero(pipeline, tmp_path):
    (tmp_path / "zero.csv").write_text(HEADER + "1,2026-01-05,north,widget,-0,-0\n")
    with open(pipeline("process", {"table": str(tmp_path / "zero.csv")})["table"]["path"], newline="") as result:
        row = next(csv.DictReader(result))
    assert (row["quantity"], row["unit_price"], row["revenue"]) == ("0", "0.00", "0.00")


def test_a_required_column_given_twice_is_reported_not_guessed(pipeline, tmp_path):
    (tmp_path / "twice.csv").write_text(HEADER.strip() + ",quantity\n1,2026-01-05,north,widget,2,3.50,99\n")
    report = pipeline("validate", {"table": str(tmp_path / "twice.csv")})
    assert report["ok"] is False and report["duplicate_columns"] == ["quantity"]
    error = failure(pipeline, "process", {"table": str(tmp_path / "twice.csv")})
    assert "the CSV has the column(s) quantity more than once" in error
