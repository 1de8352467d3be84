"""The Lua scripts, one ``.lua`` file each, loaded once per client and run by EVALSHA.

Every state change of a run is one of these scripts, so no crash between two
commands can leave a run half-changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

NAMES = ("enqueue", "claim", "complete", "due", "release", "bury")


@cache
def source(name: str) -> str:
    return (files(__package__) / f"{name}.lua").read_text(encoding="utf-8")


@dataclass(frozen=True)
class Scripts:
    """redis-py Script objects (they retry on NOSCRIPT) for one client."""

    enqueue: Any
    claim: Any
    complete: Any
    due: Any
    release: Any
    bury: Any

    @classmethod
    def register(cls, client: Any) -> Scripts:
        return cls(**{n: client.register_script(source(n)) for n in NAMES})
