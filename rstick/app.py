"""The application object: settings, the workflow registry and its decorators."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

from .connections import POOL_SIZE, POOL_TIMEOUT
from .errors import DefinitionError
from .keys import Keys
from .records import StickyStrategy

if TYPE_CHECKING:
    from .client import AsyncRunRef, Client, RunRef
    from .records import Run, WorkerInfo

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_URL = "redis://localhost:6379/0"
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

    def retry_delay(self, attempt: int) -> float:
        """Backoff before attempt ``attempt + 1``, capped at five minutes."""
        return float(min(self.backoff * 2 ** (attempt - 1), 300.0))


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

    @property
    def roots(self) -> list[str]:
        return [s.name for s in self.steps.values() if not s.parents]

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "sticky": self.sticky.value,
                "queue": self.queue,
                "events": list(self.on_events),
                "task": self.is_task,
                "schedule_timeout": self.schedule_timeout,
                "steps": [
                    {
                        "name": s.name,
                        "parents": list(s.parents),
                        "retries": s.retries,
                        "timeout": s.timeout,
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
            s["name"]: StepDef(s["name"], _remote_step, tuple(s["parents"]), s.get("retries", 0))
            for s in d["steps"]
        }
        return cls(
            name=d["name"],
            steps=_link(d["name"], steps),
            sticky=StickyStrategy(d["sticky"]),
            queue=d["queue"],
            on_events=tuple(d.get("events", ())),
            schedule_timeout=float(d.get("schedule_timeout", 300.0)),
            is_task=bool(d.get("task", False)),
        )


def _check_name(kind: str, name: str) -> str:
    """Refuse a name the Redis layout cannot hold; return it.

    Step, workflow and queue names are stored space-separated (a run's steps,
    a worker's workflows and queues) and step names in retry entries
    ``run|step|attempt|epoch``: a name with whitespace or ``|`` would be split
    apart, or an empty one lost, long after it was accepted.
    """
    if not isinstance(name, str) or not name:
        raise DefinitionError(f"{kind} name {name!r} must be a non-empty string")
    for ch in name:
        if ch.isspace():
            raise DefinitionError(
                f"{kind} name {name!r} contains whitespace ({ch!r}): "
                "names are stored space-separated in Redis"
            )
        if ch == "|":
            raise DefinitionError(
                f"{kind} name {name!r} contains '|': it separates the fields of "
                "retry entries ('run|step|attempt|epoch')"
            )
    return name


def _check_retries(retries: int) -> None:
    if retries < 0:
        raise DefinitionError("retries must be >= 0")


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
    pool_size: int = POOL_SIZE  # connections per pool: the sync side's, each event loop's
    pool_timeout: float = POOL_TIMEOUT  # seconds a command waits for a free one
    workflows: dict[str, WorkflowDef] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.redis_url = self.redis_url or os.environ.get("RSTICK_REDIS_URL") or DEFAULT_URL
        self.namespace = self.namespace or os.environ.get("RSTICK_NAMESPACE") or "rstick"
        if self.worker_ttl <= self.heartbeat:
            raise ValueError("worker_ttl must be longer than heartbeat")
        if isinstance(self.pool_size, bool) or not isinstance(self.pool_size, int):
            raise ValueError(f"pool_size must be an int, not {self.pool_size!r}")
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, not {self.pool_size}")
        if not 0 < self.pool_timeout < float("inf"):
            raise ValueError(
                f"pool_timeout must be a finite number of seconds > 0, not {self.pool_timeout!r}"
            )
        self._client: Client | None = None

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
        _check_retries(retries)
        parent_names = tuple(parents)

        def mark(fn: F) -> F:
            step = StepDef(
                _check_name("step", fn.__name__ if name is None else name),
                fn,
                parent_names,
                retries,
                timeout,
                backoff,
                schedule_timeout,
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
        schedule_timeout: float = 300.0,
    ) -> Callable[[type[T]], type[T]]:
        """Register a class whose ``@app.step`` methods form a workflow."""
        _check_name("queue", queue)

        def register(cls: type[T]) -> type[T]:
            wf_name = _check_name("workflow", cls.__name__ if name is None else name)
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
                    tuple(on_events),
                    schedule_timeout,
                    cls=cls,
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
    ) -> Any:
        """A one-step workflow from a function ``fn(ctx, **input)``: a plain job.

        ``@app.task`` and ``@app.task(...)`` both work.
        """
        _check_retries(retries)
        _check_name("queue", queue)

        def register(fn: F) -> F:
            wf_name = _check_name("task", fn.__name__ if name is None else name)
            step = StepDef(wf_name, fn, (), retries, timeout, backoff)
            self._add(
                WorkflowDef(
                    wf_name,
                    _link(wf_name, {wf_name: step}),
                    StickyStrategy.NONE,
                    queue,
                    tuple(on_events),
                    is_task=True,
                )
            )
            return fn

        return register(fn) if fn is not None else register

    def _add(self, wf: WorkflowDef) -> None:
        if wf.name in self.workflows:
            raise DefinitionError(f"workflow {wf.name!r} is defined twice")
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

    def cancel(self, run_id: str) -> str:
        """Cancel a run that has not finished; returns its status afterwards."""
        return self.client.cancel(run_id)

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
