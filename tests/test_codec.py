"""msgpack values: what round-trips, and errors that name the offending path."""

from __future__ import annotations

import datetime
import enum
from collections import OrderedDict
from typing import Any, NamedTuple

import pytest

from rstick import PayloadTooLarge, SerializationError
from rstick.codec import pack, unpack


class Point(NamedTuple):
    x: int
    y: int


class Color(enum.StrEnum):
    RED = "red"


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(2**63),
        2**64 - 1,
        1.5,
        "text",
        b"\x00\xff bytes",
        [],
        {"nested": {"list": [1, "two", None, b"3"], 4: {"deep": [[]]}}},
    ],
)
def test_msgpack_values_round_trip(value: Any) -> None:
    assert unpack(pack(value)) == value


def test_bytes_and_str_stay_distinct_and_tuples_become_lists() -> None:
    out = unpack(pack({"s": "a", "b": b"a", "t": (1, 2)}))
    assert out == {"s": "a", "b": b"a", "t": [1, 2]}
    assert isinstance(out["s"], str) and isinstance(out["b"], bytes)


def test_unpack_of_nothing_is_none() -> None:
    assert unpack(None) is None


@pytest.mark.parametrize(
    ("value", "path", "message"),
    [
        ({"a": [1, 2, {3}]}, "input", "input['a'][2]: set is not serializable"),
        ({3}, "input", "input: set is not serializable"),
        ([0, {"when": datetime.date(2024, 1, 2)}], "output", "output[1]['when']: date is not"),
        ({"x": (1, object())}, "output", "output['x'][1]: object is not serializable"),
        ({b"k": {7: [1.0, complex(1, 2)]}}, "input", "input[b'k'][7][1]: complex is not"),
        ([bytearray(b"ok"), memoryview(b"ok"), {1}], "input", "input[2]: set is not"),
        ({"big": 2**64}, "input", "input['big']: int 18446744073709551616 is out of the 64-bit"),
        ([-(2**63) - 1], "input", "input[0]: int -9223372036854775809 is out of the 64-bit"),
    ],
)
def test_errors_name_the_offending_path(value: Any, path: str, message: str) -> None:
    with pytest.raises(SerializationError) as info:
        pack(value, path)
    assert str(info.value).startswith(message)


def test_the_default_path_is_value_and_the_error_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"^value\['a'\]: frozenset is not serializable$"):
        pack({"a": frozenset()})


def test_what_pack_accepts_unpack_can_read() -> None:
    # msgpack packs a tuple key as an array; unpacking makes it a list, an
    # unhashable dict key: a worker would crash reading this input.
    value = {"ok": 1, "bad": {(1, 2): "x"}}
    with pytest.raises(SerializationError) as info:
        pack(value, "input")
    assert str(info.value) == "input['bad']: dict key (1, 2) of type tuple is not serializable"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({frozenset(): 1}, "input: dict key frozenset() of type frozenset is not serializable"),
        ({"a": [{Point(1, 2): 0}]}, "input['a'][0]: dict key Point(x=1, y=2) of type Point"),
        ({"a": {2**64: 0}}, "input['a']: dict key int 18446744073709551616 is out of the 64-bit"),
    ],
)
def test_bad_dict_keys_are_named(value: Any, message: str) -> None:
    with pytest.raises(SerializationError) as info:
        pack(value, "input")
    assert str(info.value).startswith(message)


def test_every_scalar_is_a_dict_key_and_subclasses_pack_as_their_base() -> None:
    keys = {"s": 1, b"b": 2, -3: 3, 1.5: 4, True: 5, None: 6}
    assert unpack(pack(keys)) == keys
    value = {
        Color.RED: Color.RED,
        "ordered": OrderedDict(a=1),
        "point": Point(1, 2),
        "pairs": [(1, "a"), (2, "b")],
    }
    assert unpack(pack(value)) == {
        "red": "red",
        "ordered": {"a": 1},
        "point": [1, 2],
        "pairs": [[1, "a"], [2, "b"]],
    }


def test_a_cycle_or_deep_nesting_is_refused_with_a_message() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError) as info:
        pack(loop, "input")
    # The start and the end of the path, not a thousand [0]s.
    assert str(info.value) == (
        "input[0][0][0][0][0][0]...(1013 more levels)...[0][0][0][0][0][0]: "
        "nested more than 1024 levels deep (or a cycle)"
    )
    deep: Any = 1
    for _ in range(1024):
        deep = [deep]
    data = pack(deep)  # msgpack's own limit, not lower
    assert len(data) == 1025 and isinstance(unpack(data), list)
    with pytest.raises(SerializationError, match="nested more than 1024 levels deep"):
        pack([deep], "input")


def test_a_deep_bad_value_shows_the_ends_of_its_path() -> None:
    value: Any = {"user": {"history": [object()]}}
    for _ in range(20):
        value = [value]
    with pytest.raises(SerializationError) as info:
        pack(value, "input")
    assert str(info.value) == (
        "input[0][0][0][0][0][0]...(11 more levels)...[0][0][0]['user']['history'][0]: "
        "object is not serializable"
    )


def test_huge_keys_and_ints_are_shortened_in_messages() -> None:
    with pytest.raises(SerializationError) as info:
        pack({"k" * 10_000: {1}}, "input")
    shown = "input['" + "k" * 56 + "...]: set is not serializable"  # 60 characters of repr
    assert str(info.value) == shown
    # A 30,000-digit int has no str() at all (Python's 4,300-digit limit).
    with pytest.raises(SerializationError, match=r"^input\[0\]: int <int of 100001 bits> is out"):
        pack([2**100_000], "input")
    with pytest.raises(SerializationError, match=r"^input: dict key \(1, 'x{52}\.\.\. of type"):
        pack({(1, "x" * 1000): 1}, "input")


def test_a_payload_over_the_limit_is_refused_with_its_size_and_the_limit() -> None:
    assert unpack(pack(b"x" * 100, "input", max_bytes=102)) == b"x" * 100  # 2-byte header
    with pytest.raises(PayloadTooLarge) as info:
        pack(b"x" * 100, "input", max_bytes=101)
    assert str(info.value) == (
        "input is 102 bytes packed, over the limit of 101 (Rstick(max_payload_bytes=...))"
    )
    assert isinstance(info.value, ValueError)
    with pytest.raises(
        PayloadTooLarge, match=r"^output is 5,000,008 bytes packed, over the limit of 4,194,304 "
    ):
        pack({"e": "E" * 5_000_000}, "output", max_bytes=4 * 1024 * 1024)
