"""Running one step: from the claim a take hands the worker to the outcome it records.

``StepRunner.start(claim)`` makes the step's Context and runs it as a task: ``def``
steps on threads of their own (``threads.py``), ``async def`` steps on the loop. Its
outcome, ("ok", output, 0), ("retry", error, delay_ms) or ("fail", error, 0), goes to
the worker's ``record``, which the complete loop sends in batches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .app import Rstick
from .codec import pack, unpack
from .context import Context
from .definitions import StepDef, WorkflowDef
from .errors import StepTimeout, TaskInputError
from .failure import describe_exception, pack_error
from .plural import plural
from .protocol import Claim
from .threads import StepThreads

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("rstick.worker")

CANCEL_GRACE = 1.0  # seconds an async step past its timeout has to honour its cancel

StepResult = tuple[str, bytes, int]  # kind, payload, delay_ms: see protocol.Outcome


def entry_key(stream: str, entry_id: str) -> str:
    """An entry this worker holds, by the name its running jobs go by: unique, for
    two streams can hand out one entry id in the same ms."""
    return f"{stream} {entry_id}"


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed step: everything needed to run it and to complete it."""

    stream: str
    entry_id: str
    run_id: str
    workflow: WorkflowDef
    step: StepDef
    attempt: int
    epoch: int
    lost: int  # earlier attempts lost with their worker: they use up no retries

    @property
    def key(self) -> str:
        return entry_key(self.stream, self.entry_id)


class StepRunner:
    """The steps a worker runs now, its free slots, and the steps that ran past their
    timeout and go on."""

    def __init__(
        self,
        app: Rstick,
        worker: Worker,
        *,
        concurrency: int,
        threads: StepThreads,
        max_hung: int,
        record: Callable[[Job, StepResult], None],
        freed: Callable[[], None],
        too_many_hung: Callable[[], None],
    ) -> None:
        """``worker`` is what a step's ``ctx.worker`` is; ``record`` takes each outcome,
        ``freed`` is called when a slot frees, ``too_many_hung`` past ``max_hung``."""
        self.app = app
        self.worker = worker
        self.concurrency = concurrency
        self.lent = 0  # slots lent by steps that wait on a child
        self.loop: asyncio.AbstractEventLoop | None = None  # the worker's, once it started
        self.threads = threads
        self.max_hung = max_hung
        self._record = record
        self._freed = freed
        self._too_many_hung = too_many_hung
        self.instances = {wf.name: wf.cls() for wf in app.workflows.values() if wf.cls}
        self.running: dict[str, asyncio.Task[None]] = {}
        # Steps abandoned by their timeout and still running (a thread cannot be
        # killed; a coroutine may ignore its cancel).
        self.hung: set[str] = set()

    @property
    def free(self) -> int:
        return self.concurrency + self.lent - len(self.running)

    @contextlib.contextmanager
    def lend_slot(self) -> Iterator[None]:
        """While a step waits on a child, its slot serves others: no deadlock. Called
        from the loop (``async def`` steps) or from a step's thread."""
        self._adjust_lent(1)
        try:
            yield
        finally:
            self._adjust_lent(-1)

    def _adjust_lent(self, delta: int) -> None:
        def apply() -> None:
            self.lent += delta
            self._freed()

        loop = self.loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            apply()
        else:
            loop.call_soon_threadsafe(apply)

    def start(self, claim: Claim) -> None:
        """Start the step a claim hands us; log the entries it did not."""
        if claim.kind != "run":
            _log_not_run(claim)
            return
        wf = self.app.workflows[claim.workflow]
        step = wf.steps.get(claim.step) or missing_step(wf.name, claim.step)
        job = Job(
            claim.stream,
            claim.entry_id,
            claim.run_id,
            wf,
            step,
            claim.attempt,
            claim.epoch,
            claim.lost,
        )
        try:
            data = unpack(claim.input)
            parents = {name: unpack(raw) for name, raw in claim.parents.items()}
        except Exception as exc:  # stored bytes that are not msgpack: retrying cannot help
            log.error(
                "%s/%s: corrupt payload (%s): failed and dead-lettered", job.run_id, step.name, exc
            )
            error = {"type": "CorruptPayload", "message": f"stored input is not msgpack: {exc}"}
            self._record(job, ("dead", pack({**error, "tb": ""}), 0))
            return
        ctx = Context(
            job.run_id,
            step.name,
            data,
            job.attempt,
            self.worker,
            reassigned=claim.reassigned,
            parents=parents,
        )
        self.running[job.key] = asyncio.create_task(self._execute(job, ctx))

    async def _execute(self, job: Job, ctx: Context) -> None:
        try:
            outcome = await self._outcome(job, ctx)
        except asyncio.CancelledError:
            raise  # the worker stops: the entry stays pending, to be re-run
        except BaseException as exc:  # our own handling failed: the step still ends
            log.exception(
                "%s/%s: the worker could not handle its outcome", job.run_id, job.step.name
            )
            outcome = ("fail", pack_error(describe_exception(exc)), 0)
        finally:
            self.running.pop(job.key, None)
            self._freed()
        self._record(job, outcome)

    async def _outcome(self, job: Job, ctx: Context) -> StepResult:
        """Run the step: ("ok", output, 0), ("retry", error, delay_ms) or ("fail", error, 0)."""
        step = job.step
        try:
            output = await self._call(job, ctx)
            return "ok", pack(output, "output", max_bytes=self.app.max_payload_bytes), 0
        except BaseException as exc:
            task = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and task and task.cancelling():
                raise  # the worker cancelled it (stopping): its entry stays pending
            # Anything else the step raised fails the attempt: a CancelledError of its
            # own, SystemExit, KeyboardInterrupt, an exception whose str() raises.
            error = describe_exception(exc)
            # Attempts lost with a worker are no errors of the step's: retries are for these.
            errors = job.attempt - job.lost
            if errors <= step.retries and not isinstance(exc, TaskInputError):
                log.info(
                    "%s/%s attempt %d failed (%s: %s): retrying",
                    job.run_id,
                    step.name,
                    job.attempt,
                    error.type,
                    error.message,
                )
                return "retry", pack_error(error), int(step.retry_delay(errors) * 1000)
            log.warning("%s/%s failed: %s: %s", job.run_id, step.name, error.type, error.message)
            return "fail", pack_error(error), 0

    async def _call(self, job: Job, ctx: Context) -> Any:
        step, wf = job.step, job.workflow
        if wf.is_task:  # bound before the call: a TypeError of the task's own is its own
            args: tuple[Any, ...] = (ctx,)
            kwargs: dict[str, Any] = step.task_arguments(ctx, ctx.input)
        else:
            args, kwargs = (self.instances[wf.name], ctx), {}
        if step.is_async:
            if step.timeout is None:
                return await step.fn(*args, **kwargs)
            work: asyncio.Future[Any] = asyncio.ensure_future(step.fn(*args, **kwargs))
        else:
            thread = self.threads.submit(functools.partial(step.fn, *args, **kwargs))
            work = asyncio.wrap_future(thread)
            if step.timeout is None:
                return await work
        try:
            done, _ = await asyncio.wait([work], timeout=step.timeout)
        except asyncio.CancelledError:
            work.cancel()
            raise
        if done:
            return work.result()
        if step.is_async:
            work.cancel()  # it stops here, if it honours the cancel
            done, _ = await asyncio.wait([work], timeout=CANCEL_GRACE)
            if not done:
                self._abandon(job, work)
        else:  # a thread cannot be stopped: it runs on, to its end
            self._abandon(job, thread)
        raise StepTimeout(f"step {step.name!r} timed out after {step.timeout}s")

    def _abandon(
        self, job: Job, work: asyncio.Future[Any] | concurrent.futures.Future[Any]
    ) -> None:
        """A step past its timeout that goes on running: its thread (or coroutine) is
        left to finish, and the worker keeps its full capacity meanwhile; past
        ``max_hung`` of them the worker stops, so that its supervisor starts a fresh
        process."""
        key = job.key
        self.hung.add(key)
        loop = asyncio.get_running_loop()

        def ended(_: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: we are gone
                loop.call_soon_threadsafe(self.hung.discard, key)

        work.add_done_callback(ended)
        log.warning(
            "%s/%s ignored its timeout and goes on running (%s hung, limit %d)",
            job.run_id,
            job.step.name,
            plural(len(self.hung), "step"),
            self.max_hung,
        )
        if len(self.hung) > self.max_hung:
            log.error(
                "%s hung past their timeout (threads cannot be killed): stopping so that "
                "a supervisor starts a fresh worker",
                plural(len(self.hung), "step"),
            )
            self._too_many_hung()


def _log_not_run(claim: Claim) -> None:
    where = f"{claim.run_id}/{claim.step}"
    if claim.kind == "dead":
        what = f"entry {claim.entry_id} of {claim.stream}"
        what += f" (run {claim.run_id}, step {claim.step})" if claim.run_id else ""
        log.warning("dead-lettered %s: %s", what, claim.detail)
    elif claim.kind == "wait":
        log.info("%s waits for a worker with its code: %s", where, claim.detail)
    elif claim.kind == "fwd":
        log.debug("%s forwarded to worker %s", where, claim.detail)
    else:
        log.debug("%s dropped: %s", where, claim.detail)


def missing_step(workflow: str, step: str) -> StepDef:
    """A step this worker's code lacks (another version enqueued it): it fails clearly."""

    def missing(*_: Any) -> None:
        raise LookupError(f"this worker's workflow {workflow!r} has no step {step!r}")

    return StepDef(step, missing)
