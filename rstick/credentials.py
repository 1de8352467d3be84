"""The Redis password: kept out of whatever is shown, and a refused login told apart
from an outage (retrying a wrong password cannot help, retrying an outage does)."""

from __future__ import annotations

import re

from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    ResponseError,
)

# Pieces of the messages Redis (6.0 to 7.x, and redis-py's rewording of them) sends
# when it refuses a login, upper-cased, and what they mean to the user.
_NEEDS_PASSWORD = ("NOAUTH", "AUTHENTICATION REQUIRED", "HELLO MUST BE CALLED")
_WRONG_PASSWORD = ("WRONGPASS", "INVALID PASSWORD", "INVALID USERNAME-PASSWORD")
_NO_PASSWORD_SET = ("WITHOUT ANY PASSWORD CONFIGURED", "NO PASSWORD IS SET")


def hide_password(url: str) -> str:
    """The URL with its password (in the user-info or a ``password=`` query) as ``***``.

    A password may hold any character, ``/ ? # @`` included, where a URL parser
    would end the user-info early (and read the rest as path, query or fragment):
    the user-info here ends at the *last* ``@``, so nothing of such a password is
    shown. A ``@`` in a query value hides more than it needs to; that is the safe way.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    at = rest.rfind("@")
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        # Without a colon some clients read the lone user-info as the password: hide it too.
        rest = (f"{user}:***@" if colon else "***@") + rest[at + 1 :]
    # To the next parameter, a "#" included: a fragment means nothing to Redis.
    rest = re.sub(r"([?&]password=)[^&]*", r"\1***", rest)
    return f"{scheme}://{rest}"


def login_problem(exc: BaseException) -> str | None:
    """What is wrong with the credentials, when ``exc`` is Redis refusing the login;
    None for any other error."""
    if not isinstance(exc, (AuthenticationError, ResponseError)):
        return None
    text = str(exc).upper()
    if any(part in text for part in _NEEDS_PASSWORD):
        return "the server needs a password"
    if any(part in text for part in _WRONG_PASSWORD):
        return "wrong password"
    if any(part in text for part in _NO_PASSWORD_SET):
        return "the server has no password set: remove it from the URL"
    if isinstance(exc, AuthenticationWrongNumberOfArgsError):
        return "the server takes no user name: give only a password (redis://:PASSWORD@...)"
    if isinstance(exc, AuthenticationError):
        return str(exc) or "login refused"
    return None


def login_failure(url: str, exc: BaseException) -> str | None:
    """``cannot log in to Redis at URL: wrong password``, or None if ``exc`` is no
    login refusal."""
    problem = login_problem(exc)
    return None if problem is None else f"cannot log in to Redis at {hide_password(url)}: {problem}"
