"""Task documents' JSON: orjson's speed, the standard library's output."""

import json
import math

from inferencesh_ray.json_codec import dumps, dumps_ascii, loads


def test_the_stream_line_is_ascii_exactly_as_the_standard_library_writes_it():
    task = {"id": "t", "output": {"text": "caf\u00e9 \u2028 line \U0001f600", "n": [1, 2.5, None, True]}, "logs": []}
    assert dumps_ascii(task) == json.dumps(task, ensure_ascii=True, separators=(",", ":")).encode()
    assert dumps_ascii(task).isascii() and b"\\u2028" in dumps_ascii(task)
    assert loads(dumps_ascii(task)) == task == loads(dumps(task))


def test_what_orjson_refuses_is_still_encoded():
    value = {"big": 2**70, 1: "an int key"}
    assert loads(dumps(value)) == {"big": 2**70, "1": "an int key"}
    assert loads(dumps({2: "x"})) == {"2": "x"}


def test_lone_surrogates_nan_from_older_rows_and_long_integers_survive_a_round_trip():
    surrogate = {"text": b"caf\xff".decode("utf-8", "surrogateescape")}  # a non-UTF-8 file name, say
    assert dumps_ascii(surrogate) == json.dumps(surrogate, separators=(",", ":")).encode()
    assert loads(dumps(surrogate)) == surrogate
    assert math.isnan(loads('{"x": NaN}')["x"])  # as `json` wrote it before
    assert loads(dumps({"n": 2**70, "m": -(2**64)})) == {"n": 2**70, "m": -(2**64)}
    assert loads('{"id": "t", "output": [1.5, 2]}') == {"id": "t", "output": [1.5, 2]}


def test_only_a_body_that_could_hold_deep_nesting_or_nan_is_walked():
    from inferencesh_ray.json_codec import may_need_checking, request_problem

    assert not may_need_checking(dumps({"input": {"v": [0.5] * 100_000}}))  # a large plain body: not walked
    assert may_need_checking(b'{"input": {"x": NaN}}') and may_need_checking(b"[" * 129)
    assert may_need_checking(dumps({"input": {"text": "NaN"}}))  # only a look: the walk then finds nothing
    assert request_problem({"text": "NaN"}, "input") is None
