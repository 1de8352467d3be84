"""msgpack values in and out, with errors that name the offending path."""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import PayloadTooLarge, SerializationError

_SCALARS = (str, bytes, int, float, bool, type(None))  # what a dict key may be
_BINARY = (bytearray, memoryview)  # values msgpack packs as bytes, too
_MAX_DEPTH = 1024  # msgpack's nesting limit, packing and unpacking alike
_PATH_ENDS = 6  # a long path is shown as its first and last few steps
_REPR_MAX = 60  # characters of a value or key shown in a message


def _short(value: Any) -> str:
    """A repr for a message: at most _REPR_MAX characters, and never an exception
    (a huge int has no repr past 4300 digits, a user's __repr__ may raise)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<int of {value.bit_length()} bits>"
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__} object>"
    return text if len(text) <= _REPR_MAX else text[: _REPR_MAX - 3] + "..."


def _scalar_problem(value: Any) -> str | None:
    """What is wrong with a scalar msgpack cannot hold: an int out of range."""
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return f"int {_short(value)} is out of the 64-bit range"
    return None


# A path is built as linked (parent, step) pairs, and spelled out only for the
# message: a thousand levels deep, the strings of every level would cost a
# quadratic amount of work.
_Path = tuple[Any, str]


def _spell(path: _Path) -> str:
    """``input['a'][0]``; past 2 * _PATH_ENDS steps, the first and last few with
    the count of those left out between them."""
    steps: list[str] = []
    node: _Path | None = path
    while node is not None:
        node, step = node
        steps.append(step)
    steps.reverse()
    root, rest = steps[0], steps[1:]
    if len(rest) > 2 * _PATH_ENDS:
        hidden = len(rest) - 2 * _PATH_ENDS
        rest = [*rest[:_PATH_ENDS], f"...({hidden} more levels)...", *rest[-_PATH_ENDS:]]
    return root + "".join(rest)


def find_unserializable(value: Any, path: str) -> str | None:
    """Return ``"path: what is wrong"`` for the first bad value or dict key, else None.

    Iterative, depth first and in order, so a cycle or deep nesting gives a
    message rather than a RecursionError.
    """
    # (value, path, depth, is_key); a key is reported at the path of its dict.
    stack: list[tuple[Any, _Path, int, bool]] = [(value, (None, path), 0, False)]
    while stack:
        v, p, depth, is_key = stack.pop()
        if depth > _MAX_DEPTH:
            return f"{_spell(p)}: nested more than {_MAX_DEPTH} levels deep (or a cycle)"
        if is_key:
            if not isinstance(v, _SCALARS):
                kind = type(v).__name__
                return f"{_spell(p)}: dict key {_short(v)} of type {kind} is not serializable"
            bad = _scalar_problem(v)
            if bad:
                return f"{_spell(p)}: dict key {bad}"
        elif isinstance(v, _SCALARS):
            bad = _scalar_problem(v)
            if bad:
                return f"{_spell(p)}: {bad}"
        elif isinstance(v, _BINARY):
            continue
        elif isinstance(v, dict):
            for k, item in reversed(list(v.items())):
                stack.append((item, (p, f"[{_short(k)}]"), depth + 1, False))
                stack.append((k, p, depth + 1, True))
        elif isinstance(v, (list, tuple)):
            for i in range(len(v) - 1, -1, -1):
                stack.append((v[i], (p, f"[{i}]"), depth + 1, False))
        else:
            return f"{_spell(p)}: {type(v).__name__} is not serializable"
    return None


def pack(value: Any, path: str = "value", *, max_bytes: int | None = None) -> bytes:
    """Encode a msgpack value; raise SerializationError naming the bad path, or
    PayloadTooLarge when it packs to more than ``max_bytes``.

    What pack accepts, unpack reads back. The fast path packs exact builtin
    types only (``strict_types``), where every dict key is a scalar. Anything
    else (a tuple, an enum, an OrderedDict, a bad value) takes the slow path:
    pack it as msgpack would, then unpack it to prove a worker can read it (a
    tuple dict key packs as an array, which cannot be a key again).
    """
    try:
        data: bytes = msgpack.packb(value, use_bin_type=True, strict_types=True)
    except (TypeError, ValueError, OverflowError):
        try:
            data = msgpack.packb(value, use_bin_type=True)
            unpack(data)
        except (TypeError, ValueError, OverflowError) as exc:
            problem = find_unserializable(value, path) or f"{path}: {exc}"
            raise SerializationError(problem) from None
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadTooLarge(
            f"{path} is {len(data):,} bytes packed, over the limit of {max_bytes:,} "
            "(Rstick(max_payload_bytes=...))"
        )
    return data


def unpack(data: bytes | None) -> Any:
    if data is None:
        return None
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
