"""describe_exception: whatever a step raises, a safe and bounded description."""

from __future__ import annotations

from typing import Any

import pytest

from rstick.failure import (
    MAX_MESSAGE_BYTES,
    MAX_TRACEBACK_BYTES,
    describe_exception,
    pack_error,
    truncate,
    truncate_middle,
)
from rstick.records import decode_error


def raised(exc: BaseException) -> BaseException:
    """``exc`` with a traceback, as a step's exception has one."""
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_a_small_exception_is_described_whole() -> None:
    error = describe_exception(raised(ValueError("boom")))
    assert (error.type, error.message) == ("ValueError", "boom")
    assert error.traceback.startswith("Traceback (most recent call last):\n")
    assert "in raised" in error.traceback
    assert error.traceback.endswith("ValueError: boom\n")


def test_a_20_mb_message_is_cut_in_the_message_and_in_the_traceback() -> None:
    error = describe_exception(raised(ValueError("E" * 20_000_000)))
    cut = 20_000_000 - MAX_MESSAGE_BYTES
    assert error.message == "E" * MAX_MESSAGE_BYTES + f"... [truncated {cut} bytes]"
    assert len(error.traceback.encode()) <= MAX_TRACEBACK_BYTES + 100
    assert error.traceback.startswith("Traceback (most recent call last):\n")
    assert "in raised" in error.traceback  # the frames are kept, not drowned by the message
    assert error.traceback.endswith(f"... [truncated {cut + len('ValueError: ')} bytes]\n")
    stored = pack_error(error)
    assert len(stored) < MAX_MESSAGE_BYTES + MAX_TRACEBACK_BYTES + 200
    assert decode_error(stored) == error


def test_a_long_traceback_keeps_its_start_and_its_end() -> None:
    def recurse(n: int) -> None:
        if n == 0:
            raise KeyError("bottom")
        # A different line each level, so that Python cannot fold them.
        [lambda: recurse(n - 1), lambda: recurse(n - 1)][n % 2]()

    error = describe_exception(raised_from(lambda: recurse(400)))
    assert len(error.traceback.encode()) < MAX_TRACEBACK_BYTES + 100
    assert error.traceback.startswith("Traceback (most recent call last):\n")
    assert "\n... [truncated " in error.traceback
    assert error.traceback.endswith("KeyError: 'bottom'\n")


def raised_from(fn: Any) -> BaseException:
    try:
        fn()
    except BaseException as caught:
        return caught
    raise AssertionError("did not raise")


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class ExitingStr(Exception):
    def __str__(self) -> str:
        raise SystemExit(3)


class NotAString(Exception):
    def __str__(self) -> Any:
        return 42


@pytest.mark.parametrize(
    ("exc", "type_name", "message"),
    [
        (BadStr(), "BadStr", "<str() of BadStr raised RuntimeError>"),
        (ExitingStr(), "ExitingStr", "<str() of ExitingStr raised SystemExit>"),
        (NotAString(), "NotAString", "<str() of NotAString raised TypeError>"),
        (SystemExit(3), "SystemExit", "3"),
        (KeyboardInterrupt(), "KeyboardInterrupt", ""),
        (GeneratorExit(), "GeneratorExit", ""),
    ],
)
def test_whatever_is_raised_is_described_without_raising(
    exc: BaseException, type_name: str, message: str
) -> None:
    error = describe_exception(raised(exc))
    assert (error.type, error.message) == (type_name, message)
    assert error.traceback.startswith("Traceback (most recent call last):\n")
    assert type_name in error.traceback
    pack_error(error)  # always packs


def test_a_message_no_utf8_can_hold_is_escaped_so_that_it_packs() -> None:
    error = describe_exception(raised(OSError("file \udc80.txt")))
    assert error.message == "file \\udc80.txt"
    assert "file \\udc80.txt" in error.traceback
    assert decode_error(pack_error(error)) == error


def test_a_chain_of_exceptions_is_in_the_traceback() -> None:
    def chained() -> None:
        try:
            raise KeyError("first")
        except KeyError as exc:
            raise ValueError("second") from exc

    error = describe_exception(raised_from(chained))
    assert "KeyError: 'first'" in error.traceback
    assert "direct cause" in error.traceback
    assert error.traceback.endswith("ValueError: second\n")


def test_truncate_counts_utf8_bytes_and_never_splits_a_character() -> None:
    assert truncate("héllo", 6) == "héllo"
    assert truncate("héllo", 5) == "héll... [truncated 1 bytes]"
    assert truncate("héllo", 2) == "h... [truncated 5 bytes]"  # half an é is no character
    assert truncate("ééé", 3) == "é... [truncated 4 bytes]"  # é is 2 bytes: half of one goes
    assert truncate_middle("a" * 10, 10) == "a" * 10
    assert (
        truncate_middle("a" * 8 + "b" * 8 + "c" * 8, 8)
        == "aa\n... [truncated 16 bytes] ...\ncccccc"
    )
