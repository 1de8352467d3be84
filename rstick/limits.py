"""The bounds rstick puts on what it is given: delays, timeouts, retries, the size
of inputs and outputs.

A number out of bounds is refused where it is given, naming the argument, rather
than overflowing, being taken as 0 (``nan``), or queueing a run that never runs
(``delay=1e30``)."""

from __future__ import annotations

import math
from numbers import Real

from . import defaults

MAX_SECONDS = 365 * 24 * 3600  # a year: the longest delay or timeout rstick takes
# Redis runs one script at a time, and a script that copies a value into or out of a
# run's hash blocks every other client while it does: about 1.5 ms per MiB on the
# machine of the README's benchmark (a 64 MiB input stalled Redis for 390 ms). At 4
# MiB the worst stall is a few milliseconds; bigger data belongs in files or object
# storage, which a sticky run can keep on its worker's disk.
DEFAULT_MAX_PAYLOAD_BYTES = defaults.MAX_PAYLOAD_BYTES


def seconds(
    what: str,
    value: object,
    *,
    positive: bool = False,
    bounded: bool = True,
    error: type[Exception] = ValueError,
) -> float:
    """``value`` as a float, when it is a real number of seconds in bounds: finite,
    at least 0 (above 0 when ``positive``) and, when ``bounded``, at most a year.
    Else raise ``error`` naming ``what``. A bool or a string is not a number here."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise error(f"{what} must be a number of seconds, not {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        number = math.inf
    if not math.isfinite(number):
        raise error(f"{what} must be a finite number of seconds, not {value!r}")
    if number < 0 or (positive and number == 0):
        raise error(
            f"{what} must be {'above' if positive else 'at least'} 0 seconds, not {value!r}"
        )
    if bounded and number > MAX_SECONDS:
        raise error(f"{what} must be at most {MAX_SECONDS} seconds (a year), not {value!r}")
    return number


def optional_seconds(
    what: str,
    value: object,
    *,
    positive: bool = True,
    bounded: bool = True,
    error: type[Exception] = ValueError,
) -> float | None:
    """None, or a number of seconds as ``seconds`` checks it (positive by default)."""
    if value is None:
        return None
    return seconds(what, value, positive=positive, bounded=bounded, error=error)


def count(
    what: str, value: object, *, minimum: int = 0, error: type[Exception] = ValueError
) -> int:
    """``value`` when it is an int (not a bool) of at least ``minimum``, else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{what} must be an int, not {type(value).__name__} {value!r}")
    if value < minimum:
        raise error(f"{what} must be >= {minimum}, not {value!r}")
    return value
