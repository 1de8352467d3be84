"""msgpack values in and out, with errors that name the offending path."""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import SerializationError

_SCALARS = (str, bytes, int, float, bool, type(None))


def find_unserializable(value: Any, path: str) -> str | None:
    """Return ``"path: type is not serializable"`` for the first bad value, else None."""
    if isinstance(value, _SCALARS):
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and not (-(2**63) <= value < 2**64)
        ):
            return f"{path}: int {value} is out of the 64-bit range"
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, bytes, int)):
                return f"{path}: key {k!r} of type {type(k).__name__} is not serializable"
            bad = find_unserializable(v, f"{path}[{k!r}]")
            if bad:
                return bad
        return None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            bad = find_unserializable(v, f"{path}[{i}]")
            if bad:
                return bad
        return None
    return f"{path}: {type(value).__name__} is not serializable"


def pack(value: Any, path: str = "value") -> bytes:
    """Encode a msgpack value; raise SerializationError naming the bad path."""
    try:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(find_unserializable(value, path) or f"{path}: {exc}") from None


def unpack(data: bytes | None) -> Any:
    if data is None:
        return None
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
