"""msgpack values in and out, with errors that name the offending path."""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import SerializationError

_SCALARS = (str, bytes, int, float, bool, type(None))  # what a dict key may be
_BINARY = (bytearray, memoryview)  # values msgpack packs as bytes, too
_MAX_DEPTH = 1024  # msgpack's nesting limit, packing and unpacking alike


def _scalar_problem(value: Any) -> str | None:
    """What is wrong with a scalar msgpack cannot hold: an int out of range."""
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return f"int {value} is out of the 64-bit range"
    return None


def find_unserializable(value: Any, path: str) -> str | None:
    """Return ``"path: what is wrong"`` for the first bad value or dict key, else None.

    Iterative, depth first and in order, so a cycle or deep nesting gives a
    message rather than a RecursionError.
    """
    # (value, path, depth, is_key); a key is reported at the path of its dict.
    stack: list[tuple[Any, str, int, bool]] = [(value, path, 0, False)]
    while stack:
        v, p, depth, is_key = stack.pop()
        if depth > _MAX_DEPTH:
            return f"{p}: nested more than {_MAX_DEPTH} levels deep (or a cycle)"
        if is_key:
            if not isinstance(v, _SCALARS):
                return f"{p}: dict key {v!r} of type {type(v).__name__} is not serializable"
            bad = _scalar_problem(v)
            if bad:
                return f"{p}: dict key {bad}"
        elif isinstance(v, _SCALARS):
            bad = _scalar_problem(v)
            if bad:
                return f"{p}: {bad}"
        elif isinstance(v, _BINARY):
            continue
        elif isinstance(v, dict):
            for k, item in reversed(list(v.items())):
                stack.append((item, f"{p}[{k!r}]", depth + 1, False))
                stack.append((k, p, depth + 1, True))
        elif isinstance(v, (list, tuple)):
            for i in range(len(v) - 1, -1, -1):
                stack.append((v[i], f"{p}[{i}]", depth + 1, False))
        else:
            return f"{p}: {type(v).__name__} is not serializable"
    return None


def pack(value: Any, path: str = "value") -> bytes:
    """Encode a msgpack value; raise SerializationError naming the bad path.

    What pack accepts, unpack reads back. The fast path packs exact builtin
    types only (``strict_types``), where every dict key is a scalar. Anything
    else (a tuple, an enum, an OrderedDict, a bad value) takes the slow path:
    pack it as msgpack would, then unpack it to prove a worker can read it (a
    tuple dict key packs as an array, which cannot be a key again).
    """
    try:
        return msgpack.packb(value, use_bin_type=True, strict_types=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError):
        pass
    try:
        data: bytes = msgpack.packb(value, use_bin_type=True)
        unpack(data)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(find_unserializable(value, path) or f"{path}: {exc}") from None
    return data


def unpack(data: bytes | None) -> Any:
    if data is None:
        return None
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
