"""Plain text for people (aligned tables, local times, durations) and JSON for machines."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns aligned with two spaces; ``None`` shows as ``-``."""
    cells = [[str(h) for h in headers]]
    cells += [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def fields(pairs: Iterable[tuple[str, Any]]) -> str:
    """``label  value`` lines, labels aligned; pairs whose value is None are left out."""
    shown = [(k, str(v)) for k, v in pairs if v is not None]
    width = max((len(k) for k, _ in shown), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in shown)


def clock(ts: float | None, now: float | None = None) -> str | None:
    """Local time: to the millisecond when it is today, else with the date."""
    if ts is None:
        return None
    at = datetime.fromtimestamp(ts)
    if at.date() == datetime.fromtimestamp(time.time() if now is None else now).date():
        return at.strftime("%H:%M:%S.") + f"{at.microsecond // 1000:03d}"
    return at.strftime("%Y-%m-%d %H:%M:%S")


def age(ts: float | None, now: float | None = None) -> str | None:
    """``3.2s ago`` or ``in 4m 10s``."""
    if ts is None:
        return None
    delta = (time.time() if now is None else now) - ts
    text = span(abs(delta))
    return f"{text} ago" if delta >= 0 else f"in {text}"


def span(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def duration(seconds: float | None) -> str | None:
    """``12 ms``, ``1.25 s``, ``2m 03s``."""
    if seconds is None:
        return None
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    return span(seconds)


def shorten(text: str, limit: int = 60) -> str:
    """One line, at most ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def jsonable(value: Any) -> Any:
    """A msgpack value as JSON can hold it: bytes become text, keys become strings."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {_key(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def _key(key: Any) -> str:
    if isinstance(key, bytes):
        return key.decode("utf-8", "backslashreplace")
    return key if isinstance(key, str) else json.dumps(key)


def dumps(value: Any) -> str:
    return json.dumps(jsonable(value), indent=2)
