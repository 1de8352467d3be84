"""The Lua scripts, one ``.lua`` file each, loaded once per client and run by EVALSHA.

Every state change of a run is one of these scripts, so no crash between two
commands can leave a run half-changed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cache
from importlib.resources import files
from typing import Any

from ..keys import GROUP


def _read(name: str) -> str:
    return (files(__package__) / f"{name}.lua").read_text(encoding="utf-8")


def _constants() -> str:
    """What Python and the scripts must agree on, defined once, here in Python."""
    return f"local GROUP = {GROUP!r}\n"


@cache
def source(name: str) -> str:
    """The script's text: the shared constants, then ``lib.lua`` (the functions the
    scripts share), then the script itself."""
    return _constants() + _read("lib") + "\n" + _read(name)


@dataclass(frozen=True)
class Scripts:
    """redis-py Script objects (they retry on NOSCRIPT) for one client."""

    enqueue: Any
    take: Any
    complete: Any
    due: Any
    reap_run: Any
    reap_entries: Any
    lead: Any
    join: Any
    beat: Any
    forget: Any
    cancel: Any
    reap_waiting: Any
    orphan: Any

    @classmethod
    def register(cls, client: Any) -> Scripts:
        return cls(**{f.name: client.register_script(source(f.name)) for f in fields(cls)})
