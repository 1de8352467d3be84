"""What a workflow is: its steps, their parents, retries and timeouts, and how a
definition is registered in Redis for processes that do not have its code.

``@app.workflow``, ``@app.step`` and ``@app.task`` (``app.py``) build these."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import defaults
from .errors import DefinitionError, TaskInputError
from .records import StickyStrategy


@dataclass(frozen=True)
class StepDef:
    name: str
    fn: Callable[..., Any]
    parents: tuple[str, ...] = ()
    retries: int = defaults.RETRIES
    timeout: float | None = None
    backoff: float = defaults.BACKOFF  # seconds before the first retry; doubles each attempt
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
            problem = self._bind_problem(tuple(kwargs))
            if problem is not None:
                raise TaskInputError(f"task {self.name!r} cannot take this input: {problem}")
        return kwargs

    def _bind_problem(self, names: tuple[str, ...]) -> str | None:
        """Why ``fn(ctx, **{name: ...})`` does not bind, None if it does. Only the names
        matter, so the answer is kept for each set of them (on the way of every enqueue)."""
        if names in self._bindings:
            return self._bindings[names]
        assert self.signature is not None
        try:
            self.signature.bind(None, **dict.fromkeys(names))
            problem = None
        except TypeError as exc:
            problem = str(exc)
        if len(self._bindings) < 64:  # a few shapes of input per task, not unbounded
            self._bindings[names] = problem
        return problem

    @functools.cached_property
    def _bindings(self) -> dict[tuple[str, ...], str | None]:
        return {}

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
    queue: str = defaults.QUEUE
    on_events: tuple[str, ...] = ()
    schedule_timeout: float = defaults.SCHEDULE_TIMEOUT
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
            steps=link_steps(d["name"], steps),
            sticky=StickyStrategy(d["sticky"]),
            queue=d["queue"],
            on_events=tuple(d.get("events", ())),
            schedule_timeout=float(d.get("schedule_timeout", defaults.SCHEDULE_TIMEOUT)),
            is_task=bool(d.get("task", False)),
            retention=d.get("retention"),
        )


def _remote_step(*_: Any) -> Any:  # pragma: no cover - never called
    raise RuntimeError("this step is defined in another process")


def link_steps(workflow: str, steps: dict[str, StepDef]) -> dict[str, StepDef]:
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


def check_task_input(wf: WorkflowDef, input: Any) -> None:
    """Refuse at enqueue, not on a worker after retries, a task input that cannot bind."""
    if wf.is_task:
        wf.steps[wf.name].task_arguments(None, input)
