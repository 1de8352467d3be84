"""What a step sees: its run, its input, its parents' outputs, and its worker."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import StickyChildError

if TYPE_CHECKING:
    from .client import AsyncRunRef, RunRef
    from .worker import Worker


@dataclass
class Context:
    run_id: str
    step: str
    input: Any
    attempt: int
    worker: Worker
    reassigned: bool = False
    parents: dict[str, Any] = field(default_factory=dict)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("rstick.step"))

    def parent_output(self, name: str) -> Any:
        """The output of parent step ``name``."""
        if name not in self.parents:
            raise KeyError(f"{name!r} is not a parent of step {self.step!r}")
        return self.parents[name]

    def _child_args(self, workflow: str, sticky: bool) -> dict[str, Any]:
        parent = (self.run_id, self.step)
        if not sticky:
            return {"parent": parent}
        wf = self.worker.app.workflows.get(workflow)
        if wf is None:
            raise StickyChildError(
                f"cannot spawn {workflow!r} sticky: worker {self.worker.id()} has not "
                "registered it (a sticky child runs here, so this worker must have its code)"
            )
        if wf.sticky.value == "none":
            raise StickyChildError(
                f"cannot spawn {workflow!r} sticky: it has no sticky strategy "
                "(declare it with @app.workflow(sticky=StickyStrategy.SOFT or HARD))"
            )
        return {"parent": parent, "pin": self.worker.id()}

    def spawn_workflow(self, workflow: str, input: Any = None, *, sticky: bool = False) -> RunRef:
        """Start a child run; with ``sticky=True`` it is pinned to this worker at creation."""
        args = self._child_args(workflow, sticky)
        ref = self.worker.app.client.enqueue(workflow, input, **args)
        if sticky:
            ref.while_waiting = self.worker.lend_slot
        return ref

    async def aspawn_workflow(
        self, workflow: str, input: Any = None, *, sticky: bool = False
    ) -> AsyncRunRef:
        args = self._child_args(workflow, sticky)
        ref = await self.worker.app.client.aenqueue(workflow, input, **args)
        if sticky:
            ref.while_waiting = self.worker.lend_slot
        return ref
