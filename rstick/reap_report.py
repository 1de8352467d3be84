"""What a pass of the reaper did, for its log line and ``rstick reap --json``."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from .plural import plural

STILL_PARKED = "still parked"  # reap_run.lua's word for a parked run not yet due


@dataclass
class ReapReport:
    """What one pass did."""

    dead_workers: list[str] = field(default_factory=list)
    runs: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    redispatched: int = 0
    deleted: int = 0
    removed_workers: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.dead_workers or self.runs or self.redispatched or self.deleted)

    def news(self, dead_before: set[str]) -> bool:
        """Whether this pass did or found anything the one before did not: a worker
        dead with its HARD runs still parked is found again at every pass, and is
        no news until its runs time out or it comes back."""
        changed = {action for action, ids in self.runs.items() if ids} - {STILL_PARKED}
        return bool(
            set(self.dead_workers) - dead_before
            or changed
            or self.redispatched
            or self.deleted
            or self.removed_workers
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "dead_workers": self.dead_workers,
            "runs": dict(self.runs),
            "redispatched_entries": self.redispatched,
            "deleted_entries": self.deleted,
            "removed_workers": self.removed_workers,
        }

    def summary(self) -> str:
        if not self:
            return "nothing to reap"
        parts = [plural(len(self.dead_workers), "dead worker")]
        parts += [
            f"{plural(len(ids), 'run')} {action}" for action, ids in sorted(self.runs.items())
        ]
        parts.append(f"{plural(self.redispatched, 'entry', 'entries')} dispatched again")
        parts.append(f"{plural(self.deleted, 'stale entry', 'stale entries')} deleted")
        parts.append(f"{plural(len(self.removed_workers), 'worker')} removed")
        return ", ".join(parts)
