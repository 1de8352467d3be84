"""Handles on runs (``RunRef``, ``AsyncRunRef``): their state, and waiting for their
result, which costs no connection of its own (``notices.py``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from .async_notices import AsyncWaiter
from .codec import unpack
from .errors import ClientClosed, ResultTimeout, RunCancelled, RunFailed, RunNotFound, StepError
from .keys import Keys
from .limits import optional_seconds
from .outage import is_outage
from .protocol import StepField
from .records import FINISHED, Run, RunStatus

# Seconds between two looks at a run while Redis is away (a restart, a failover):
# a wait rides the outage out, up to its own timeout.
OUTAGE_LOOK = 0.5

if TYPE_CHECKING:
    from .client import Client


def outcome(keys: Keys, redis: Any, run_id: str) -> Any:
    """The result of a finished run, or the exception that says why there is none."""
    return _outcome(run_id, redis.hgetall(keys.run(run_id)))


async def aoutcome(keys: Keys, redis: Any, run_id: str) -> Any:
    return _outcome(run_id, await redis.hgetall(keys.run(run_id)))


def _outcome(run_id: str, raw: dict[bytes, bytes]) -> Any:
    if not raw:
        raise RunNotFound(run_id)
    run = Run.from_hash(run_id, raw)
    if run.status == RunStatus.SUCCEEDED:
        return _shape(run, outputs(run, raw))
    return _raise_for(run)


def outputs(run: Run, raw: dict[bytes, bytes]) -> dict[str, Any]:
    """The outputs of a run's succeeded steps, from its hash."""
    found = {}
    for step in run.steps:
        packed = raw.get(StepField.OUTPUT.of(step.name).encode())
        if packed is not None:
            found[step.name] = unpack(packed)
    return found


def _raise_for(run: Run) -> Any:
    if run.status == RunStatus.CANCELLED:
        raise RunCancelled(run.run_id)
    step = run.error_step or ""
    error = run.step(step).error if step else None
    raise RunFailed(run.run_id, step, error or StepError("Error", "unknown failure"))


def _shape(run: Run, outs: dict[str, Any]) -> Any:
    """A task's result is its one output; a workflow's is ``{step: output}``."""
    if run.is_task:
        return outs.get(run.steps[0].name)
    return {s.name: outs.get(s.name) for s in run.steps}


class Looks:
    """When a wait (``RunRef._wait``, ``AsyncRunRef._wait``) looks at its run: when
    woken, and every ``poll`` seconds in any case, every OUTAGE_LOOK seconds while
    Redis is away; and when it gives up."""

    def __init__(self, run_id: str, timeout: float | None, poll: float) -> None:
        self.run_id, self.timeout, self.poll = run_id, timeout, poll
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.pause = poll
        self.once = False  # it looked at least once: a timeout may end it now

    def next_wait(self) -> float:
        """Seconds to wait before the next look; ResultTimeout once past the
        deadline (after one look at least: a run done already is no timeout)."""
        wait = self.pause
        if self.deadline is not None:
            wait = min(wait, self.deadline - time.monotonic())
            if self.once and wait <= 0:
                raise ResultTimeout(f"run {self.run_id} did not finish in {self.timeout}s")
        return max(wait, 0.0)

    def looked(self) -> None:
        self.once, self.pause = True, self.poll

    def failed(self, exc: BaseException, *, closed: bool) -> None:
        """A look failed: ClientClosed if the client closed under it; Redis away,
        look again soon (the run goes on without us); else ``exc`` again."""
        if closed:
            raise ClientClosed(self.run_id) from None
        if not is_outage(exc):
            raise exc
        self.once, self.pause = True, OUTAGE_LOOK


class RunRef:
    """A handle on a run: its id, its state, and its result once it finishes."""

    def __init__(self, client: Client, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        # A step waiting on its child lends its slot meanwhile, so the child can run.
        self.while_waiting: Callable[[], AbstractContextManager[None]] = nullcontext

    def __repr__(self) -> str:
        return f"RunRef({self.run_id!r})"

    def status(self) -> RunStatus:
        raw = self.client.redis.hget(self.client.keys.run(self.run_id), "status")
        if raw is None:
            raise RunNotFound(self.run_id)
        return RunStatus(raw.decode())

    def get(self) -> Run:
        return self.client.get_run(self.run_id)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the run; return its outputs or raise RunFailed / RunCancelled."""
        timeout = optional_seconds("timeout", timeout, bounded=False)
        with self.while_waiting():
            return self._wait(timeout)

    def _wait(self, timeout: float | None) -> Any:
        """Subscribe, then look at the run each time the subscription wakes us: once
        it is confirmed, when the run's notice comes, after a reconnection; and
        every ``client.poll`` seconds in any case."""
        client = self.client
        looks = Looks(self.run_id, timeout, client.poll)
        redis = client.redis  # this one all along: once closed, it reopens nothing
        notices = client.notices
        waiter = notices.watch(client.keys.done(self.run_id).encode())
        try:
            while True:
                waiter.event.wait(looks.next_wait())
                if notices.closed:
                    raise ClientClosed(self.run_id)
                waiter.event.clear()
                try:
                    raw = waiter.status or redis.hget(client.keys.run(self.run_id), "status")
                    if raw is not None and RunStatus(raw.decode()) in FINISHED:
                        return outcome(client.keys, redis, self.run_id)
                except (RedisError, ClientClosed) as exc:
                    looks.failed(exc, closed=notices.closed)
                    continue
                looks.looked()
                if raw is None:
                    raise RunNotFound(self.run_id)
        finally:
            notices.forget(waiter)


class AsyncRunRef:
    """The async twin of RunRef, for ``aenqueue`` and ``aspawn_workflow``."""

    def __init__(self, client: Client, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.while_waiting: Callable[[], AbstractContextManager[None]] = nullcontext

    def __repr__(self) -> str:
        return f"AsyncRunRef({self.run_id!r})"

    async def status(self) -> RunStatus:
        raw = await self.client.aredis.hget(self.client.keys.run(self.run_id), "status")
        if raw is None:
            raise RunNotFound(self.run_id)
        return RunStatus(raw.decode())

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the run; return its outputs or raise RunFailed / RunCancelled."""
        timeout = optional_seconds("timeout", timeout, bounded=False)
        with self.while_waiting():
            return await self._wait(timeout)

    async def _wait(self, timeout: float | None) -> Any:
        """As ``RunRef._wait``, on this event loop's subscription."""
        client = self.client
        looks = Looks(self.run_id, timeout, client.poll)
        side = client._loop_side()  # this one all along: once closed, it reopens nothing
        notices = side.notices
        waiter: AsyncWaiter = notices.watch(client.keys.done(self.run_id).encode())
        try:
            while True:
                wait = looks.next_wait()
                if not waiter.future.done():
                    await asyncio.wait((waiter.future,), timeout=wait)
                if notices.closed:
                    raise ClientClosed(self.run_id)
                waiter.rearm()
                try:
                    raw = waiter.status or await side.redis.hget(
                        client.keys.run(self.run_id), "status"
                    )
                    if raw is not None and RunStatus(raw.decode()) in FINISHED:
                        return await aoutcome(client.keys, side.redis, self.run_id)
                except (RedisError, ClientClosed) as exc:
                    looks.failed(exc, closed=notices.closed)
                    continue
                looks.looked()
                if raw is None:
                    raise RunNotFound(self.run_id)
        finally:
            notices.forget(waiter)
