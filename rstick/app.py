"""The application object: settings, the workflow registry and its decorators."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, TypeVar, overload

from . import defaults
from .credentials import hide_password
from .definitions import StepDef, WorkflowDef, link_steps
from .errors import DefinitionError
from .keys import Keys
from .limits import count, optional_seconds, seconds
from .names import check_name
from .records import StickyStrategy

if TYPE_CHECKING:
    from .client import Client
    from .records import Cancellation, Run, WorkerInfo
    from .refs import AsyncRunRef, RunRef

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_STEP_ATTR = "__rstick_step__"


def _check_events(on_events: Iterable[str]) -> tuple[str, ...]:
    if isinstance(on_events, str):
        raise DefinitionError("on_events must be a list of event names, not a string")
    return tuple(check_name("event", event) for event in on_events)


def _check_numbers(
    retries: int, timeout: float | None, backoff: float, schedule_timeout: float | None
) -> tuple[int, float | None, float, float | None]:
    """A step's numbers, refused at definition when a worker could not use them."""
    return (
        count("retries", retries, error=DefinitionError),
        optional_seconds("timeout", timeout, error=DefinitionError),
        seconds("backoff", backoff, error=DefinitionError),
        # 0: a HARD run fails as soon as its worker is found dead.
        optional_seconds(
            "schedule_timeout", schedule_timeout, positive=False, error=DefinitionError
        ),
    )


@dataclass
class Rstick:
    """An rstick application: where to find Redis, and the workflows it knows.

    Every setting has a default that works; the URL and namespace also come
    from ``RSTICK_REDIS_URL`` and ``RSTICK_NAMESPACE``.
    """

    redis_url: str | None = None
    namespace: str | None = None
    heartbeat: float = defaults.HEARTBEAT  # seconds between a worker's heartbeats
    worker_ttl: float = defaults.WORKER_TTL  # a worker is dead after this long without one
    retention: float = defaults.RETENTION  # seconds a finished run stays readable
    max_deliveries: int = defaults.MAX_DELIVERIES  # losses of its worker a step survives
    dead_maxlen: int = defaults.DEAD_MAXLEN  # dead letters kept (about: trimmed in blocks)
    max_payload_bytes: int = defaults.MAX_PAYLOAD_BYTES  # an input or output, packed
    pool_size: int = defaults.POOL_SIZE  # connections per pool: sync side, each event loop
    pool_timeout: float = defaults.POOL_TIMEOUT  # seconds a command waits for a free one
    workflows: dict[str, WorkflowDef] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.redis_url = self.redis_url or os.environ.get("RSTICK_REDIS_URL") or defaults.REDIS_URL
        self.namespace = self.namespace or os.environ.get("RSTICK_NAMESPACE") or defaults.NAMESPACE
        self.heartbeat = seconds("heartbeat", self.heartbeat, positive=True)
        self.worker_ttl = seconds("worker_ttl", self.worker_ttl, positive=True)
        # Runs expire with EXPIRE, in whole seconds: 0 would delete them at once.
        self.retention = seconds("retention", self.retention, bounded=False)
        if self.retention < 1:
            raise ValueError(f"retention must be at least 1 second, not {self.retention!r}")
        self.max_deliveries = count("max_deliveries", self.max_deliveries, minimum=1)
        self.max_payload_bytes = count("max_payload_bytes", self.max_payload_bytes, minimum=1)
        if self.worker_ttl <= self.heartbeat:
            raise ValueError("worker_ttl must be longer than heartbeat")
        if self.dead_maxlen < 1:
            raise ValueError("dead_maxlen must be >= 1")
        if isinstance(self.pool_size, bool) or not isinstance(self.pool_size, int):
            raise ValueError(f"pool_size must be an int, not {self.pool_size!r}")
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, not {self.pool_size}")
        if not 0 < self.pool_timeout < float("inf"):
            raise ValueError(
                f"pool_timeout must be a finite number of seconds > 0, not {self.pool_timeout!r}"
            )
        self._client: Client | None = None

    def __repr__(self) -> str:
        # The dataclass's own repr would print the password of the URL.
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        shown["redis_url"] = hide_password(str(self.redis_url))
        shown["workflows"] = list(self.workflows)
        return f"Rstick({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @property
    def keys(self) -> Keys:
        return Keys(self.namespace or defaults.NAMESPACE)

    # -- definitions -------------------------------------------------------

    @overload
    def step(self, parents: F, /) -> F: ...

    @overload
    def step(
        self,
        parents: Iterable[str] = (),
        *,
        retries: int = defaults.RETRIES,
        timeout: float | None = None,
        backoff: float = defaults.BACKOFF,
        schedule_timeout: float | None = None,
        name: str | None = None,
    ) -> Callable[[F], F]: ...

    def step(
        self,
        parents: Iterable[str] | Callable[..., Any] = (),
        *,
        retries: int = defaults.RETRIES,
        timeout: float | None = None,
        backoff: float = defaults.BACKOFF,
        schedule_timeout: float | None = None,
        name: str | None = None,
    ) -> Any:
        """Mark a method of a workflow class as a step (``def`` or ``async def``).

        ``@app.step`` and ``@app.step(...)`` both work.
        """
        if callable(parents):  # bare @app.step: the method itself
            decorate = self.step(
                (),
                retries=retries,
                timeout=timeout,
                backoff=backoff,
                schedule_timeout=schedule_timeout,
                name=name,
            )
            return decorate(parents)
        if isinstance(parents, str):
            raise DefinitionError("parents must be a list of step names, not a string")
        numbers = _check_numbers(retries, timeout, backoff, schedule_timeout)
        parent_names = tuple(parents)

        def mark(fn: F) -> F:
            step = StepDef(
                check_name("step", fn.__name__ if name is None else name),
                fn,
                parent_names,
                *numbers,
            )
            setattr(fn, _STEP_ATTR, step)
            return fn

        return mark

    def workflow(
        self,
        *,
        sticky: StickyStrategy | None = None,
        on_events: Iterable[str] = (),
        queue: str = defaults.QUEUE,
        name: str | None = None,
        schedule_timeout: float = defaults.SCHEDULE_TIMEOUT,
        retention: float | None = None,
    ) -> Callable[[type[T]], type[T]]:
        """Register a class whose ``@app.step`` methods form a workflow.

        ``retention``: seconds a finished run stays readable (default: the app's).
        """
        check_name("queue", queue)
        events = _check_events(on_events)
        schedule_timeout = seconds("schedule_timeout", schedule_timeout, error=DefinitionError)

        def register(cls: type[T]) -> type[T]:
            wf_name = check_name("workflow", cls.__name__ if name is None else name)
            steps: dict[str, StepDef] = {}
            for attr in vars(cls).values():
                step = getattr(attr, _STEP_ATTR, None)
                if step is None:
                    continue
                if step.name in steps:
                    raise DefinitionError(
                        f"workflow {cls.__name__!r}: duplicate step {step.name!r}"
                    )
                steps[step.name] = step
            self._add(
                WorkflowDef(
                    wf_name,
                    link_steps(wf_name, steps),
                    sticky or StickyStrategy.NONE,
                    queue,
                    events,
                    schedule_timeout,
                    cls=cls,
                    retention=retention,
                )
            )
            return cls

        return register

    @overload
    def task(self, fn: F) -> F: ...

    @overload
    def task(
        self,
        fn: None = None,
        *,
        retries: int = defaults.RETRIES,
        timeout: float | None = None,
        backoff: float = defaults.BACKOFF,
        queue: str = defaults.QUEUE,
        name: str | None = None,
        on_events: Iterable[str] = (),
        retention: float | None = None,
    ) -> Callable[[F], F]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        retries: int = defaults.RETRIES,
        timeout: float | None = None,
        backoff: float = defaults.BACKOFF,
        queue: str = defaults.QUEUE,
        name: str | None = None,
        on_events: Iterable[str] = (),
        retention: float | None = None,
    ) -> Any:
        """A one-step workflow from a function ``fn(ctx, **input)``: a plain job.

        ``@app.task`` and ``@app.task(...)`` both work. ``retention``: seconds a
        finished run stays readable (default: the app's; 0 for fire-and-forget jobs
        whose result nobody reads).
        """
        retries, timeout, backoff, _ = _check_numbers(retries, timeout, backoff, None)
        check_name("queue", queue)
        events = _check_events(on_events)

        def register(fn: F) -> F:
            wf_name = check_name("task", fn.__name__ if name is None else name)
            step = StepDef(wf_name, fn, (), retries, timeout, backoff)
            self._add(
                WorkflowDef(
                    wf_name,
                    link_steps(wf_name, {wf_name: step}),
                    StickyStrategy.NONE,
                    queue,
                    events,
                    is_task=True,
                    retention=retention,
                )
            )
            return fn

        return register(fn) if fn is not None else register

    def _add(self, wf: WorkflowDef) -> None:
        if wf.retention is not None and not (wf.retention >= 0 and math.isfinite(wf.retention)):
            raise DefinitionError(f"workflow {wf.name!r}: retention must be >= 0 seconds")
        if wf.name in self.workflows:
            raise DefinitionError(f"workflow {wf.name!r} is defined twice")
        if wf.retention is None:  # registered as resolved: `rstick reap` trims by it
            wf = replace(wf, retention=self.retention)
        self.workflows[wf.name] = wf

    # -- the client side ---------------------------------------------------

    @property
    def client(self) -> Client:
        if self._client is None:
            from .client import Client

            self._client = Client(self)
        return self._client

    def enqueue(
        self,
        workflow: str,
        input: Any = None,
        *,
        run_id: str | None = None,
        delay: float = 0.0,
    ) -> RunRef:
        """Start a run of ``workflow``; returns a ref to wait on its result."""
        return self.client.enqueue(workflow, input, run_id=run_id, delay=delay)

    def enqueue_many(self, workflow: str, inputs: Iterable[Any]) -> list[RunRef]:
        """Start one run per input in a single round trip."""
        return self.client.enqueue_many(workflow, inputs)

    async def aenqueue(
        self,
        workflow: str,
        input: Any = None,
        *,
        run_id: str | None = None,
        delay: float = 0.0,
    ) -> AsyncRunRef:
        return await self.client.aenqueue(workflow, input, run_id=run_id, delay=delay)

    def emit(self, event: str, data: Any = None, *, key: str | None = None) -> list[RunRef]:
        """Start one run of every workflow registered for ``event``."""
        return self.client.emit(event, data, key=key)

    async def aemit(
        self, event: str, data: Any = None, *, key: str | None = None
    ) -> list[AsyncRunRef]:
        return await self.client.aemit(event, data, key=key)

    def get_run(self, run_id: str) -> Run:
        return self.client.get_run(run_id)

    def cancel(self, run_id: str, *, children: bool = True) -> Cancellation:
        """Cancel a run that has not finished and, unless ``children=False``, every
        unfinished descendant (children, grandchildren...); returns the run's status
        afterwards and the ids of the runs cancelled. Queued steps are dropped,
        running ones run on and their results are ignored. Raises RunNotFound."""
        return self.client.cancel(run_id, children=children)

    def list_workers(self) -> list[WorkerInfo]:
        return self.client.list_workers()

    def close(self) -> None:
        """Close every connection the app's client opened (its pools, its subscriptions,
        on every event loop); it opens them again if used again."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        """``close()`` for async code: the running loop's connections are closed when it returns."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def __enter__(self) -> Rstick:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Rstick:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
