"""The client side: enqueue runs, wait for their results, read runs and workers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from .admin import Admin
from .client_connections import Connections
from .codec import pack
from .connections import plain_pool
from .definitions import WorkflowDef, check_task_input
from .errors import (
    RunCancelled,
    UnknownWorkflow,
)
from .events import Events
from .fastpath import Call, Fields, bulks, send_packed
from .ids import new_run_id
from .limits import seconds
from .protocol import RunField, enqueue_fields
from .refs import AsyncRunRef, RunRef

if TYPE_CHECKING:
    from .app import Rstick


POLL = 5.0  # seconds between a waiter's own status checks: a safety net under the notices


class Client(Connections, Admin, Events):
    """Enqueues runs, reads state and waits for results; one per app. Its
    connections: ``client_connections.py``; reading runs, workers and dead letters,
    and cancelling: ``admin.py``; events: ``events.py``."""

    def __init__(self, app: Rstick) -> None:
        Connections.__init__(self, app)
        self.keys = app.keys
        self.poll = POLL
        self._defs: dict[str, WorkflowDef] = {}
        self._registered: set[str] = set()
        self._fields: dict[tuple[str, bool], Fields] = {}

    # -- definitions -------------------------------------------------------

    def definition(self, name: str) -> WorkflowDef:
        """The local definition, else the one a worker registered (cached)."""
        wf = self.app.workflows.get(name) or self._defs.get(name)
        if wf is None:
            raw = self.redis.hget(self.keys.workflows, name)
            if raw is None:
                raise UnknownWorkflow(name)
            wf = self._defs[name] = WorkflowDef.from_json(raw)
        return wf

    async def adefinition(self, name: str) -> WorkflowDef:
        wf = self.app.workflows.get(name) or self._defs.get(name)
        if wf is None:
            raw = await self.aredis.hget(self.keys.workflows, name)
            if raw is None:
                raise UnknownWorkflow(name)
            wf = self._defs[name] = WorkflowDef.from_json(raw)
        return wf

    def _register_local(self, pipe: Any, wf: WorkflowDef) -> int:
        """A workflow defined in this process may be enqueued before any worker starts:
        register it in ``pipe``, once per client. Returns the commands added."""
        if not self._needs_register(wf):
            return 0
        pipe.hset(self.keys.workflows, wf.name, wf.to_json())
        self._registered.add(wf.name)
        return 1

    def _needs_register(self, wf: WorkflowDef) -> bool:
        return wf.name in self.app.workflows and wf.name not in self._registered

    # -- enqueue -----------------------------------------------------------

    def enqueue_args(
        self,
        wf: WorkflowDef,
        run_id: str,
        input: Any = None,
        *,
        delay: float = 0.0,
        pin: str = "",
        parent: tuple[str, str] = ("", ""),
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of enqueue.lua; packing the input first refuses bad values."""
        call = self._enqueue_call(wf, run_id, input, delay=delay, pin=pin, parent=parent)
        return [self.keys.workflows], call.args

    def _enqueue_call(
        self,
        wf: WorkflowDef,
        run_id: str,
        input: Any,
        *,
        delay: float = 0.0,
        pin: str = "",
        parent: tuple[str, str] = ("", ""),
    ) -> Call:
        if type(delay) is not float or delay != 0.0:  # the default needs no check
            delay = seconds("delay", delay)
        check_task_input(wf, input)
        data = pack(input, "input", max_bytes=self.app.max_payload_bytes)
        delay_ms = int(delay * 1000) if delay > 0 else 0
        head = (self.keys.prefix, wf.name, wf.queue, pin, *parent)
        tail: tuple[Any, ...] = (RunField.WORKER, pin, RunField.PARENT_RUN, parent[0])
        tail += (RunField.PARENT_STEP, parent[1])
        if pin and parent[0]:  # a sticky child: it goes where its parent goes (reap_run.lua)
            tail += (RunField.STICKY_CHILD, "1")
        tail += (RunField.INPUT,)
        fields = self.run_fields(wf, pinned=bool(pin))
        return Call(run_id, head, delay_ms, fields, tail, data)

    def run_fields(self, wf: WorkflowDef, *, pinned: bool) -> Fields:
        """What enqueue.lua is given for any run of ``wf``, built (and packed) once
        per definition: the roots it dispatches now, then the run's hash.

        Every step waits at attempt 0 but the roots, queued at attempt 1. The roots
        of a run pinned at creation all go to its worker now; an unpinned sticky
        run sends its first root to the shared queue and holds the others until a
        worker pins it; any other run sends every root now."""
        cached = self._fields.get((wf.name, pinned))
        if cached is not None and cached.wf is wf:
            return cached
        retention = wf.retention if wf.retention is not None else self.app.retention
        args = enqueue_fields(wf, pinned=pinned, retention=retention)
        fields = self._fields[(wf.name, pinned)] = Fields(wf, args, bulks(args))
        return fields

    def _checked(self, wf: WorkflowDef, result: bytes | str, parent_run: str = "") -> None:
        text = result.decode() if isinstance(result, bytes) else result
        if text == "unknown":
            self._defs.pop(wf.name, None)
            raise UnknownWorkflow(wf.name)
        if text == "parent cancelled":  # a step of a cancelled run spawning a child
            raise RunCancelled(parent_run)

    def _unknown(self, wf: WorkflowDef, results: list[Any]) -> list[int]:
        """The calls refused as "unknown workflow" that registering ``wf`` heals: it is
        defined here, and Redis lost the registry (a restart without persistence, a
        FLUSHDB, a failover) after this client registered it."""
        if wf.name not in self.app.workflows:
            return []
        unknown = [i for i, r in enumerate(results) if r in (b"unknown", "unknown")]
        if unknown:
            self._registered.discard(wf.name)
        return unknown

    def enqueue(
        self,
        workflow: str,
        input: Any = None,
        *,
        run_id: str | None = None,
        delay: float = 0.0,
        pin: str = "",
        parent: tuple[str, str] = ("", ""),
    ) -> RunRef:
        wf = self.definition(workflow)
        run_id = run_id or new_run_id()
        call = self._enqueue_call(wf, run_id, input, delay=delay, pin=pin, parent=parent)
        [result] = self._send_enqueues(wf, [call])
        self._checked(wf, result, parent[0])
        return RunRef(self, run_id)

    def enqueue_many(self, workflow: str, inputs: Iterable[Any]) -> list[RunRef]:
        wf = self.definition(workflow)
        calls = [self._enqueue_call(wf, new_run_id(), i) for i in inputs]
        results = self._send_enqueues(wf, calls)
        if results:
            self._checked(wf, results[-1])
        return [RunRef(self, call.run_id) for call in calls]

    def _send_enqueues(self, wf: WorkflowDef, calls: list[Call]) -> list[Any]:
        """enqueue.lua once per call, all in one write: one round trip.

        On a plain connection pool the commands are packed here (the hash fields of
        a workflow's runs once and for all) and sent on a connection this thread
        keeps (or, when enough threads keep one, borrows for the call): redis-py's
        command path costs tens of microseconds per command, on the way from
        enqueue to start. Otherwise, and should that connection fail, they go in a
        redis-py pipeline of plain EVALSHA (its Script objects would add a SCRIPT
        EXISTS round trip). Calls refused with NOSCRIPT (Redis lost its scripts) are
        sent again once it is loaded. A run that got in before a failure answers
        "exists" when sent again."""
        script = self.scripts.enqueue
        key = self.keys.workflows
        results: list[Any] | None = None
        if not self._needs_register(wf):
            kept = self._thread_connections()
            conn = None if kept is None else kept.get()
            if conn is not None:
                results = send_packed(conn, calls, script.sha, key)
                if kept is not None and kept.pool.closed:  # closed meanwhile: not reopened
                    conn.disconnect()
            elif (pool := plain_pool(self.redis)) is not None:
                conn = pool.get_connection()
                try:
                    results = send_packed(conn, calls, script.sha, key)
                finally:
                    pool.release(conn)
        if results is None:
            pipe = self.redis.pipeline(transaction=False)
            skip = self._register_local(pipe, wf)
            for call in calls:
                pipe.evalsha(script.sha, 1, key, *call.args)
            results = pipe.execute(raise_on_error=False)[skip:]
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        missing += self._unknown(wf, results)
        if missing:
            script.sha = self.redis.script_load(script.script)
            # Redis that lost its scripts lost its data too, most likely (a restart
            # without persistence): wf is registered again with the calls sent again.
            self._registered.discard(wf.name)
            pipe = self.redis.pipeline(transaction=False)
            skip = self._register_local(pipe, wf)
            for i in missing:
                pipe.evalsha(script.sha, 1, key, *calls[i].args)
            for i, result in zip(missing, pipe.execute(raise_on_error=False)[skip:], strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def aenqueue(
        self,
        workflow: str,
        input: Any = None,
        *,
        run_id: str | None = None,
        delay: float = 0.0,
        pin: str = "",
        parent: tuple[str, str] = ("", ""),
    ) -> AsyncRunRef:
        wf = await self.adefinition(workflow)
        run_id = run_id or new_run_id()
        keys, args = self.enqueue_args(wf, run_id, input, delay=delay, pin=pin, parent=parent)
        for _ in range(2):  # a second time only to register wf again (see _unknown)
            if self._needs_register(wf):  # no pipeline object on the common path
                pipe = self.aredis.pipeline(transaction=False)
                self._register_local(pipe, wf)
                await pipe.execute()
            # One EVALSHA, one round trip (the Script loads itself on NOSCRIPT).
            result = await self.ascripts.enqueue(keys=keys, args=args)
            if not self._unknown(wf, [result]):
                break
        self._checked(wf, result, parent[0])
        return AsyncRunRef(self, run_id)
