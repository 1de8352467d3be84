"""The bounds on numbers: what ``seconds`` and ``count`` accept and how they refuse."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import pytest

from rstick.errors import DefinitionError
from rstick.limits import MAX_SECONDS, count, optional_seconds, seconds


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0.0), (5, 5.0), (0.25, 0.25), (Fraction(1, 4), 0.25), (MAX_SECONDS, MAX_SECONDS)],
)
def test_seconds_takes_real_numbers_in_bounds(value: Any, expected: float) -> None:
    assert seconds("delay", value) == expected
    assert type(seconds("delay", value)) is float


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5", "delay must be a number of seconds, not str '5'"),
        (True, "delay must be a number of seconds, not bool True"),
        (None, "delay must be a number of seconds, not NoneType None"),
        (math.nan, "delay must be a finite number of seconds, not nan"),
        (math.inf, "delay must be a finite number of seconds, not inf"),
        (-math.inf, "delay must be a finite number of seconds, not -inf"),
        (10**400, "delay must be a finite number of seconds"),
        (-5, "delay must be at least 0 seconds, not -5"),
        (1e30, f"delay must be at most {MAX_SECONDS} seconds \\(a year\\), not 1e\\+30"),
        (MAX_SECONDS + 1, "delay must be at most"),
    ],
)
def test_seconds_refuses_naming_the_argument(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        seconds("delay", value)


def test_positive_unbounded_and_optional_seconds() -> None:
    with pytest.raises(ValueError, match="timeout must be above 0 seconds, not 0"):
        seconds("timeout", 0, positive=True)
    assert seconds("timeout", 1e12, bounded=False) == 1e12
    with pytest.raises(ValueError, match="finite"):
        seconds("timeout", math.inf, bounded=False)
    assert optional_seconds("timeout", None) is None
    assert optional_seconds("timeout", 0, positive=False) == 0.0
    with pytest.raises(DefinitionError, match="timeout must be above 0"):
        optional_seconds("timeout", -1, error=DefinitionError)


def test_count_takes_ints_only() -> None:
    assert count("retries", 3) == 3
    for bad, message in [
        (-1, "retries must be >= 0, not -1"),
        (True, "retries must be an int, not bool True"),
        (2.0, "retries must be an int, not float 2.0"),
        ("3", "retries must be an int, not str '3'"),
    ]:
        with pytest.raises(ValueError, match=message):
            count("retries", bad)
    with pytest.raises(ValueError, match="max_deliveries must be >= 1, not 0"):
        count("max_deliveries", 0, minimum=1)
