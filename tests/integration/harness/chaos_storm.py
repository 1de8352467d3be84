"""The chaos run: worker processes killed, paused and restarted while runs flow,
Redis crashed and filled, steps hung, clocks skewed and code missing.

``Storm(config, folder).run()`` starts a durable redis-server and ``rstick
worker`` processes: N of ``chaos_app`` (the last of them under ``faketime``, its
wall clock ``skew`` seconds off) and one, ``p1``, of ``chaos_partial``, which
lacks the sticky workflows. It enqueues a mix of SOFT, HARD and non-sticky
3-step runs, and now and then a ``Hang`` run whose sync steps sleep far past
their timeout. For ``config.seconds`` it:

- SIGKILLs a random worker every few seconds, bringing it back later under the
  same id (or, sometimes, a new one);
- pauses one (SIGSTOP, then SIGCONT) every few seconds, either past its ttl (it
  is declared dead, and must rejoin) or for half of it (nothing may move);
- once, stops (SIGTERM) every worker with the full code for ``code_gap``
  seconds, so that only ``p1`` serves the queue and runs wait for a worker with
  their code;
- once, crashes Redis and starts it again;
- once, lowers Redis's maxmemory under what it uses (``noeviction``) for
  ``memory_full`` seconds, longer than the ttl: every write is refused;
- once, pauses Redis (CLIENT PAUSE ALL) for ``redis_pause`` seconds, longer than
  the ttl: every command waits, and no client sees an error;
- acts as a supervisor: a worker that stops by itself is started again.

Then everyone is brought back, the runs are waited for, and everything needed
to judge the outcome is read: the runs, their histories and outputs, the step
log, each worker process's life and pauses, the streams' pending entries and
the dead letters (``chaos_checks`` judges).

Every loop here is bounded by a deadline.
"""

from __future__ import annotations

import contextlib
import random
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from rstick import Run
from rstick.codec import unpack
from rstick.embedded import RedisServer
from rstick.keys import GROUP
from rstick.outage import is_outage
from rstick.testing.processes import WorkerProcess, wait_until

from . import chaos_app, chaos_partial
from .chaos_harness import APP, ChaosWorkers, StepLine, durable_redis, outage, step_lines

MIX = ("Soft3", "Hard3", "Plain3")
PARTIAL_APP = "tests.integration.harness.chaos_partial:app"
PARTIAL_ID = "p1"
GARBAGE = "chaos-garbage"  # marks the entries the storm XADDs by hand
TICK = 0.05  # seconds between two looks of the storm loop at its schedule
REAPED_WITHIN = 10.0  # seconds the first long pause may last, waiting to be reaped

Plan = list[tuple[str, str, dict[str, Any]]]  # (run id, workflow, input)


@dataclass
class Config:
    runs: int = 300
    workers: int = 4  # of chaos_app; p1 (chaos_partial) comes on top with ``partial``
    seconds: float = 25.0  # the storm: enqueueing, killing, pausing, restarting
    kill_every: tuple[float, float] | None = (2.0, 4.0)  # None: no kills
    down: tuple[float, float] = (0.3, 6.0)  # how long a killed worker stays away
    # The first kill stays away this long: past death detection (HARD runs park),
    # back before their schedule_timeout (they resume).
    first_down: float = 3.5
    new_id: float = 0.25  # chance that a killed worker comes back under a new id
    redis_restart_at: float | None = 0.5  # when, as a share of ``seconds``; None: never
    redis_down: float = 1.0
    min_alive: int = 2  # never kill or pause below this many workers with the full code
    concurrency: int = 4
    heartbeat: float = 0.25
    worker_ttl: float = 1.5
    step_sleep: tuple[float, float] = (0.05, 0.3)
    flaky: float = 0.1  # share of runs whose step b fails once on purpose (a retry)
    settle: float = 90.0  # at most this long for the runs to finish after the storm
    seed: int | None = None
    # SIGSTOP a worker this often; a long pause lasts worker_ttl + past_ttl, a short
    # one worker_ttl / 2. The first pause is long, the second short, then by long_share.
    pause_every: tuple[float, float] | None = (3.0, 6.0)  # None: no pauses
    past_ttl: float = 1.0
    long_share: float = 0.5
    skew: float | None = -11.0  # the last worker's wall clock, in seconds; None: not skewed
    partial: bool = True  # run p1, a worker of chaos_partial (no sticky workflows)
    code_gap_at: float | None = 0.15  # share of ``seconds``; None: never (needs ``partial``)
    code_gap: float = 1.5  # seconds only p1 is up
    memory_full_at: float | None = 0.7  # share of ``seconds``; None: never
    memory_full: float = 3.0  # seconds Redis refuses writes: more than worker_ttl
    redis_pause_at: float | None = 0.5  # share of ``seconds``; None: never
    redis_pause: float = 2.5  # seconds Redis holds every command: more than worker_ttl
    hang_every: float | None = 3.0  # seconds between two Hang runs; None: none
    hang_for: float = 3.0  # how long a hung step sleeps (its timeout is 0.3 s)


@dataclass
class Kill:
    worker_id: str
    at: float
    back_at: float
    back_as: str  # the id it comes back under
    gap: bool = False  # not a kill: a SIGTERM that opened the code gap


@dataclass
class Pause:
    """A SIGSTOP of one worker process, and what came after its SIGCONT."""

    worker_id: str
    n: int  # the life (process) of the worker id that was paused
    stopped_at: float
    length: float
    long: bool  # meant to last past the worker's ttl (see ``past_ttl``)
    # The first long pause lasts until the worker is declared dead (at most
    # REAPED_WITHIN seconds): whether a reaper passes within a fixed pause depends on
    # who leads, and the storm must see one zombie whatever the timing.
    until_reaped: bool = False
    resumed_at: float | None = None
    # When the storm saw its record beating again after the SIGCONT (rejoined, if it
    # had been declared dead): the end of the time its runs could legitimately move.
    rejoined_at: float | None = None
    ended_at: float | None = None  # its process ended before it was seen beating again

    def past_ttl(self, config: Config) -> bool:
        """Whether it may have been declared dead: it lasted longer than the ttl less
        a heartbeat (its last beat came up to a heartbeat before the SIGSTOP)."""
        end = self.resumed_at if self.resumed_at is not None else float("inf")
        return self.long or end - self.stopped_at > config.worker_ttl - config.heartbeat


@dataclass
class Exit:
    """A worker process that ended by itself (the storm started it again)."""

    worker_id: str
    n: int
    code: int
    at: float


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
    lives: list[WorkerProcess]
    kills: list[Kill]
    redis_restarts: list[float]
    redis_pauses: list[tuple[float, float]]
    dead_letters: list[dict[str, Any]]
    garbage: int  # entries XADDed by hand
    leftovers: list[Leftover]
    delayed: int
    alive: list[str]  # the worker ids running at the end
    lingering: list[str]  # worker ids without a process that Redis still lists
    worker_logs: dict[str, str]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    pauses: list[Pause] = field(default_factory=list)
    exits: list[Exit] = field(default_factory=list)
    stops: list[Exit] = field(default_factory=list)
    memory_outages: list[tuple[float, float]] = field(default_factory=list)
    code_gaps: list[tuple[float, float]] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # workflows still in {ns}:waiting
    # time.time() - time.monotonic() in the storm's process: the step log's times
    # (monotonic, one clock for the machine) on the clock of everything else.
    mono_offset: float = 0.0


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
        self.pauses: list[Pause] = []
        self.exits: list[Exit] = []  # workers that stopped by themselves
        self.stops: list[Exit] = []  # workers stopped by a SIGTERM of the storm's
        self.redis_restarts: list[float] = []
        self.redis_pauses: list[tuple[float, float]] = []
        self.memory_outages: list[tuple[float, float]] = []
        self.code_gaps: list[tuple[float, float]] = []
        self.slots = {n: f"w{n}" for n in range(1, config.workers + 1)}  # slot -> current id
        self.generation = dict.fromkeys(self.slots, 0)
        # The last slot runs under faketime, whatever id it comes back under.
        self.skewed = {self.slots[config.workers]} if config.skew else set()
        self.garbage = 0
        self.notes: list[str] = []
        self.pending_back: list[Kill] = []
        self.gap_until: float | None = None  # wall time the code gap ends, while open
        self.full_until: float | None = None  # wall time Redis's memory is lifted, while full

    # -- the run ---------------------------------------------------------------

    def run(self) -> Outcome:
        started = time.monotonic()
        server = durable_redis()
        workers = ChaosWorkers(
            server.url,
            self.namespace,
            self.folder / "logs",
            heartbeat=self.config.heartbeat,
            worker_ttl=self.config.worker_ttl,
            concurrency=self.config.concurrency,
        )
        app = workers.client_app()
        try:
            for wid in self._all_ids():
                self._start(workers, wid)
            workers.wait_ready()
            plan, hangs = self._plan()
            self.say(f"seed {self.seed}: {len(plan) + len(hangs)} runs, {self._who()}")
            self._storm(server, workers, app, plan, hangs)
            everything = plan + hangs
            self._settle(workers, app, everything)
            outcome = self._collect(workers, app, everything)
            outcome.seconds = time.monotonic() - started
            return outcome
        finally:
            workers.close(graceful=False)
            app.close()
            server.close()

    def _who(self) -> str:
        who = f"{len(self.slots)} workers"
        if self.skewed:
            who += f" ({self.slots[self.config.workers]} with its clock {self.config.skew:+g}s off)"
        if self.config.partial:
            who += f" and {PARTIAL_ID} without {', '.join(chaos_partial.LACKS)}"
        return who

    def _all_ids(self) -> list[str]:
        return [*self.slots.values(), *([PARTIAL_ID] if self.config.partial else [])]

    def _start(self, workers: ChaosWorkers, wid: str) -> WorkerProcess:
        if wid == PARTIAL_ID:
            return workers.start(wid, app=PARTIAL_APP)
        return workers.start(wid, app=APP, skew=self.config.skew if wid in self.skewed else None)

    def _plan(self) -> tuple[Plan, Plan]:
        """The runs enqueued at a steady pace, and the Hang runs, one per hang_every."""
        steps = self.folder / "steps"
        steps.mkdir(parents=True, exist_ok=True)
        plan: Plan = []
        for n in range(self.config.runs):
            workflow = MIX[n % len(MIX)]
            data: dict[str, Any] = {
                "dir": str(steps),
                "sleep": round(self.random.uniform(*self.config.step_sleep), 3),
            }
            if self.random.random() < self.config.flaky:
                data["flaky"] = ["b:1"]
            plan.append((uuid.uuid4().hex, workflow, data))
        hangs: Plan = []
        if self.config.hang_every:
            for _ in range(int(self.config.seconds * 0.8 / self.config.hang_every)):
                hangs.append((uuid.uuid4().hex, "Hang", self._hang_input(steps)))
        return plan, hangs

    def _hang_input(self, steps: Path) -> dict[str, Any]:
        """Which attempts of a Hang run's roots hang: all four at attempt 1 (as many
        as the worker's slots), a few of them, or h1 at every attempt (the run fails
        with StepTimeout once its retries are spent)."""
        roots = chaos_app.HANG_ROOTS
        kind = self.random.choices(("all", "some", "fail"), weights=(5, 3, 2))[0]
        if kind == "all":
            hung = [f"{s}:1" for s in roots]
        elif kind == "some":
            hung = [f"{s}:1" for s in self.random.sample(roots, self.random.randint(1, 3))]
        else:
            hung = [f"h1:{a}" for a in range(1, chaos_app.HANG_RETRIES + 2)]
        return {"dir": str(steps), "sleep": dict.fromkeys(hung, self.config.hang_for)}

    def _storm(
        self, server: RedisServer, workers: ChaosWorkers, app: Any, plan: Plan, hangs: Plan
    ) -> None:
        cfg = self.config
        t0 = time.monotonic()
        end = t0 + cfg.seconds
        enqueue_until = cfg.seconds * 0.8  # the last stretch only injects faults

        def at(share: float | None) -> float | None:
            return None if share is None else t0 + cfg.seconds * share

        next_kill = t0 + self.random.uniform(*cfg.kill_every) if cfg.kill_every else None
        next_pause = t0 + self.random.uniform(*cfg.pause_every) if cfg.pause_every else None
        restart_at = at(cfg.redis_restart_at)
        memory_at = at(cfg.memory_full_at)
        redis_pause_at = at(cfg.redis_pause_at)
        gap_at = at(cfg.code_gap_at) if cfg.partial else None
        garbage_at: float | None = t0 + cfg.seconds * 0.3
        every = cfg.hang_every or 0.0  # no Hang runs planned without it
        hang_times = [t0 + every * (k + 0.5) for k in range(len(hangs))]
        sent = hung_sent = 0
        while time.monotonic() < end:
            now = time.monotonic()
            due = min(len(plan), int(len(plan) * (now - t0) / enqueue_until) + 1)
            sent += self._send(app, plan[sent:due])
            hang_due = sum(1 for t in hang_times if t <= now)
            hung_sent += self._send(app, hangs[hung_sent:hang_due])
            self._bring_back(workers)
            self._supervise(workers)
            self._watch_pauses(workers, app)
            if self.full_until is not None and time.time() >= self.full_until:
                self._lift_memory(app)
            if self.gap_until is not None and time.time() >= self.gap_until:
                self.gap_until = None  # the killed workers come back via pending_back
            quiet = self.gap_until is None and self.full_until is None
            if gap_at is not None and now >= gap_at and quiet and self._may_open_gap(workers):
                gap_at = None
                self._open_gap(workers)
            elif next_kill is not None and now >= next_kill and self.gap_until is None:
                assert cfg.kill_every is not None
                killed = self._kill(workers)
                if killed is not None:
                    self.pending_back.append(killed)
                next_kill = now + self.random.uniform(*cfg.kill_every)
            elif next_pause is not None and now >= next_pause and self.gap_until is None:
                assert cfg.pause_every is not None
                self._pause(workers)
                next_pause = now + self.random.uniform(*cfg.pause_every)
            # Not while a worker is paused: the restart holds this loop up, and the
            # pause would last longer than planned.
            paused = any(p.resumed_at is None for p in self.pauses)
            if restart_at is not None and now >= restart_at and quiet and not paused:
                restart_at = None
                self.say(f"restarting redis (down {cfg.redis_down}s)")
                self.redis_restarts.append(time.time())
                outage(server, cfg.redis_down)
            if memory_at is not None and now >= memory_at and quiet:
                memory_at = None
                self._fill_memory(app)
            if redis_pause_at is not None and now >= redis_pause_at and quiet and not paused:
                redis_pause_at = None
                self._pause_redis(app)
            if garbage_at is not None and now >= garbage_at:
                garbage_at = None
                self._add_garbage(app)
            time.sleep(TICK)  # the storm's own pace, not a wait for a condition
        # The storm is over: everyone comes back now.
        for pause in self.pauses:
            if pause.resumed_at is None:
                self._resume(workers, pause)
        if self.full_until is not None:
            wait_until(lambda: self._lift_memory(app), 30, "Redis to take CONFIG SET")
        self.gap_until = None
        for kill in self.pending_back:
            kill.back_at = min(kill.back_at, time.time())
        self._bring_back(workers)
        rest = plan[sent:] + hangs[hung_sent:]  # only if Redis was away at the very end
        wait_until(lambda: self._send(app, rest) == len(rest), 30, "Redis to take the last runs")

    def _send(self, app: Any, items: Plan) -> int:
        """Enqueue in order while Redis takes them; returns how many it took. The run
        id makes an enqueue idempotent: one whose reply was lost is sent again."""
        done = 0
        for run_id, workflow, data in items:
            try:
                app.enqueue(workflow, data, run_id=run_id)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                break  # Redis is away or full: the rest go on a later tick
            done += 1
        return done

    # -- worker faults -----------------------------------------------------------

    def _up(self, workers: ChaosWorkers) -> list[str]:
        """Running workers that are not paused, nor back from a pause but not yet seen
        beating (a worker killed then would never show how it rejoins)."""
        paused = {p.worker_id for p in self.pauses if not (p.rejoined_at or p.ended_at)}
        return [w for w in workers.running() if w not in paused]

    def _victims(self, workers: ChaosWorkers) -> list[str]:
        up = self._up(workers)
        full = [w for w in up if w != PARTIAL_ID]
        return [w for w in up if w == PARTIAL_ID or len(full) > self.config.min_alive]

    def _kill(self, workers: ChaosWorkers) -> Kill | None:
        victims = self._victims(workers)
        if not victims:
            return None
        victim = self.random.choice(victims)
        n = sum(not k.gap and k.worker_id != PARTIAL_ID for k in self.kills)
        if victim == PARTIAL_ID:
            down, renamed, back_as = self.random.uniform(*self.config.down), False, victim
        else:
            slot = next(s for s, wid in self.slots.items() if wid == victim)
            # The first kill of a worker with the code comes back under its own id
            # while its HARD runs wait for it; the second under a new id (its HARD
            # runs must time out).
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
                if victim in self.skewed:
                    self.skewed.add(self.slots[slot])
            back_as = self.slots[slot]
        life = workers.kill(victim)
        assert life.ended_at is not None
        self._ended(life)
        kill = Kill(victim, life.ended_at, life.ended_at + down, back_as)
        self.kills.append(kill)
        self.say(f"killed {victim}; back in {down:.1f}s as {kill.back_as}")
        return kill

    def _bring_back(self, workers: ChaosWorkers) -> None:
        for kill in [k for k in self.pending_back if k.back_at <= time.time()]:
            if self.gap_until is not None and kill.back_as != PARTIAL_ID:
                continue  # only workers without the code are up during the gap
            self.pending_back.remove(kill)
            self._start(workers, kill.back_as)

    def _supervise(self, workers: ChaosWorkers) -> None:
        """Start again, at once, a worker that stopped by itself (too many hung steps)."""
        for life in workers.exited():
            assert life.exit_code is not None and life.ended_at is not None
            self.exits.append(Exit(life.worker_id, life.n, life.exit_code, life.ended_at))
            self.say(f"{life.worker_id} exited by itself ({life.exit_code}): starting it again")
            self._ended(life)
            self._start(workers, life.worker_id)

    def _ended(self, life: WorkerProcess) -> None:
        """A process is gone: its pauses not yet seen to end with a beat end here."""
        for pause in self.pauses:
            if (pause.worker_id, pause.n) == (life.worker_id, life.n) and not pause.rejoined_at:
                pause.ended_at = life.ended_at

    def _pause(self, workers: ChaosWorkers) -> None:
        # Only a worker that has started: one paused while it starts up has no
        # heartbeat to miss yet.
        victims = [w for w in self._victims(workers) if workers.current[w].ready_at]
        if not victims:
            return
        victim = self.random.choice(victims)
        n = len(self.pauses)
        long = n == 0 or (n > 1 and self.random.random() < self.config.long_share)
        ttl = self.config.worker_ttl
        length = ttl + self.config.past_ttl if long else ttl / 2
        life = workers.pause(victim)
        self.pauses.append(Pause(victim, life.n, time.time(), length, long, until_reaped=n == 0))
        self.say(f"paused {victim} for {length:.2f}s ({'past' if long else 'within'} its ttl)")

    def _resume(self, workers: ChaosWorkers, pause: Pause) -> None:
        workers.resume(pause.worker_id)
        pause.resumed_at = time.time()

    def _watch_pauses(self, workers: ChaosWorkers, app: Any) -> None:
        """SIGCONT the pauses that are over; note when each paused worker beats again."""
        for pause in self.pauses:
            over = time.time() >= pause.stopped_at + pause.length
            if pause.until_reaped and over and pause.resumed_at is None:
                over = self._reaped(app, pause) or (time.time() >= pause.stopped_at + REAPED_WITHIN)
            if pause.resumed_at is None and over:
                self._resume(workers, pause)
            elif pause.resumed_at is not None and not (pause.rejoined_at or pause.ended_at):
                self._check_rejoined(app, pause)

    def _reaped(self, app: Any, pause: Pause) -> bool:
        try:
            return app.client.redis.hget(app.keys.worker(pause.worker_id), "reaped") is not None
        except Exception as exc:
            if not is_outage(exc):
                raise
            return False

    def _check_rejoined(self, app: Any, pause: Pause) -> bool:
        assert pause.resumed_at is not None
        try:
            beat, reaped = app.client.redis.hmget(
                app.keys.worker(pause.worker_id), "beat", "reaped"
            )
        except Exception as exc:
            if not is_outage(exc):
                raise
            return False
        if beat is not None and int(beat) / 1000 >= pause.resumed_at and reaped is None:
            pause.rejoined_at = time.time()
        return pause.rejoined_at is not None

    # -- the code gap ------------------------------------------------------------

    def _may_open_gap(self, workers: ChaosWorkers) -> bool:
        """p1 is up, nobody is paused, and every worker to stop has started (and so
        handles SIGTERM: before that, the signal kills the process)."""
        up = self._up(workers)
        started = all(workers.current[w].ready_at for w in up)
        return PARTIAL_ID in up and len(up) == len(workers.running()) and started

    def _open_gap(self, workers: ChaosWorkers) -> None:
        """Stop every worker with the full code (SIGTERM, as a deploy does: each hands
        its SOFT runs back and leaves); once they are all gone, only p1, which lacks
        some workflows, is up for ``code_gap`` seconds; then they come back together."""
        self.say(f"code gap: stopping every worker but {PARTIAL_ID}")
        stopping = [wid for wid in workers.running() if wid != PARTIAL_ID]
        for wid in stopping:
            workers.signal(wid, signal.SIGTERM)
        stopped = []
        for wid in stopping:
            workers.current[wid].proc.wait(self.config.settle)
            life = workers.forget(wid)
            self._ended(life)
            assert life.ended_at is not None and life.proc.returncode is not None
            self.stops.append(Exit(wid, life.n, life.proc.returncode, life.ended_at))
            stopped.append(life)
        start = time.time()
        self.gap_until = start + self.config.code_gap
        self.code_gaps.append((start, self.gap_until))
        self.say(f"code gap: only {PARTIAL_ID} is up for {self.config.code_gap}s")
        for life in stopped:
            assert life.ended_at is not None
            kill = Kill(life.worker_id, life.ended_at, self.gap_until, life.worker_id, gap=True)
            self.kills.append(kill)
            self.pending_back.append(kill)
        for kill in self.pending_back:
            kill.back_at = max(kill.back_at, self.gap_until)

    # -- Redis faults --------------------------------------------------------------

    def _fill_memory(self, app: Any) -> None:
        """Redis's memory is full: maxmemory under what it uses, noeviction. Every
        write is refused (a script: its first write) until it is lifted."""
        r = app.client.redis
        try:
            used = int(r.info("memory")["used_memory"])
            r.config_set("maxmemory-policy", "noeviction")
            r.config_set("maxmemory", max(1, used // 2))
        except Exception as exc:
            if not is_outage(exc):
                raise
            return
        self.full_until = time.time() + self.config.memory_full
        self.say(f"redis memory full for {self.config.memory_full}s")

    def _lift_memory(self, app: Any) -> bool:
        assert self.full_until is not None
        try:
            app.client.redis.config_set("maxmemory", 0)
        except Exception as exc:
            if not is_outage(exc):
                raise
            return False
        self.memory_outages.append((self.full_until - self.config.memory_full, time.time()))
        self.full_until = None
        return True

    def _pause_redis(self, app: Any) -> None:
        """CLIENT PAUSE ALL: every client's commands wait (this loop's too), and
        nobody sees an error; the beats land late, all at once."""
        ms = int(self.config.redis_pause * 1000)
        try:
            app.client.redis.execute_command("CLIENT", "PAUSE", ms, "ALL")
        except Exception as exc:
            if not is_outage(exc):
                raise
            return
        start = time.time()
        self.redis_pauses.append((start, start + self.config.redis_pause))
        self.say(f"redis paused for {self.config.redis_pause}s")

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

    # -- after the storm -------------------------------------------------------------

    def _settle(self, workers: ChaosWorkers, app: Any, plan: Plan) -> None:
        workers.wait_ready(timeout=60)
        ids = [run_id for run_id, _, _ in plan]

        def finished() -> bool:
            self._supervise(workers)
            for pause in self.pauses:
                if not (pause.rejoined_at or pause.ended_at):
                    self._check_rejoined(app, pause)
            pipe = app.client.redis.pipeline(transaction=False)
            for run_id in ids:
                pipe.hget(app.keys.run(run_id), "status")
            done = all(s in (b"succeeded", b"failed", b"cancelled") for s in pipe.execute())
            return done and all(p.rejoined_at or p.ended_at for p in self.pauses)

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

    def _collect(self, workers: ChaosWorkers, app: Any, plan: Plan) -> Outcome:
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
        for pattern in (f"{keys.prefix}:w:*", f"{keys.prefix}:wait:*"):
            streams += [k.decode() for k in r.scan_iter(match=pattern, count=1000)]
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
            redis_pauses=list(self.redis_pauses),
            dead_letters=app.client.dead_letters(limit=1000),
            garbage=self.garbage,
            leftovers=left,
            delayed=r.zcard(keys.delayed),
            alive=workers.running(),
            lingering=lingering,
            worker_logs={f"{life.worker_id}.{life.n}": life.output() for life in workers.lives},
            notes=list(self.notes),
            inputs={run_id: data for run_id, _, data in plan},
            pauses=list(self.pauses),
            exits=list(self.exits),
            stops=list(self.stops),
            memory_outages=list(self.memory_outages),
            code_gaps=list(self.code_gaps),
            waiting=sorted(w.decode() for w in r.smembers(keys.waiting)),
            mono_offset=time.time() - time.monotonic(),
        )


def leftovers(r: Any, stream: str) -> list[Leftover]:
    """Every entry still in ``stream``, with the worker it is pending on, if any."""
    if not r.exists(stream):
        return []
    try:
        pending = r.xpending_range(stream, GROUP, min="-", max="+", count=10_000)
    except redis.ResponseError:  # NOGROUP: a stream no worker reads (a wait stream)
        pending = []
    owners = {p["message_id"].decode(): p["consumer"].decode() for p in pending}
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
