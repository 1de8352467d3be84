"""Judge a chaos run (``chaos_storm.Outcome``): the README's failure model.

``verify`` returns one line per broken promise (none: all kept); ``counts`` says
how much chaos there was. Both read only what the storm recorded: the runs and
their histories in Redis, the step log the steps wrote, each worker process's
life (spawn, "started" in its log, SIGKILL, stopping by itself) and its pauses.

What each fault makes legitimate, and nothing more:

- a worker killed, or paused past its ttl (from its SIGSTOP until it beats again):
  its SOFT runs move, its HARD runs park, its running steps are lost and re-run as
  new attempts; its late completions are refused. A HARD run fails with
  SchedulingTimeout only when its worker stayed away past the deadline;
- a worker paused within its ttl, a skewed clock, Redis restarted or out of
  memory: nothing moves, nobody is declared dead;
- a worker that stops by itself (more hung steps than its limit) hands its runs
  over as a graceful stop does;
- no worker with a workflow's code up: its runs wait; one fails with
  SchedulingTimeout only when its schedule_timeout passed while the only workers
  up lacked the code;
- a hung step fails its attempt with StepTimeout and is retried per its retries,
  while its worker keeps its capacity; its late result is never accepted;
- a step lost with its worker ``max_deliveries`` times fails as PoisonMessage,
  but only if each loss was a real one (the worker was down).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from rstick.testing.processes import WorkerProcess

from . import chaos_app
from .chaos_harness import APP, StepLine
from .chaos_storm import GARBAGE, PARTIAL_ID, Exit, Outcome, Pause

GARBAGE_REASONS = {"malformed entry: needs fields r, s, a, e, w"}
LOG_SLACK = 0.01  # log lines carry milliseconds, truncated
# A reply lost with Redis's restart: the worker finds the step it never started
# pending on it and counts it lost (a new attempt), this long after the restart.
LOST_REPLY_WINDOW = 5.0
HUNG_LINE = re.compile(r"ignored its timeout and goes on running \((\d+) steps? hung, limit (\d+)")
TIMING_SLACK = 0.2  # seconds: a step's own clock and its worker's log are this close
HAND_OFF_SLACK = 0.5  # seconds: the storm sees a stopped worker's exit this late, at most


@dataclass(frozen=True)
class Problem:
    """A broken promise, and the run it concerns ("" when it is not about one run)."""

    text: str
    run_id: str = ""

    def __str__(self) -> str:
        return self.text


class Liveness:
    """When each worker id was up: its process had registered ("started") and was
    not killed, not stopping by itself, and not in a pause past its ttl (from the
    SIGSTOP until the storm saw it beating again)."""

    def __init__(self, o: Outcome) -> None:
        self.lives: dict[str, list[WorkerProcess]] = defaultdict(list)
        for life in o.lives:
            self.lives[life.worker_id].append(life)
        self.long_pauses: dict[tuple[str, int], list[Pause]] = defaultdict(list)
        for pause in o.pauses:
            if pause.past_ttl(o.config):
                self.long_pauses[pause.worker_id, pause.n].append(pause)

    def up(self, worker: str, at: float) -> bool:
        return any(self._life_up(x, at) for x in self.lives[worker])

    def _life_up(self, x: WorkerProcess, at: float) -> bool:
        # What a starting worker does before it logs "started" (take back what its
        # previous process held) can carry the same millisecond.
        if x.ready_at is None or x.ready_at >= at:
            return False
        if x.ended_at is not None and x.ended_at <= at:
            return False
        if x.stopping_at is not None and x.stopping_at <= at:
            return False
        return not any(
            p.stopped_at <= at <= (p.rejoined_at or p.ended_at or float("inf"))
            for p in self.long_pauses[x.worker_id, x.n]
        )

    def away_before(self, worker: str, at: float) -> bool:
        """Whether the worker went away (killed, stopped, paused past its ttl) before ``at``."""
        for x in self.lives[worker]:
            if x.ended_at is not None and x.ended_at <= at:
                return True
            if x.stopping_at is not None and x.stopping_at <= at:
                return True
            if any(p.stopped_at <= at for p in self.long_pauses[x.worker_id, x.n]):
                return True
        return False

    def back_between(self, worker: str, start: float, end: float) -> float | None:
        """When the worker came back (a new process ready, or a paused one beating
        again) between ``start`` and ``end``, if it did."""
        times = [x.ready_at for x in self.lives[worker] if x.ready_at]
        times += [
            p.rejoined_at
            for x in self.lives[worker]
            for p in self.long_pauses[x.worker_id, x.n]
            if p.rejoined_at
        ]
        back = sorted(t for t in times if start < t < end)
        return back[0] if back else None

    def has_code(self, worker: str) -> bool:
        return any(x.app == APP for x in self.lives[worker])


def steps_of(workflow: str) -> list[str]:
    return list(chaos_app.app.workflows[workflow].steps)


def planned_errors(data: dict[str, Any]) -> set[tuple[str, int]]:
    """The (step, attempt) the run's input makes fail: flaky ones raise, hung ones
    sleep past their step's timeout."""
    out = {_split(k) for k in data.get("flaky", ())}
    return out | hung_attempts(data)


def hung_attempts(data: dict[str, Any]) -> set[tuple[str, int]]:
    sleep = data.get("sleep")
    if not isinstance(sleep, dict):
        return set()
    return {_split(k) for k, v in sleep.items() if float(v) > chaos_app.HANG_TIMEOUT}


def _split(key: str) -> tuple[str, int]:
    step, _, attempt = key.partition(":")
    return step, int(attempt)


def verify(o: Outcome) -> list[Problem]:
    problems: list[Problem] = []
    live = Liveness(o)
    starts = Counter((x.run_id, x.step, x.attempt) for x in o.lines if x.event == "start")
    problems += [
        Problem(f"{run_id}/{step} attempt {attempt} ran {n} times", run_id)
        for (run_id, step, attempt), n in starts.items()
        if n > 1
    ]
    lines: dict[str, list[StepLine]] = defaultdict(list)
    for x in o.lines:
        lines[x.run_id].append(x)
    for run_id, workflow in o.plan.items():
        problems += [
            Problem(f"{workflow} {run_id}: {text}", run_id)
            for text in _run_problems(o, run_id, live, lines[run_id])
        ]
    problems += [
        Problem(
            f"{e.stream} still holds {e.entry_id} {e.fields}"
            + (f", pending on {e.consumer}" if e.consumer else ""),
            e.run_id,
        )
        for e in o.leftovers
    ]
    if o.delayed:
        problems.append(Problem(f"{o.delayed} entries left in the delayed set"))
    if o.waiting:
        problems.append(Problem(f"workflows still listed as waiting for code: {o.waiting}"))
    problems += _dead_letter_problems(o, live)
    if o.lingering:
        problems.append(Problem(f"dead workers still registered: {o.lingering}"))
    problems += _worker_problems(o, live)
    problems += _hung_count_problems(o)
    return problems


def falsely_dead(o: Outcome) -> set[str]:
    """Runs parked or moved away from a worker that was up at the time."""
    live = Liveness(o)
    return {
        run_id
        for run_id, hist in o.history.items()
        for e in hist
        if (e["ev"] == "parked" and live.up(e["w"], e["at"]))
        or (e["ev"] == "reassigned" and live.up(e["from"], e["at"]))
    }


def _worker_problems(o: Outcome, live: Liveness) -> list[Problem]:
    """Nobody declared dead while it beat; a long pause ends with the worker back;
    no worker stops by itself but for too many hung steps."""
    out: list[Problem] = []
    for x in o.lives:
        name = f"{x.worker_id} (pid {x.pid})"
        windows = [
            (p.stopped_at, (p.rejoined_at or p.ended_at or float("inf")) + LOG_SLACK)
            for p in live.long_pauses[x.worker_id, x.n]
        ]
        # A stopping worker hands its runs over by declaring itself dead.
        windows.append((x.stopping_at or float("inf"), float("inf")))
        for at in x.times("was declared dead"):
            if not any(start <= at <= end for start, end in windows):
                out.append(Problem(f"{name} was declared dead at {at:.3f} while it beat"))
        for at in x.times("its record is gone from Redis"):
            out.append(Problem(f"{name} found its record gone at {at:.3f} (Redis is durable)"))
        for at in x.times("was taken over by pid"):
            out.append(Problem(f"{name} was taken over at {at:.3f}"))
    for pause in o.pauses:
        if not (pause.rejoined_at or pause.ended_at):
            out.append(
                Problem(f"{pause.worker_id} never beat again after its pause at {pause.stopped_at}")
            )
    for st in o.stops:
        if st.code != 0:
            out.append(Problem(f"{st.worker_id} exited with {st.code} after a SIGTERM, not 0"))
        out += _left_behind(o, live, st)
    for ex in o.exits:
        life = next(x for x in o.lives if (x.worker_id, x.n) == (ex.worker_id, ex.n))
        if "hung past their timeout" not in life.output():
            tail = "\n".join(life.output().splitlines()[-5:])
            out.append(Problem(f"{ex.worker_id} exited by itself with {ex.code}:\n{tail}"))
        elif ex.code != 1:  # so that its supervisor starts it again
            out.append(Problem(f"{ex.worker_id} stopped for its hung steps with {ex.code}, not 1"))
    return out


def _left_behind(o: Outcome, live: Liveness, stop: Exit) -> list[Problem]:
    """A graceful stop hands the worker's runs over before it exits: none of them is
    moved or parked later on its account, until the same id is back."""
    back = live.back_between(stop.worker_id, stop.at, float("inf")) or float("inf")
    late = sorted(
        (e["at"], run_id)
        for run_id, hist in o.history.items()
        for e in hist
        if stop.at + HAND_OFF_SLACK < e["at"] < back
        and (
            (e["ev"] == "reassigned" and e["from"] == stop.worker_id)
            or (e["ev"] == "parked" and e["w"] == stop.worker_id)
        )
    )
    who = f"{stop.worker_id}, stopped at {stop.at},"
    return [Problem(f"{who} left {run_id} behind: moved at {at}", run_id) for at, run_id in late]


def _hung_count_problems(o: Outcome) -> list[Problem]:
    """A worker counts its hung steps right (the one it abandons, and those it
    abandoned before that still run), and stops once they are more than its limit."""
    out: list[Problem] = []
    # (pid, run, step) -> when each of its hung attempts ended there, by attempt
    ended: dict[tuple[int, str, str], list[float]] = defaultdict(list)
    done = {(x.run_id, x.step, x.attempt): x.at for x in o.lines if x.event == "done"}
    for x in sorted(o.lines, key=lambda x: x.attempt):
        if x.event == "start" and (x.step, x.attempt) in hung_attempts(o.inputs[x.run_id]):
            end = done.get((x.run_id, x.step, x.attempt))
            ended[x.pid, x.run_id, x.step].append(
                float("inf") if end is None else end + o.mono_offset
            )
    for life in o.lives:
        running: list[float] = []  # when the steps it abandoned so far ended
        over = False
        for line in life.output().splitlines():
            found = HUNG_LINE.search(line)
            at = life.line_time(line)
            if not found or at is None:
                continue
            run_id, _, step = line[: found.start()].split()[-1].partition("/")
            attempts = ended[life.pid, run_id, step]
            running.append(attempts.pop(0) if attempts else float("inf"))
            still = sum(end > at + TIMING_SLACK for end in running[:-1]) + 1
            logged, limit = int(found[1]), int(found[2])
            if logged < still:
                out.append(
                    Problem(
                        f"{life.worker_id} (pid {life.pid}) counted {logged} hung steps at "
                        f"{at:.3f} ({run_id}/{step}), though {still} had hung and still ran"
                    )
                )
            over = over or logged > limit
        if over and "hung past their timeout" not in life.output():
            out.append(Problem(f"{life.worker_id} (pid {life.pid}) went past its hung limit"))
    return out


def _run_problems(o: Outcome, run_id: str, live: Liveness, lines: list[StepLine]) -> list[str]:
    run, hist, outs = o.runs[run_id], o.history[run_id], o.outputs[run_id]
    workflow, data = o.plan[run_id], o.inputs[run_id]
    out: list[str] = []
    error = run.step(run.error_step).error if run.error_step else None
    if run.status not in ("succeeded", "failed"):
        out.append(f"ended {run.status}")
    elif run.status == "failed":
        assert error is not None and run.error_step is not None
        if error.type == "PoisonMessage":
            out += _poison_problems(o, run_id, run.error_step, live)
        elif error.type == "SchedulingTimeout" and workflow == "Hard3":
            pass  # judged by _hard_problems / _waited_problems
        elif error.type == "StepTimeout" and workflow == "Hang":
            pass  # judged by _hang_problems
        else:
            out.append(f"failed with {error}")

    # A step's result is accepted at most once, and it came from a real execution.
    done = {(x.step, x.worker, x.attempt) for x in lines if x.event == "done"}
    succeeded = [e for e in hist if e["ev"] == "succeeded"]
    accepted = Counter(e["s"] for e in succeeded)
    for step in steps_of(workflow):
        if accepted[step] > 1 or (run.status == "succeeded" and accepted[step] != 1):
            out.append(f"step {step} accepted {accepted[step]} times")
    for e in succeeded:
        key = (e["s"], e["w"], int(e["a"]))
        if key not in done:
            out.append(f"accepted {key} that never finished executing")
        output = outs.get(e["s"]) or {}
        if (output.get("worker"), output.get("attempt")) != (e["w"], int(e["a"])):
            out.append(f"output of {e['s']} is {output}, accepted was {key}")

    # A step fails an attempt only when its input says so (flaky, or hung).
    errors = planned_errors(data)
    for e in hist:
        if e["ev"] in ("retry", "failed") and (e["s"], int(e["a"])) not in errors:
            out.append(f"{e['s']} attempt {e['a']} on {e['w']} {e['ev']} though it should not fail")

    # A step is lost only with its worker (or with the reply Redis's restart lost).
    for e in hist:
        if e["ev"] == "lost" and not _lost_legitimately(o, live, e):
            out.append(f"{e['s']} attempt {e['a']} lost at {e['at']} while {e['w']} was up")

    executed = {x.worker for x in lines}
    if workflow in ("Soft3", "Hang"):
        out += _soft_problems(o, run_id, executed, live)
    elif workflow == "Hard3":
        out += _hard_problems(o, run_id, executed, live)
    if workflow == "Hang":
        out += _hang_problems(o, run_id, live, lines)
    out += _waited_problems(o, run_id, live)
    return out


def _soft_problems(o: Outcome, run_id: str, executed: set[str], live: Liveness) -> list[str]:
    """Every step runs on the pinned worker; the pin changes only by a recorded move,
    and only away from a worker that was down."""
    out: list[str] = []
    pin: str | None = None
    pins: list[str] = []
    moved = False
    after_move: dict[tuple[str, str, int], bool] = {}
    for e in o.history[run_id]:
        ev = e["ev"]
        if ev == "pinned":
            if pin is not None:
                out.append(f"pinned to {e['w']} while pinned to {pin}")
            pin = e["w"]
            pins.append(e["w"])
        elif ev == "reassigned":
            if e["from"] != pin:
                out.append(f"moved from {e['from']} while pinned to {pin}")
            if live.up(e["from"], e["at"]):
                out.append(f"moved from {e['from']} at {e['at']} while it was up (a false death)")
            pin, moved = None, True
        elif ev in ("started", "succeeded"):
            if e["w"] != pin:
                out.append(f"{ev} {e['s']} on {e['w']} while pinned to {pin}")
            if ev == "started":
                after_move[(e["s"], e["w"], int(e["a"]))] = moved
    for e in o.history[run_id]:
        if e["ev"] == "succeeded":
            expected = after_move.get((e["s"], e["w"], int(e["a"])))
            seen = (o.outputs[run_id].get(e["s"]) or {}).get("reassigned")
            if seen != expected:
                out.append(f"ctx.reassigned of {e['s']} was {seen}, expected {expected}")
    if not executed <= set(pins):
        out.append(f"ran on {sorted(executed)}, pinned only to {pins}")
    return out


def _hard_problems(o: Outcome, run_id: str, executed: set[str], live: Liveness) -> list[str]:
    """One worker, ever; a timeout exactly when that worker did not come back in time."""
    out: list[str] = []
    run, hist = o.runs[run_id], o.history[run_id]
    pinned = [e for e in hist if e["ev"] == "pinned"]
    if not pinned and _timed_out_waiting(hist):
        return out  # never pinned: it waited for a worker with its code (_waited_problems)
    if len(pinned) != 1:
        return [f"pinned {len(pinned)} times"]
    owner, pinned_at = pinned[0]["w"], pinned[0]["at"]
    started = {e["w"] for e in hist if e["ev"] == "started"}
    if started | executed != {owner}:
        out.append(f"ran on {sorted(started | executed)}, not only on {owner}")
    if any(e["ev"] == "reassigned" for e in hist):
        out.append("a HARD run was reassigned")

    parks = [(n, e) for n, e in enumerate(hist) if e["ev"] == "parked"]
    for n, park in parks:
        if live.up(owner, park["at"]):
            out.append(f"parked at {park['at']} while {owner} was up (a false death)")
        if run.status == "succeeded" and not any(
            e["ev"] == "unparked" and e["w"] == owner for e in hist[n:]
        ):
            out.append(f"parked at {park['at']} and succeeded without being unparked")
    timed_out = [n for n, e in enumerate(hist) if e["ev"] == "timed out"]
    if run.status == "failed" and _error_type(o, run_id) == "SchedulingTimeout":
        earlier = [(n, e) for n, e in parks if timed_out and n < timed_out[0]]
        if not earlier:
            return [*out, "failed without a park and a timeout in its history"]
        park = earlier[-1][1]
        parked_at, deadline = park["at"], int(park["until"]) / 1000
        if not live.away_before(owner, parked_at):
            out.append(f"parked at {parked_at} though {owner} never went away before")
        # A paused worker is seen beating a moment after it unparked its runs.
        back = live.back_between(owner, parked_at, deadline - 0.5)
        if back:
            out.append(f"timed out though {owner} was back at {back}, before {deadline}")

    # A worker killed while holding the run, never to return under its id: the run failed.
    end = run.finished_at or float("inf")
    for life in live.lives[owner]:
        if life.ended_at and pinned_at < life.ended_at < end:
            returned = any(x.spawned_at > life.ended_at for x in live.lives[owner])
            if not returned and run.status != "failed":
                out.append(f"{owner} never came back after {life.ended_at}, yet {run.status}")
    return out


def _timed_out_waiting(hist: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in hist if e["ev"] == "timed out" and e.get("reason") == "no_worker_with_code"]


def _waited_problems(o: Outcome, run_id: str, live: Liveness) -> list[str]:
    """A run that waited for a worker with its code fails for it only if, when its
    schedule_timeout passed, no worker with the code was up."""
    out = []
    for e in _timed_out_waiting(o.history[run_id]):
        up = [w for w in live.lives if live.has_code(w) and live.up(w, e["at"])]
        if up:
            out.append(f"timed out waiting for code at {e['at']} though {up} had it and were up")
    return out


def _hang_problems(o: Outcome, run_id: str, live: Liveness, lines: list[StepLine]) -> list[str]:
    """A hung attempt fails with StepTimeout (a retry, or the run's failure once its
    retries are spent), its result is never accepted, and its worker keeps its
    capacity: the retry starts on the same worker while the hung thread still runs."""
    out: list[str] = []
    run, hist = o.runs[run_id], o.history[run_id]
    hung = hung_attempts(o.inputs[run_id])
    for e in hist:
        if e["ev"] == "succeeded" and (e["s"], int(e["a"])) in hung:
            out.append(f"the result of hung {e['s']} attempt {e['a']} was accepted")
    if run.status == "failed" and _error_type(o, run_id) == "StepTimeout":
        step = run.error_step
        fails = [e for e in hist if e["ev"] in ("retry", "failed") and e["s"] == step]
        if len(fails) != chaos_app.HANG_RETRIES + 1:
            out.append(f"{step} failed with StepTimeout after {len(fails)} errors")
    for s, a, first, slow, retry in _hung_and_retried(o, run_id, lines):
        if slow.at < retry.at and not _disturbed(o, live, first, retry):
            out.append(
                f"{s} attempt {a + 1} started on pid {slow.pid} only after hung attempt {a} "
                "ended: hung steps took the worker's slots"
            )
    return out


def _hung_and_retried(
    o: Outcome, run_id: str, lines: list[StepLine]
) -> list[tuple[str, int, StepLine, StepLine, StepLine]]:
    """Hung attempts that timed out (a retry event) and whose retry ran in the same
    process: (step, attempt, the hung attempt's "start" and "done" lines, the
    retry's "start")."""
    starts = {(x.step, x.attempt): x for x in lines if x.event == "start"}
    dones = {(x.step, x.attempt): x for x in lines if x.event == "done"}
    out = []
    for e in o.history[run_id]:
        if e["ev"] != "retry":
            continue
        key = (e["s"], int(e["a"]))
        if key not in hung_attempts(o.inputs[run_id]):
            continue
        first, slow = starts.get(key), dones.get(key)
        retry = starts.get((key[0], key[1] + 1))
        if first and slow and retry and retry.pid == first.pid:
            out.append((key[0], key[1], first, slow, retry))
    return out


def _disturbed(o: Outcome, live: Liveness, first: StepLine, retry: StepLine) -> bool:
    """Whether something other than lost capacity may have held the retry back: a
    pause of the worker, Redis away or full, the worker stopping."""
    start, end = first.at + o.mono_offset, retry.at + o.mono_offset
    busy = [(p.stopped_at, p.resumed_at or end) for p in o.pauses if p.worker_id == first.worker]
    busy += [(t, t + o.config.redis_down + 1) for t in o.redis_restarts]
    busy += [(a, b + 1) for a, b in o.memory_outages]
    busy += [(a, b + 1) for a, b in o.redis_pauses]
    busy += [
        (x.stopping_at, end)
        for x in live.lives[first.worker]
        if x.stopping_at and x.pid == first.pid
    ]
    return any(a <= end and start <= b for a, b in busy)


def _poison_problems(o: Outcome, run_id: str, step: str, live: Liveness) -> list[str]:
    """PoisonMessage only after real losses: each loss of the step happened while
    its worker was down, or just after Redis restarted (a reply lost with it)."""
    out = []
    for e in o.history[run_id]:
        if e["ev"] == "lost" and e["s"] == step and not _lost_legitimately(o, live, e):
            out.append(f"PoisonMessage, though {e['w']} was up when it lost {step} at {e['at']}")
    return out


def _lost_legitimately(o: Outcome, live: Liveness, e: dict[str, Any]) -> bool:
    at = e["at"]
    return not live.up(e["w"], at) or any(
        t <= at <= t + o.config.redis_down + LOST_REPLY_WINDOW for t in o.redis_restarts
    )


def _error_type(o: Outcome, run_id: str) -> str | None:
    run = o.runs[run_id]
    error = run.step(run.error_step).error if run.error_step else None
    return error.type if error else None


def _dead_letter_problems(o: Outcome, live: Liveness) -> list[Problem]:
    ours = [d for d in o.dead_letters if d.get("chaos") == GARBAGE]
    out = []
    for d in o.dead_letters:
        if d.get("chaos") == GARBAGE:
            continue
        run_id = d.get("r", "")
        poison = "lost its worker" in d.get("reason", "") and run_id in o.runs
        if not poison or _error_type(o, run_id) != "PoisonMessage":
            out.append(Problem(f"unexpected dead letter: {d}", run_id))
    if len(ours) != o.garbage:
        out.append(Problem(f"{o.garbage} garbage entries added, {len(ours)} dead-lettered"))
    out += [
        Problem(f"dead letter with an unexpected reason: {d['reason']}")
        for d in ours
        if not any(reason in d["reason"] for reason in GARBAGE_REASONS)
    ]
    return out


def counts(o: Outcome) -> dict[str, Any]:
    events = Counter(e["ev"] for hist in o.history.values() for e in hist)
    by_status = Counter(f"{o.plan[r]} {run.status}" for r, run in o.runs.items())
    executions = sum(1 for x in o.lines if x.event == "start")
    skewed = {x.worker_id for x in o.lives if x.skew}
    by_run: dict[str, list[StepLine]] = defaultdict(list)
    for x in o.lines:
        by_run[x.run_id].append(x)
    hung = sum(
        1
        for x in o.lines
        if x.event == "start" and (x.step, x.attempt) in hung_attempts(o.inputs[x.run_id])
    )
    beside = sum(
        slow.at > retry.at
        for run_id, wf in o.plan.items()
        if wf == "Hang"
        for _, _, _, slow, retry in _hung_and_retried(o, run_id, by_run[run_id])
    )
    timeouts = sum(
        e["ev"] in ("retry", "failed") and (e["s"], int(e["a"])) in hung_attempts(o.inputs[run_id])
        for run_id, hist in o.history.items()
        for e in hist
    )
    return {
        "runs": len(o.runs),
        **dict(sorted(by_status.items())),
        "kills": sum(not k.gap for k in o.kills),
        "back under the same id": sum(k.back_as == k.worker_id for k in o.kills if not k.gap),
        "back under a new id": sum(k.back_as != k.worker_id for k in o.kills),
        "redis restarts": len(o.redis_restarts),
        "redis paused (s)": round(sum(b - a for a, b in o.redis_pauses), 1),
        "pauses past the ttl": sum(p.past_ttl(o.config) for p in o.pauses),
        "pauses within the ttl": sum(not p.past_ttl(o.config) for p in o.pauses),
        "declared dead after a pause": sum(len(x.times("was declared dead")) for x in o.lives),
        "skewed workers": len(skewed),
        "steps run with a skewed clock": sum(
            1 for x in o.lines if x.event == "start" and x.worker in skewed
        ),
        "code gaps": len(o.code_gaps),
        "runs that waited for code": sum(
            any(e["ev"] == "waiting" for e in h) for h in o.history.values()
        ),
        "steps adopted by a worker with the code": events["adopted"],
        "timed out waiting for code": sum(len(_timed_out_waiting(h)) for h in o.history.values()),
        "steps run without the sticky code": sum(
            1 for x in o.lines if x.event == "start" and x.worker == PARTIAL_ID
        ),
        "redis memory full (s)": round(sum(b - a for a, b in o.memory_outages), 1),
        "hung attempts": hung,
        "hung attempts timed out": timeouts,
        "retries started beside their hung attempt": beside,
        "workers stopped by hung steps": len(o.exits),
        "graceful stops": len(o.stops),
        "reassignments": events["reassigned"],
        "runs moved": sum(any(e["ev"] == "reassigned" for e in h) for h in o.history.values()),
        "parks": events["parked"],
        "unparks": events["unparked"],
        "HARD timeouts": sum(
            e["ev"] == "timed out" and "reason" not in e for h in o.history.values() for e in h
        ),
        "steps lost with their worker": events["lost"],
        "retries": events["retry"],
        "step executions": executions,
        "results accepted": events["succeeded"],
        "completions refused": sum(t.count(" refused") for t in o.worker_logs.values()),
        "dead letters": len(o.dead_letters),
        "runs hit by a false death": len(falsely_dead(o)),
        "seconds": round(o.seconds, 1),
        "seed": o.seed,
    }
