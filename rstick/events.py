"""Events: ``emit`` starts one run of every workflow listening to an event.

A mixin of ``Client`` (``client.py``). Listeners are the workflows defined here with
``on_events`` and those workers registered (``{ns}:ev:<event>``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .definitions import check_task_input
from .ids import new_run_id
from .names import check_name

if TYPE_CHECKING:
    from .app import Rstick
    from .definitions import WorkflowDef
    from .keys import Keys
    from .refs import AsyncRunRef, RunRef


class Events:
    """``emit`` / ``aemit``; the enqueueing is the client's."""

    if TYPE_CHECKING:  # what the client gives
        app: Rstick
        keys: Keys

        @property
        def redis(self) -> Any: ...

        @property
        def aredis(self) -> Any: ...

        def definition(self, name: str) -> WorkflowDef: ...

        async def adefinition(self, name: str) -> WorkflowDef: ...

        def enqueue(
            self, workflow: str, input: Any = None, *, run_id: str | None = None
        ) -> RunRef: ...

        async def aenqueue(
            self, workflow: str, input: Any = None, *, run_id: str | None = None
        ) -> AsyncRunRef: ...

    def _event_runs(
        self, event: str, key: str | None, names: Iterable[bytes]
    ) -> list[tuple[str, str]]:
        """(workflow, run id) per listener; a key makes the run ids, and so the runs, unique."""
        out = []
        for raw in sorted(names):
            name = raw.decode()
            if key is None:
                run_id = new_run_id()
            else:
                run_id = hashlib.sha256(f"{event}\0{key}\0{name}".encode()).hexdigest()[:32]
            out.append((name, run_id))
        return out

    def _listeners(self, event: str) -> set[bytes]:
        names: set[bytes] = set(self.redis.smembers(self.keys.event(event)))
        names |= {w.name.encode() for w in self.app.workflows.values() if event in w.on_events}
        return names

    def emit(self, event: str, data: Any = None, *, key: str | None = None) -> list[RunRef]:
        check_name("event", event, ValueError)
        runs = self._event_runs(event, key, self._listeners(event))
        for name, _ in runs:  # a listener refusing the data refuses the emit: none starts
            check_task_input(self.definition(name), data)
        refs = []
        for name, run_id in runs:
            refs.append(self.enqueue(name, data, run_id=run_id))
        return refs

    async def aemit(
        self, event: str, data: Any = None, *, key: str | None = None
    ) -> list[AsyncRunRef]:
        check_name("event", event, ValueError)
        names: set[bytes] = set(await self.aredis.smembers(self.keys.event(event)))
        names |= {w.name.encode() for w in self.app.workflows.values() if event in w.on_events}
        runs = self._event_runs(event, key, names)
        for name, _ in runs:
            check_task_input(await self.adefinition(name), data)
        refs = []
        for name, run_id in runs:
            refs.append(await self.aenqueue(name, data, run_id=run_id))
        return refs
