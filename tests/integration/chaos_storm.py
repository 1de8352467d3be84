"""The chaos run: worker processes killed and restarted while runs flow, Redis crashed once.

``Storm(config, folder).run()`` starts a durable redis-server and N ``rstick
worker`` processes, enqueues a mix of SOFT, HARD and non-sticky 3-step runs
(``chaos_app``), and for ``config.seconds`` SIGKILLs a random worker every few
seconds, bringing it back later under the same id (or, sometimes, a new one).
Once, Redis itself is crashed and started again. Then everyone is brought back,
the runs are waited for, and everything needed to judge the outcome is read:
the runs, their histories and outputs, the step log, each worker process's life,
the streams' pending entries and the dead letters (``chaos_checks`` judges).

Every loop here is bounded by a deadline.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from rstick import Run
from rstick.codec import unpack
from rstick.keys import GROUP

from .chaos_harness import Life, StepLine, Workers, durable_redis, outage, step_lines, wait_until

MIX = ("Soft3", "Hard3", "Plain3")
GARBAGE = "chaos-garbage"  # marks the entries the storm XADDs by hand
TICK = 0.05  # seconds between two looks of the storm loop at its schedule


@dataclass
class Config:
    runs: int = 300
    workers: int = 4
    seconds: float = 25.0  # the storm: enqueueing, killing, restarting
    kill_every: tuple[float, float] = (2.0, 4.0)
    down: tuple[float, float] = (0.3, 6.0)  # how long a killed worker stays away
    # The first kill stays away this long: past death detection (HARD runs park),
    # back before their schedule_timeout (they resume).
    first_down: float = 3.5
    new_id: float = 0.25  # chance that a killed worker comes back under a new id
    redis_restart_at: float | None = 0.5  # when, as a share of ``seconds``; None: never
    redis_down: float = 1.0
    min_alive: int = 2  # never kill below this many running workers
    concurrency: int = 4
    heartbeat: float = 0.25
    worker_ttl: float = 1.5
    step_sleep: tuple[float, float] = (0.05, 0.3)
    flaky: float = 0.1  # share of runs whose step b fails once on purpose (a retry)
    settle: float = 90.0  # at most this long for the runs to finish after the storm
    seed: int | None = None


@dataclass
class Kill:
    worker_id: str
    at: float
    back_at: float
    back_as: str  # the id it comes back under


@dataclass(frozen=True)
class Leftover:
    """An entry still in a stream once every run should have finished."""

    stream: str
    entry_id: str
    fields: dict[str, str]
    consumer: str | None  # the worker it was delivered to, if it is pending

    @property
    def run_id(self) -> str:
        return self.fields.get("r", "")


@dataclass
class Outcome:
    """Everything the checks need, read once the storm is over."""

    config: Config
    seed: int
    namespace: str
    plan: dict[str, str]  # run id -> workflow
    runs: dict[str, Run]
    history: dict[str, list[dict[str, Any]]]
    outputs: dict[str, dict[str, Any]]
    lines: list[StepLine]
    lives: list[Life]
    kills: list[Kill]
    redis_restarts: list[float]
    dead_letters: list[dict[str, Any]]
    garbage: int  # entries XADDed by hand
    leftovers: list[Leftover]
    delayed: int
    alive: list[str]  # the worker ids running at the end
    lingering: list[str]  # worker ids without a process that Redis still lists
    worker_logs: dict[str, str]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class Storm:
    def __init__(
        self, config: Config, folder: Path, say: Callable[[str], None] = lambda _: None
    ) -> None:
        self.config = config
        self.folder = folder
        self.say = say
        self.seed = config.seed if config.seed is not None else random.randrange(2**32)
        self.random = random.Random(self.seed)
        self.namespace = f"chaos-{uuid.uuid4().hex[:8]}"
        self.kills: list[Kill] = []
        self.redis_restarts: list[float] = []
        self.slots = {n: f"w{n}" for n in range(1, config.workers + 1)}  # slot -> current id
        self.generation = dict.fromkeys(self.slots, 0)
        self.garbage = 0
        self.notes: list[str] = []

    # -- the run ---------------------------------------------------------------

    def run(self) -> Outcome:
        started = time.monotonic()
        server = durable_redis()
        workers = Workers(
            server.url,
            self.namespace,
            self.folder / "logs",
            heartbeat=self.config.heartbeat,
            worker_ttl=self.config.worker_ttl,
            concurrency=self.config.concurrency,
        )
        app = workers.client_app()
        try:
            for wid in self.slots.values():
                workers.start(wid)
            workers.wait_ready(app)
            plan = self._plan()
            self.say(f"seed {self.seed}: {len(plan)} runs, {len(self.slots)} workers")
            self._storm(server, workers, app, plan)
            self._settle(workers, app, plan)
            outcome = self._collect(workers, app, plan)
            outcome.seconds = time.monotonic() - started
            return outcome
        finally:
            workers.close(graceful=False)
            app.close()
            server.close()

    def _plan(self) -> list[tuple[str, str, dict[str, Any]]]:
        steps = self.folder / "steps"
        steps.mkdir(parents=True, exist_ok=True)
        plan = []
        for n in range(self.config.runs):
            workflow = MIX[n % len(MIX)]
            data: dict[str, Any] = {
                "dir": str(steps),
                "sleep": round(self.random.uniform(*self.config.step_sleep), 3),
            }
            if self.random.random() < self.config.flaky:
                data["flaky"] = ["b:1"]
            plan.append((uuid.uuid4().hex, workflow, data))
        return plan

    def _storm(
        self,
        server: Any,
        workers: Workers,
        app: Any,
        plan: list[tuple[str, str, dict[str, Any]]],
    ) -> None:
        cfg = self.config
        t0 = time.monotonic()
        end = t0 + cfg.seconds
        enqueue_until = cfg.seconds * 0.8  # the last stretch only kills
        next_kill = t0 + self.random.uniform(*cfg.kill_every)
        restart_at = None
        if cfg.redis_restart_at is not None:
            restart_at = t0 + cfg.seconds * cfg.redis_restart_at
        garbage_at: float | None = t0 + cfg.seconds * 0.3
        pending_back: list[Kill] = []
        sent = 0
        while time.monotonic() < end:
            now = time.monotonic()
            due = min(len(plan), int(len(plan) * (now - t0) / enqueue_until) + 1)
            while sent < due:
                run_id, workflow, data = plan[sent]
                try:
                    app.enqueue(workflow, data, run_id=run_id)  # idempotent on the run id
                except redis.ConnectionError:
                    break  # Redis is away: the same run id is sent again on the next tick
                sent += 1
            for kill in [k for k in pending_back if k.back_at <= time.time()]:
                pending_back.remove(kill)
                workers.start(kill.back_as)
            if now >= next_kill:
                killed = self._kill(workers, len(self.kills))
                if killed is not None:
                    pending_back.append(killed)
                next_kill = now + self.random.uniform(*cfg.kill_every)
            if restart_at is not None and now >= restart_at:
                restart_at = None
                self.say(f"restarting redis (down {cfg.redis_down}s)")
                self.redis_restarts.append(time.time())
                outage(server, cfg.redis_down)
            if garbage_at is not None and now >= garbage_at:
                garbage_at = None
                self._add_garbage(app)
            time.sleep(TICK)  # the storm's own pace, not a wait for a condition
        for kill in pending_back:  # the storm is over: everyone comes back now
            workers.start(kill.back_as)
        rest = plan[sent:]  # only if Redis was away at the very end
        wait_until(lambda: self._send(app, rest), 30, "Redis to take the last runs")

    @staticmethod
    def _send(app: Any, items: list[tuple[str, str, dict[str, Any]]]) -> bool:
        for run_id, workflow, data in items:
            app.enqueue(workflow, data, run_id=run_id)  # idempotent: a retry sends them all
        return True

    def _kill(self, workers: Workers, n: int) -> Kill | None:
        running = workers.running()
        if len(running) <= self.config.min_alive:
            return None
        victim = self.random.choice(running)
        slot = next(s for s, wid in self.slots.items() if wid == victim)
        # The first kill comes back under its own id while its HARD runs wait for
        # it; the second under a new id (its HARD runs must time out).
        if n == 0:
            down, renamed = self.config.first_down, False
        elif n == 1:
            down, renamed = self.random.uniform(*self.config.down), True
        else:
            down = self.random.uniform(*self.config.down)
            renamed = self.random.random() < self.config.new_id
        if renamed:
            self.generation[slot] += 1
            self.slots[slot] = f"w{slot}g{self.generation[slot]}"
        life = workers.kill(victim)
        assert life.killed_at is not None
        kill = Kill(victim, life.killed_at, life.killed_at + down, self.slots[slot])
        self.kills.append(kill)
        self.say(f"killed {victim}; back in {down:.1f}s as {kill.back_as}")
        return kill

    def _add_garbage(self, app: Any) -> None:
        queue = app.keys.queue("default")
        # Two malformed entries (dead-lettered); a well formed one naming no run is
        # dropped like any stale entry, and the queue must end empty all the same.
        entries = [
            {"chaos": GARBAGE, "hello": "world"},
            {"chaos": GARBAGE, "r": "x", "s": "a", "a": "1", "e": "0"},
        ]
        with contextlib.suppress(redis.ConnectionError):
            app.client.redis.xadd(queue, {"r": "x", "s": "a", "a": "1", "e": "0", "w": "Nope"})
        for fields in entries:
            try:
                app.client.redis.xadd(queue, fields)
                self.garbage += 1
            except redis.ConnectionError:
                pass

    def _settle(
        self, workers: Workers, app: Any, plan: list[tuple[str, str, dict[str, Any]]]
    ) -> None:
        workers.wait_ready(app, timeout=60)
        ids = [run_id for run_id, _, _ in plan]

        def finished() -> bool:
            pipe = app.client.redis.pipeline(transaction=False)
            for run_id in ids:
                pipe.hget(app.keys.run(run_id), "status")
            return all(s in (b"succeeded", b"failed", b"cancelled") for s in pipe.execute())

        self.say("storm over: waiting for the runs")
        try:
            wait_until(finished, self.config.settle, "every run to finish")
        except TimeoutError as exc:
            self.notes.append(str(exc))  # the checks list the runs that did not
            return
        # Dead workers are forgotten once the reaper settled what they held.
        gone = set(self._known_workers(app)) - set(workers.running())
        if gone:
            with contextlib.suppress(TimeoutError):  # the checks report who lingers
                wait_until(
                    lambda: not set(self._known_workers(app)) & gone,
                    max(10.0, self.config.worker_ttl * 6),
                    f"dead workers {sorted(gone)} to be forgotten",
                )

    @staticmethod
    def _known_workers(app: Any) -> list[str]:
        return [w.decode() for w in app.client.redis.zrange(app.keys.workers, 0, -1)]

    # -- reading the outcome ----------------------------------------------------

    def _collect(
        self, workers: Workers, app: Any, plan: list[tuple[str, str, dict[str, Any]]]
    ) -> Outcome:
        r, keys = app.client.redis, app.keys
        runs = {run_id: app.get_run(run_id) for run_id, _, _ in plan}
        history = {run_id: app.client.history(run_id) for run_id in runs}
        outputs = {
            run_id: {
                k.decode()[:-2]: unpack(v)
                for k, v in r.hgetall(keys.run(run_id)).items()
                if k.endswith(b".o")
            }
            for run_id in runs
        }
        streams = [keys.queue("default")]
        streams += [k.decode() for k in r.scan_iter(match=f"{keys.prefix}:w:*", count=1000)]
        left = [entry for stream in streams for entry in leftovers(r, stream)]
        lingering = sorted(set(self._known_workers(app)) - set(workers.running()))
        return Outcome(
            config=self.config,
            seed=self.seed,
            namespace=self.namespace,
            plan={run_id: workflow for run_id, workflow, _ in plan},
            runs=runs,
            history=history,
            outputs=outputs,
            lines=step_lines(self.folder / "steps"),
            lives=list(workers.lives),
            kills=list(self.kills),
            redis_restarts=list(self.redis_restarts),
            dead_letters=app.client.dead_letters(limit=1000),
            garbage=self.garbage,
            leftovers=left,
            delayed=r.zcard(keys.delayed),
            alive=workers.running(),
            lingering=lingering,
            worker_logs={f"{life.worker_id}.{life.n}": life.text() for life in workers.lives},
            notes=list(self.notes),
        )


def leftovers(r: Any, stream: str) -> list[Leftover]:
    """Every entry still in ``stream``, with the worker it is pending on, if any."""
    if not r.exists(stream):
        return []
    owners = {
        p["message_id"].decode(): p["consumer"].decode()
        for p in r.xpending_range(stream, GROUP, min="-", max="+", count=10_000)
    }
    found = [
        Leftover(
            stream,
            entry_id.decode(),
            {k.decode(): v.decode(errors="replace") for k, v in fields.items()},
            owners.pop(entry_id.decode(), None),
        )
        for entry_id, fields in r.xrange(stream, count=10_000)
    ]
    # Pending ids whose entry was deleted: nothing can ever acknowledge them.
    return found + [Leftover(stream, i, {}, owner) for i, owner in owners.items()]
