"""JSON limits on request bodies: the text scan must agree with the decoded value's shape."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from streams.limits import BadJson, Limits, json_depth, parse_json
from streams.schemas import value_depth  # the decoded value's nesting: [[1]] is 2, a scalar 0

LIMITS = Limits(
    max_body_bytes=1 << 20, max_json_depth=4, max_json_items=50, write_rate=0, write_burst=1, timeout_s=1
)
#: Strings that would fool a scan that counted every bracket: with no escapes in their JSON (the
#: quote-parity path) and with escaped quotes and backslashes (the path that cuts strings out).
PLAIN = ["]]]", "[[[{", "}", "é[ü]", ""]
ESCAPED = ['"]]]', '\\"[[[', "\\\\", '\\\\"{{', "\n]"]


def random_json(rng: random.Random, budget: int, strings: list[str]) -> Any:
    if budget <= 0 or rng.random() < 0.3:
        return rng.choice([rng.choice(strings), 1.5, None, True, -3])
    items = [random_json(rng, budget - 1, strings) for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.5:
        return items
    return {rng.choice(strings) + str(i): item for i, item in enumerate(items)}


@pytest.mark.parametrize("strings", [PLAIN, ESCAPED])
def test_text_depth_equals_the_decoded_depth_whatever_the_strings_hold(strings: list[str]) -> None:
    rng = random.Random(7)
    for _ in range(300):
        value = random_json(rng, rng.randint(0, 8), strings)
        raw = json.dumps(value, ensure_ascii=False, indent=rng.choice([None, 1])).encode()
        assert strings is ESCAPED or b"\\" not in raw  # PLAIN takes the quote-parity path
        assert json_depth(raw) == value_depth(value), raw


def test_a_body_one_level_past_the_limit_is_refused_before_decoding_and_one_within_is_decoded() -> None:
    assert parse_json(b'{"a": [[{"b": "]]]]"}]]}', LIMITS) == {"a": [[{"b": "]]]]"}]]}
    with pytest.raises(BadJson, match="nested too deeply"):
        parse_json(b'{"a": [[{"b": ["\\"]]"]}]]}', LIMITS)
    with pytest.raises(BadJson, match="nested too deeply"):  # never reaches the decoder's recursion
        parse_json(b"[" * 100_000 + b"]" * 100_000, LIMITS)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32-le"])
def test_bodies_in_other_encodings_are_held_to_the_same_limits(encoding: str) -> None:
    assert parse_json("[[1]]".encode(encoding), LIMITS) == [[1]]
    with pytest.raises(BadJson, match="nested too deeply"):
        parse_json("[[[[[1]]]]]".encode(encoding), LIMITS)
    with pytest.raises(BadJson, match="more than 50 values"):
        parse_json(json.dumps(list(range(60))).encode(encoding), LIMITS)


def test_the_value_count_holds_for_long_bodies_and_short_ones_cannot_break_it() -> None:
    with pytest.raises(BadJson, match="more than 50 values"):
        parse_json(json.dumps(list(range(50))).encode(), LIMITS)  # 51 values: the list and 50 numbers
    assert len(parse_json(json.dumps(list(range(49))).encode(), LIMITS)) == 49
    assert parse_json(b"[" + b"1," * 24 + b"1]", LIMITS) == [1] * 25  # 51 bytes, 26 values


@pytest.mark.parametrize("raw", [b'{"x": ', b'"\xff\xfe"', b'["unterminated]]]]]]', b"[1]]"])
def test_broken_text_is_bad_json_never_a_crash(raw: bytes) -> None:
    with pytest.raises(BadJson):
        parse_json(raw, LIMITS)
