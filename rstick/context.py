"""What a step sees: its run, its input, its parents' outputs, and its worker."""

from __future__ import annotations

import hashlib
import itertools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import StickyChildError

if TYPE_CHECKING:
    from .refs import AsyncRunRef, RunRef
    from .worker import Worker


def child_run_id(parent_run: str, parent_step: str, workflow: str, name: str) -> str:
    """The run id of a spawned child: the same parent step spawning the same child
    again (a retry, a re-run after its worker was lost) gets the same id, and
    enqueue of an existing run id writes nothing, so it re-attaches to that child."""
    seed = f"child\0{parent_run}\0{parent_step}\0{workflow}\0{name}"
    return hashlib.sha256(seed.encode()).hexdigest()[:32]


_STEP_LOG = logging.getLogger("rstick.step")


@dataclass
class Context:
    """One execution of one step: a fresh Context per attempt."""

    run_id: str
    step: str
    input: Any
    attempt: int
    worker: Worker
    reassigned: bool = False
    parents: dict[str, Any] = field(default_factory=dict)
    logger: logging.Logger = _STEP_LOG
    # Spawns without a key made so far in this step execution (their child ids).
    _spawns: itertools.count[int] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def parent_output(self, name: str) -> Any:
        """The output of parent step ``name``."""
        if name not in self.parents:
            raise KeyError(f"{name!r} is not a parent of step {self.step!r}")
        return self.parents[name]

    def _child_args(self, workflow: str, sticky: bool, key: str | None) -> dict[str, Any]:
        """enqueue's arguments for a child; refuses a sticky child this worker cannot run."""
        parent = (self.run_id, self.step)
        args: dict[str, Any] = {"parent": parent}
        if sticky:
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
            args["pin"] = self.worker.id()
        # Taken before any await: spawns gathered concurrently number in call order.
        if self._spawns is None:
            self._spawns = itertools.count()
        name = f"k:{key}" if key is not None else f"n:{next(self._spawns)}"
        args["run_id"] = child_run_id(self.run_id, self.step, workflow, name)
        return args

    def spawn_workflow(
        self, workflow: str, input: Any = None, *, sticky: bool = False, key: str | None = None
    ) -> RunRef:
        """Start a child run of ``workflow`` and return its ref (``ref.result()`` waits).

        With ``sticky=True`` the child is pinned to this worker at creation: its
        first step goes to this worker's own stream, never to the shared queue. The
        child workflow must have a sticky strategy and be registered by this worker,
        else ``StickyChildError`` is raised and nothing is written. Without it the
        child is an ordinary run any worker may take. Either way the child records
        its parent (run and step) and the parent lists the child.

        **Idempotent across re-runs.** The child's run id is derived from this run,
        this step, the child workflow and the spawn's place among this step's
        spawns (the 1st, 2nd... call), not from the attempt. So when this step runs
        again (a retry after an error, or a re-run after its worker was lost) the
        same spawn re-attaches to the child the earlier attempt started, wherever it
        is now, instead of starting a second one; the input given the second time is
        ignored. If that child failed, waiting on it raises ``RunFailed`` again in
        the retry. Spawn in a deterministic order for this to hold. (A child whose
        records expired, ``retention`` after it finished, is started afresh.)

        ``key`` names the child instead of its place: the same key in the same
        parent step always means the same child. To start a fresh child on every
        attempt, use ``key=f"{ctx.attempt}"`` (several children per attempt:
        ``key=f"{ctx.attempt}-{i}"``).

        **No deadlock.** While this step waits in ``ref.result()``, it lends its slot
        to the worker: a parent waiting on a child is not counted as busy, so the
        child (sticky or not) can run on this worker even with ``--concurrency 1``.
        """
        ref = self.worker.app.client.enqueue(
            workflow, input, **self._child_args(workflow, sticky, key)
        )
        ref.while_waiting = self.worker.lend_slot
        return ref

    async def aspawn_workflow(
        self, workflow: str, input: Any = None, *, sticky: bool = False, key: str | None = None
    ) -> AsyncRunRef:
        """The async twin of ``spawn_workflow`` for ``async def`` steps:
        ``ref = await ctx.aspawn_workflow(...)``, then ``await ref.result()``.
        Same pinning, refusals, idempotent child id, ``key`` and lent slot."""
        args = self._child_args(workflow, sticky, key)
        ref = await self.worker.app.client.aenqueue(workflow, input, **args)
        ref.while_waiting = self.worker.lend_slot
        return ref
