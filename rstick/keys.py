"""Redis key names. Every key of a namespace shares the hash tag ``{ns}``."""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "rstick"


@dataclass(frozen=True)
class Keys:
    namespace: str = "rstick"

    @property
    def prefix(self) -> str:
        return "{" + self.namespace + "}"

    @property
    def workflows(self) -> str:
        return f"{self.prefix}:wf"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def delayed(self) -> str:
        return f"{self.prefix}:delayed"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    def runs(self, workflow: str) -> str:
        """Zset of a workflow's run ids by creation time, for `runs list`; trimmed by
        the reaper past the workflow's retention."""
        return f"{self.prefix}:runs:{workflow}"

    @property
    def waiting(self) -> str:
        """Set of the workflows whose runs wait for a worker with their code."""
        return f"{self.prefix}:waiting"

    def wait(self, workflow: str) -> str:
        """Stream of the entries of a workflow that wait for a worker with its code."""
        return f"{self.prefix}:wait:{workflow}"

    @property
    def leader(self) -> str:
        return f"{self.prefix}:leader"

    @property
    def active(self) -> str:
        """Redis time a heartbeat or a reaper's pass last landed (lib.lua note_activity)."""
        return f"{self.prefix}:active"

    def queue(self, name: str) -> str:
        return f"{self.prefix}:q:{name}"

    def personal(self, worker: str) -> str:
        return f"{self.prefix}:w:{worker}"

    def worker(self, worker: str) -> str:
        return f"{self.prefix}:worker:{worker}"

    def pinned(self, worker: str) -> str:
        return f"{self.prefix}:pinned:{worker}"

    def run(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}"

    def hist(self, run_id: str) -> str:
        return f"{self.prefix}:hist:{run_id}"

    def done(self, run_id: str) -> str:
        """List that receives one element when the run finishes (waiters block on it)."""
        return f"{self.prefix}:done:{run_id}"

    def event(self, name: str) -> str:
        return f"{self.prefix}:ev:{name}"

    def emitted(self, key: str) -> str:
        return f"{self.prefix}:emitted:{key}"
