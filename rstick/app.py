"""The application object: settings, the workflow registry and its decorators."""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, TypeVar, overload

from .connections import POOL_SIZE, POOL_TIMEOUT
from .credentials import hide_password
from .errors import DefinitionError, TaskInputError
from .keys import Keys
from .limits import DEFAULT_MAX_PAYLOAD_BYTES, count, optional_seconds, seconds
from .names import check_name
from .records import StickyStrategy

if TYPE_CHECKING:
    from .client import AsyncRunRef, Client, RunRef
    from .records import Cancellation, Run, WorkerInfo

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_SCHEDULE_TIMEOUT = 300.0  # seconds a HARD run waits for its worker
DEFAULT_DEAD_MAXLEN = 10_000  # dead letters kept; older ones are trimmed
_STEP_ATTR = "__rstick_step__"


@dataclass(frozen=True)
class StepDef:
    name: str
    fn: Callable[..., Any]
    parents: tuple[str, ...] = ()
    retries: int = 0
    timeout: float | None = None
    backoff: float = 1.0  # seconds before the first retry; doubles each attempt
    schedule_timeout: float | None = None
    children: tuple[str, ...] = ()

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    @functools.cached_property
    def signature(self) -> inspect.Signature | None:
        """The function's signature; None when this process does not have the code."""
        if self.fn is _remote_step:
            return None
        try:
            return inspect.signature(self.fn)
        except (TypeError, ValueError):  # a callable without one (some builtins)
            return None

    @functools.cached_property
    def _binds_alone(self) -> bool:
        """Whether ``fn(ctx)`` binds: a task without input, on the way of every enqueue."""
        if self.signature is None:
            return True
        try:
            self.signature.bind(None)
        except TypeError:
            return False
        return True

    def task_arguments(self, ctx: Any, input: Any) -> dict[str, Any]:
        """The keyword arguments of this task's function for ``input``, refused
        with TaskInputError unless ``fn(ctx, **input)`` binds: a task's input is
        a dict of keyword arguments (str keys), or None for none."""
        if input is None:
            if self._binds_alone:  # the same answer every time: bound once
                return {}
            kwargs: dict[str, Any] = {}
        elif isinstance(input, dict) and all(isinstance(k, str) for k in input):
            kwargs = input
        else:
            what = "a dict with non-str keys" if isinstance(input, dict) else type(input).__name__
            raise TaskInputError(
                f"task {self.name!r} takes a dict of keyword arguments (or None) as input, "
                f"not {what}"
            )
        if self.signature is not None:
            try:
                self.signature.bind(ctx, **kwargs)
            except TypeError as exc:
                raise TaskInputError(f"task {self.name!r} cannot take this input: {exc}") from None
        return kwargs

    def retry_delay(self, attempt: int) -> float:
        """Backoff before attempt ``attempt + 1``, capped at five minutes."""
        # 2**64 seconds is past the cap for any backoff the definition accepts, and a
        # float can hold it (2**1024 cannot, and retries may be that many).
        return float(min(self.backoff * 2 ** min(attempt - 1, 64), 300.0))


@dataclass(frozen=True)
class WorkflowDef:
    name: str
    steps: dict[str, StepDef]
    sticky: StickyStrategy = StickyStrategy.NONE
    queue: str = "default"
    on_events: tuple[str, ...] = ()
    schedule_timeout: float = 300.0
    is_task: bool = False
    cls: type | None = None
    retention: float | None = None  # seconds a finished run stays; None: the app's

    @property
    def roots(self) -> list[str]:
        return [s.name for s in self.steps.values() if not s.parents]

    def to_json(self) -> str:
        """The definition as workers register it: what a client without the code
        needs to enqueue a run exactly as one with the code would."""
        return json.dumps(
            {
                "name": self.name,
                "sticky": self.sticky.value,
                "queue": self.queue,
                "events": list(self.on_events),
                "task": self.is_task,
                "schedule_timeout": self.schedule_timeout,
                "retention": self.retention,
                "steps": [
                    {
                        "name": s.name,
                        "parents": list(s.parents),
                        "retries": s.retries,
                        "timeout": s.timeout,
                        "backoff": s.backoff,
                        "schedule_timeout": s.schedule_timeout,
                    }
                    for s in self.steps.values()
                ],
            }
        )

    @classmethod
    def from_json(cls, data: str | bytes) -> WorkflowDef:
        """A definition read back from Redis: enough to enqueue, not to run."""
        d = json.loads(data)
        steps = {
            s["name"]: StepDef(
                s["name"],
                _remote_step,
                tuple(s["parents"]),
                s.get("retries", 0),
                s.get("timeout"),
                s.get("backoff", 1.0),
                s.get("schedule_timeout"),
            )
            for s in d["steps"]
        }
        return cls(
            name=d["name"],
            steps=_link(d["name"], steps),
            sticky=StickyStrategy(d["sticky"]),
            queue=d["queue"],
            on_events=tuple(d.get("events", ())),
            schedule_timeout=float(d.get("schedule_timeout", DEFAULT_SCHEDULE_TIMEOUT)),
            is_task=bool(d.get("task", False)),
            retention=d.get("retention"),
        )


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


def _remote_step(*_: Any) -> Any:  # pragma: no cover - never called
    raise RuntimeError("this step is defined in another process")


def _link(workflow: str, steps: dict[str, StepDef]) -> dict[str, StepDef]:
    """Check the DAG (unknown parents, cycles) and fill in each step's children."""
    for s in steps.values():
        for parent in s.parents:
            if parent not in steps:
                raise DefinitionError(
                    f"workflow {workflow!r}: step {s.name!r} has unknown parent {parent!r}"
                )
            if parent == s.name:
                raise DefinitionError(f"workflow {workflow!r}: step {s.name!r} is its own parent")
    # Kahn's algorithm: whatever cannot be ordered sits on a cycle.
    pending = {name: len(s.parents) for name, s in steps.items()}
    ready = [name for name, n in pending.items() if n == 0]
    children: dict[str, list[str]] = {name: [] for name in steps}
    for s in steps.values():
        for parent in s.parents:
            children[parent].append(s.name)
    seen = 0
    while ready:
        name = ready.pop()
        seen += 1
        for child in children[name]:
            pending[child] -= 1
            if pending[child] == 0:
                ready.append(child)
    if seen != len(steps):
        cycle = sorted(name for name, n in pending.items() if n > 0)
        raise DefinitionError(f"workflow {workflow!r}: steps {cycle} form a cycle")
    if not steps:
        raise DefinitionError(f"workflow {workflow!r} has no steps")
    return {
        name: StepDef(
            s.name,
            s.fn,
            s.parents,
            s.retries,
            s.timeout,
            s.backoff,
            s.schedule_timeout,
            tuple(children[name]),
        )
        for name, s in steps.items()
    }


@dataclass
class Rstick:
    """An rstick application: where to find Redis, and the workflows it knows.

    Every setting has a default that works; the URL and namespace also come
    from ``RSTICK_REDIS_URL`` and ``RSTICK_NAMESPACE``.
    """

    redis_url: str | None = None
    namespace: str | None = None
    heartbeat: float = 2.0  # seconds between a worker's heartbeats
    worker_ttl: float = 10.0  # a worker is dead after this long without one
    retention: float = 86400.0  # seconds a finished run stays readable
    max_deliveries: int = 5  # a step that lost its worker this often is dead-lettered
    dead_maxlen: int = DEFAULT_DEAD_MAXLEN  # dead letters kept (about: trimmed in blocks)
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES  # an input or output, packed
    pool_size: int = POOL_SIZE  # connections per pool: the sync side's, each event loop's
    pool_timeout: float = POOL_TIMEOUT  # seconds a command waits for a free one
    workflows: dict[str, WorkflowDef] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.redis_url = self.redis_url or os.environ.get("RSTICK_REDIS_URL") or DEFAULT_URL
        self.namespace = self.namespace or os.environ.get("RSTICK_NAMESPACE") or "rstick"
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
        return Keys(self.namespace or "rstick")

    # -- definitions -------------------------------------------------------

    @overload
    def step(self, parents: F, /) -> F: ...

    @overload
    def step(
        self,
        parents: Iterable[str] = (),
        *,
        retries: int = 0,
        timeout: float | None = None,
        backoff: float = 1.0,
        schedule_timeout: float | None = None,
        name: str | None = None,
    ) -> Callable[[F], F]: ...

    def step(
        self,
        parents: Iterable[str] | Callable[..., Any] = (),
        *,
        retries: int = 0,
        timeout: float | None = None,
        backoff: float = 1.0,
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
        queue: str = "default",
        name: str | None = None,
        schedule_timeout: float = DEFAULT_SCHEDULE_TIMEOUT,
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
                    _link(wf_name, steps),
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
        retries: int = 0,
        timeout: float | None = None,
        backoff: float = 1.0,
        queue: str = "default",
        name: str | None = None,
        on_events: Iterable[str] = (),
        retention: float | None = None,
    ) -> Callable[[F], F]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        retries: int = 0,
        timeout: float | None = None,
        backoff: float = 1.0,
        queue: str = "default",
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
                    _link(wf_name, {wf_name: step}),
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
