"""Judge a chaos run (``chaos_storm.Outcome``): the promises of DESIGN.md sections 4 and 5.

``verify`` returns one line per broken promise (none: all kept); ``counts`` says
how much chaos there was. Both read only what the storm recorded: the runs and
their histories in Redis, the step log the steps wrote, and each worker
process's life (spawn, "started" in its log, SIGKILL).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from .chaos_harness import Life
from .chaos_storm import GARBAGE, Outcome

STEPS = ("a", "b", "c")
GARBAGE_REASONS = {"malformed entry: needs fields r, s, a, e, w"}


@dataclass(frozen=True)
class Problem:
    """A broken promise, and the run it concerns ("" when it is not about one run)."""

    text: str
    run_id: str = ""

    def __str__(self) -> str:
        return self.text


def verify(o: Outcome) -> list[Problem]:
    problems: list[Problem] = []
    lives: dict[str, list[Life]] = defaultdict(list)
    for life in o.lives:
        lives[life.worker_id].append(life)
    starts = Counter((x.run_id, x.step, x.attempt) for x in o.lines if x.event == "start")
    problems += [
        Problem(f"{run_id}/{step} attempt {attempt} ran {n} times", run_id)
        for (run_id, step, attempt), n in starts.items()
        if n > 1
    ]
    for run_id, workflow in o.plan.items():
        problems += [
            Problem(f"{workflow} {run_id}: {text}", run_id)
            for text in _run_problems(o, run_id, lives)
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
    problems += _dead_letter_problems(o)
    if o.lingering:
        problems.append(Problem(f"dead workers still registered: {o.lingering}"))
    return problems


def falsely_dead(o: Outcome) -> set[str]:
    """Runs parked or moved away from a worker that was alive at the time."""
    lives: dict[str, list[Life]] = defaultdict(list)
    for life in o.lives:
        lives[life.worker_id].append(life)
    return {
        run_id
        for run_id, hist in o.history.items()
        for e in hist
        if (e["ev"] == "parked" and alive_at(lives[e["w"]], e["at"]))
        or (e["ev"] == "reassigned" and alive_at(lives[e["from"]], e["at"]))
    }


def _run_problems(o: Outcome, run_id: str, lives: dict[str, list[Life]]) -> list[str]:
    run, hist, outs = o.runs[run_id], o.history[run_id], o.outputs[run_id]
    workflow = o.plan[run_id]
    out: list[str] = []
    error = run.step(run.error_step).error if run.error_step else None
    if workflow == "Hard3":
        if run.status == "failed" and (error is None or error.type != "SchedulingTimeout"):
            out.append(f"failed with {error}, not SchedulingTimeout")
        elif run.status not in ("succeeded", "failed"):
            out.append(f"ended {run.status}")
    elif run.status != "succeeded":
        out.append(f"ended {run.status}: {error}")

    # A step's result is accepted at most once, and it came from a real execution.
    done = {
        (x.step, x.worker, x.attempt) for x in o.lines if x.run_id == run_id and x.event == "done"
    }
    succeeded = [e for e in hist if e["ev"] == "succeeded"]
    accepted = Counter(e["s"] for e in succeeded)
    for step in STEPS:
        if accepted[step] > 1 or (run.status == "succeeded" and accepted[step] != 1):
            out.append(f"step {step} accepted {accepted[step]} times")
    for e in succeeded:
        key = (e["s"], e["w"], int(e["a"]))
        if key not in done:
            out.append(f"accepted {key} that never finished executing")
        output = outs.get(e["s"]) or {}
        if (output.get("worker"), output.get("attempt")) != (e["w"], int(e["a"])):
            out.append(f"output of {e['s']} is {output}, accepted was {key}")

    executed = {x.worker for x in o.lines if x.run_id == run_id}
    if workflow == "Soft3":
        out += _soft_problems(o, run_id, executed, lives)
    elif workflow == "Hard3":
        out += _hard_problems(o, run_id, executed, lives)
    return out


def _soft_problems(
    o: Outcome, run_id: str, executed: set[str], lives: dict[str, list[Life]]
) -> list[str]:
    """Every step runs on the pinned worker; the pin changes only by a recorded move,
    and only away from a worker that was killed."""
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
            if alive_at(lives[e["from"]], e["at"]):
                out.append(f"moved from {e['from']} while it was alive (a false death)")
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


def _hard_problems(
    o: Outcome, run_id: str, executed: set[str], lives: dict[str, list[Life]]
) -> list[str]:
    """One worker, ever; a timeout exactly when that worker did not come back in time."""
    out: list[str] = []
    run, hist = o.runs[run_id], o.history[run_id]
    pinned = [e for e in hist if e["ev"] == "pinned"]
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
        if alive_at(lives[owner], park["at"]):
            out.append(f"parked at {park['at']} while {owner} was alive (a false death)")
        if run.status == "succeeded" and not any(
            e["ev"] == "unparked" and e["w"] == owner for e in hist[n:]
        ):
            out.append(f"parked at {park['at']} and succeeded without being unparked")
    timed_out = [n for n, e in enumerate(hist) if e["ev"] == "timed out"]
    if run.status == "failed":
        earlier = [(n, e) for n, e in parks if timed_out and n < timed_out[0]]
        if not earlier:
            return [*out, "failed without a park and a timeout in its history"]
        park = earlier[-1][1]
        parked_at, deadline = park["at"], int(park["until"]) / 1000
        if not any(x.killed_at and x.killed_at <= parked_at for x in lives[owner]):
            out.append(f"parked at {parked_at} though {owner} was never killed before")
        back = [
            x.ready_at for x in lives[owner] if x.ready_at and parked_at < x.ready_at < deadline
        ]
        if back:
            out.append(f"timed out though {owner} was back at {back[0]}, before {deadline}")

    # A worker killed while holding the run, never to return under its id: the run failed.
    end = run.finished_at or float("inf")
    for life in lives[owner]:
        if life.killed_at and pinned_at < life.killed_at < end:
            returned = any(x.spawned_at > life.killed_at for x in lives[owner])
            if not returned and run.status != "failed":
                out.append(f"{owner} never came back after {life.killed_at}, yet {run.status}")
    return out


def _dead_letter_problems(o: Outcome) -> list[Problem]:
    ours = [d for d in o.dead_letters if d.get("chaos") == GARBAGE]
    out = [
        Problem(f"unexpected dead letter: {d}", d.get("r", ""))
        for d in o.dead_letters
        if d.get("chaos") != GARBAGE
    ]
    if len(ours) != o.garbage:
        out.append(Problem(f"{o.garbage} garbage entries added, {len(ours)} dead-lettered"))
    out += [
        Problem(f"dead letter with an unexpected reason: {d['reason']}")
        for d in ours
        if not any(reason in d["reason"] for reason in GARBAGE_REASONS)
    ]
    return out


def alive_at(lives: list[Life], at: float) -> bool:
    """Whether a process of this worker id had registered and was not yet killed at ``at``."""
    return any(
        x.ready_at is not None and x.ready_at <= at and (x.killed_at is None or x.killed_at > at)
        for x in lives
    )


def counts(o: Outcome) -> dict[str, Any]:
    events = Counter(e["ev"] for hist in o.history.values() for e in hist)
    by_status = Counter(f"{o.plan[r]} {run.status}" for r, run in o.runs.items())
    executions = sum(1 for x in o.lines if x.event == "start")
    return {
        "runs": len(o.runs),
        **dict(sorted(by_status.items())),
        "kills": len(o.kills),
        "back under the same id": sum(k.back_as == k.worker_id for k in o.kills),
        "back under a new id": sum(k.back_as != k.worker_id for k in o.kills),
        "redis restarts": len(o.redis_restarts),
        "reassignments": events["reassigned"],
        "runs moved": sum(any(e["ev"] == "reassigned" for e in h) for h in o.history.values()),
        "parks": events["parked"],
        "unparks": events["unparked"],
        "HARD timeouts": events["timed out"],
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
