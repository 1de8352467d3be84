"""The Redis password: kept out of whatever is shown."""

from __future__ import annotations

import re


def hide_password(url: str) -> str:
    """The URL with its password (in the user-info or a ``password=`` query) as ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # The user-info ends at the last "@" before any query: a password may hold a "/".
    end = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, end)
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        # Without a colon some clients read the lone user-info as the password: hide it too.
        rest = (f"{user}:***@" if colon else "***@") + rest[at + 1 :]
    rest = re.sub(r"([?&]password=)[^&#]*", r"\1***", rest)
    return f"{scheme}://{rest}"
