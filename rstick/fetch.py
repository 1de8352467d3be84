"""A worker's reads: take.lua, and the blocking read with take.lua pipelined behind it.

One script call reads and claims while there is work. When every stream is empty
the worker blocks in XREADGROUP (scripts cannot) with the claim of what the read
delivers pipelined behind it: Redis runs that claim as soon as the read is served,
so an idle worker starts a new step one round trip after it was enqueued, not two.
Both go on the worker's own connection (``blocking.py``) when it can have one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from .blocking import BlockingConnection
from .keys import GROUP, Keys
from .plural import plural
from .protocol import Claim, text
from .reap_report import ReapReport
from .reaper import Reaper

log = logging.getLogger("rstick.worker")

TAKE_TIMEOUT = 30.0  # seconds: no reply by then (past a block) means a dead connection
DUE_BATCH = 100  # delayed (and waiting) entries moved per call of due.lua
RECOVER_BATCH = 1000  # pending entries looked at per stream by recover_stranded

Reply = tuple[list[Any], list[Any], bool]  # take.lua's: claim replies, marks, live


class Fetcher:
    """Reads for one worker. ``fetch`` is never called concurrently (only the worker's
    fetch loop reads), so the marks and the connection are plain attributes."""

    def __init__(
        self,
        client: Any,
        keys: Keys,
        worker_id: str,
        instance: str,
        queues: list[str],
        serves: str,
        dead_maxlen: int,
    ) -> None:
        """``client``: the app's Client (its asyncio redis client may be made anew);
        ``queues``: the shared queues it reads, after its personal stream; ``serves``:
        the workflows the worker has the code of, " name name ... "."""
        self.client = client
        self.keys = keys
        self.worker_id = worker_id
        self.instance = instance
        self.queues = queues
        self.streams = [keys.personal(worker_id), *(keys.queue(q) for q in queues)]
        self.serves = serves
        self.dead_maxlen = dead_maxlen
        # The marks of the last take that left slots free (see take.lua), while they
        # hold: with them the worker may block in XREADGROUP and claim what the read
        # delivers in the same round trip.
        self.marks: list[Any] | None = None
        # The blocking read's connection, and the client it was made for.
        self._blocking: tuple[Any, BlockingConnection | None] | None = None
        # Given by the worker: starts claims at once, from the connection's callback,
        # when a blocking read's claims come in (a turn of the event loop sooner, on
        # the way from enqueue to a step's start). None: fetch returns every claim.
        self.start_early: Callable[[list[Claim]], None] | None = None
        self.started = 0  # claims the last fetch started early

    async def fetch(self, free: int, block_ms: int | None) -> tuple[list[Claim], bool]:
        """Take up to ``free`` entries: (their claims, whether the worker is live: its
        heartbeat holds), but those ``start_early`` started (counted in ``started``).
        ``block_ms`` None: never block."""
        self.started = 0
        marks, self.marks = self.marks, None  # a failed call leaves no stale marks
        if block_ms is None or marks is None:
            replies, marks, live = await self.take(free, None, want_marks=block_ms is not None)
            if live and not replies and block_ms is not None:
                replies, marks, live = await self.wait_for_entries(free, block_ms, marks)
        else:
            replies, marks, live = await self.wait_for_entries(free, block_ms, marks)
        if live:
            self.marks = marks or None
        return [Claim.from_reply(r) for r in replies], live

    def take_args(self, free: int, marks: list[Any] | None, want_marks: bool) -> list[Any]:
        args: list[Any] = [self.keys.prefix, self.worker_id, self.instance, self.serves, free]
        args += ["1" if want_marks else "", self.dead_maxlen]
        for i, stream in enumerate(self.streams):
            args += [stream, marks[i] if marks else ""]
        return args

    async def take(self, free: int, marks: list[Any] | None, *, want_marks: bool) -> Reply:
        """One take.lua call. On the worker's own connection when it has one (redis-py's
        command path is a third of the fetch loop's CPU), else, and to load the
        script, redis-py's way."""
        scripts = self.client.ascripts
        args = self.take_args(free, marks, want_marks)
        conn = self.blocking_connection()
        if conn is not None:
            command = ("EVALSHA", scripts.take.sha, 1, self.keys.workflows, *args)
            [reply] = await conn.call([command], TAKE_TIMEOUT)
            if not isinstance(reply, NoScriptError):
                if isinstance(reply, Exception):
                    raise reply
                return reply[0], reply[1], bool(reply[2])
        reply = await scripts.take(keys=[self.keys.workflows], args=args)
        return reply[0], reply[1], bool(reply[2])

    async def wait_for_entries(self, free: int, block_ms: int, marks: list[Any]) -> Reply:
        """Block until an entry comes (or ``block_ms`` pass) and claim what the read
        delivered, in one round trip: take.lua rides in the pipeline behind the read,
        and Redis runs it as soon as the read is served.

        COUNT is per stream, so the read delivers at most one entry per stream;
        take.lua claims them (giving back any beyond ``free``) and reads nothing
        else, to keep the way to the step's start short: it returns no marks, so the
        next fetch takes whatever else there is."""
        take = self.client.ascripts.take
        args = self.take_args(free, marks, True)
        conn = self.blocking_connection()
        if conn is not None:
            read_cmd: tuple[Any, ...] = ("XREADGROUP", "GROUP", GROUP, self.worker_id, "COUNT", 1)
            read_cmd += ("BLOCK", block_ms, "STREAMS", *self.streams, *(">" for _ in self.streams))
            take_cmd = ("EVALSHA", take.sha, 1, self.keys.workflows, *args)
            started: list[int] = []
            start = self.start_early

            def early(replies: list[Any]) -> None:
                got = replies[1]
                if start is None or isinstance(replies[0], Exception) or isinstance(got, Exception):
                    return  # errors: the coroutine sorts them out
                if got[2]:  # live
                    claims = [Claim.from_reply(r) for r in got[0]]
                    start(claims)
                    started.append(len(claims))

            read, reply = await conn.call(
                [read_cmd, take_cmd], block_ms / 1000 + TAKE_TIMEOUT, early
            )
            if started:
                self.started = started[0]
                return [], [], True  # its claims have started already
        else:
            pipe = self.client.aredis.pipeline(transaction=False)
            pipe.xreadgroup(
                GROUP, self.worker_id, dict.fromkeys(self.streams, ">"), count=1, block=block_ms
            )
            pipe.evalsha(take.sha, 1, self.keys.workflows, *args)
            read, reply = await pipe.execute(raise_on_error=False)
        if isinstance(reply, NoScriptError) and not isinstance(read, Exception):
            # Redis lost its scripts: load take.lua and claim what the read delivered.
            return await self.take(free, marks, want_marks=True)
        for result in (read, reply):
            if isinstance(result, Exception):
                raise result
        return reply[0], reply[1], bool(reply[2])

    async def move_due(self, *, adopt: bool) -> int:
        """Due delayed entries to their streams, and (``adopt``: not while the worker
        drains) entries waiting for a worker with code this one has, to its own
        stream (due.lua); returns how many moved."""
        moved, adopted = await self.client.ascripts.due(
            keys=[self.keys.workflows],
            args=[
                self.keys.prefix,
                DUE_BATCH,
                self.worker_id,
                self.serves if adopt else "",
                " " + " ".join(self.queues) + " ",
            ],
        )
        if adopted:
            log.info("took over %s waiting for this worker's code", plural(adopted, "step"))
        return int(moved) + int(adopted)

    def blocking_connection(self) -> BlockingConnection | None:
        """The connection of this worker's reads (``blocking.py``), made for the client
        in use; None when that client is served by a redis-py pipeline."""
        client = self.client.aredis
        if self._blocking is None or self._blocking[0] is not client:
            self._blocking = (client, BlockingConnection.for_client(client))
        return self._blocking[1]

    def close(self) -> None:
        """Close the worker's own connection (the worker stops)."""
        conn = self._blocking[1] if self._blocking else None
        if conn is not None:
            conn.close()

    def reconnected(self) -> bool:
        """Whether the connection was made anew since the last call: a reply may have
        been lost with the old one (the worker then recovers its stranded entries)."""
        conn = self._blocking[1] if self._blocking else None
        if conn is None or not conn.reconnected:
            return False
        conn.reconnected = False
        return True

    async def recover_stranded(self, known: set[str], reaper: Reaper) -> int:
        """Dispatch again the entries pending on this worker that are not in ``known``
        (those it runs, or whose outcome it holds): delivered in a reply that was
        lost with the connection. Returns how many; 0, doing nothing, once this
        process no longer holds the worker's id."""
        report = ReapReport()
        for stream in self.streams:
            try:
                pending = await self.client.aredis.xpending_range(
                    stream,
                    GROUP,
                    min="-",
                    max="+",
                    count=RECOVER_BATCH,
                    consumername=self.worker_id,
                )
            except ResponseError:  # NOGROUP: recreated by the fetch loop
                continue
            ids = [p["message_id"] for p in pending]
            stranded = [i for i in ids if f"{stream} {text(i)}" not in known]
            if not stranded:
                continue
            if not await reaper.settle_entries(
                self.worker_id, self.instance, stream, stranded, report
            ):
                return 0  # our heartbeat lapsed, or the id is another process's now
        if report:
            log.warning(
                "recovered %s stranded by a lost reply",
                plural(report.redispatched, "entry", "entries"),
            )
        return report.redispatched
