"""What a failed step leaves behind: a safe, bounded description of its exception.

A step may raise anything: an exception whose ``__str__`` raises, a message of
20 MB, a string no UTF-8 can hold. The description never raises, and its message
and traceback are cut to a documented size (in Redis and in the worker's log),
saying how much was cut."""

from __future__ import annotations

import traceback

from .codec import pack
from .errors import StepError

MAX_MESSAGE_BYTES = 8 * 1024  # an error message, UTF-8, and each line of a traceback
MAX_TRACEBACK_BYTES = 32 * 1024  # a whole traceback, UTF-8


def _utf8(text: str) -> bytes:
    """``text`` as UTF-8; a lone surrogate (``os.fsdecode`` makes them) as ``\\udc80``."""
    return text.encode("utf-8", "backslashreplace")


def truncate(text: str, limit: int) -> str:
    """``text`` when it holds in ``limit`` UTF-8 bytes, else its first ``limit``
    bytes (whole characters) and ``... [truncated N bytes]``."""
    data = _utf8(text)
    if len(data) <= limit:
        return data.decode()
    kept = data[:limit].decode("utf-8", "ignore")  # a character cut in two goes
    return f"{kept}... [truncated {len(data) - len(_utf8(kept))} bytes]"


def truncate_middle(text: str, limit: int) -> str:
    """Like ``truncate``, but keeps the start and the end (a quarter and three
    quarters of ``limit``): a traceback's last lines say where it was raised."""
    data = _utf8(text)
    if len(data) <= limit:
        return data.decode()
    head = data[: limit // 4].decode("utf-8", "ignore")
    tail = data[len(data) - (limit - limit // 4) :].decode("utf-8", "ignore")
    cut = len(data) - len(_utf8(head)) - len(_utf8(tail))
    return f"{head}\n... [truncated {cut} bytes] ...\n{tail}"


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    # Anything at all: a __str__ that raises SystemExit must not stop the worker.
    except BaseException as inner:
        return f"<str() of {type(exc).__name__} raised {type(inner).__name__}>"


def _traceback(exc: BaseException, max_line: int) -> str:
    try:
        # TracebackException calls str() on each exception of the chain safely.
        chunks = traceback.TracebackException(type(exc), exc, exc.__traceback__).format()
        text = "".join(chunks)
    except BaseException as inner:  # a broken frame or module loader, say
        name = type(exc).__name__
        return f"<traceback of {name} could not be formatted: {type(inner).__name__}>"
    # A huge message is repeated in the traceback's last line: cut each line first,
    # so that the whole keeps its frames.
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if len(line) > max_line // 4:  # else surely within: 4 bytes per character at most
            body = line.rstrip("\r\n")
            lines[i] = truncate(body, max_line) + line[len(body) :]
    return "".join(lines)


def describe_exception(
    exc: BaseException,
    *,
    max_message: int = MAX_MESSAGE_BYTES,
    max_traceback: int = MAX_TRACEBACK_BYTES,
) -> StepError:
    """The type name, message and traceback of ``exc``; never raises.

    The message is cut to ``max_message`` UTF-8 bytes, each line of the traceback
    too, and the whole traceback to ``max_traceback`` (its start and its end),
    each cut saying ``... [truncated N bytes]``. The text is valid UTF-8 whatever
    the exception held, so it always packs."""
    return StepError(
        type(exc).__name__,
        truncate(_message(exc), max_message),
        truncate_middle(_traceback(exc, max_message), max_traceback),
    )


def pack_error(error: StepError) -> bytes:
    """The error as a step stores it (``<step>.e``): msgpack of type, message, tb."""
    return pack({"type": error.type, "message": error.message, "tb": error.traceback})
