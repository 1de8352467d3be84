"""``rstick runs show`` and ``rstick runs list``: what happened to a run, and which ran."""

from __future__ import annotations

import time
from typing import Any

import click

from rstick import Run, RunNotFound, RunStatus, StepState

from .errors import BadInput, Fail
from .render import age, clock, dumps, duration, fields, shorten, table
from .run_ids import resolve_run_id
from .settings import connection_options, current_app

HISTORY_SHOWN = 12  # the last events are the ones that say why a run ended as it did
# Short field names of history events, as the scripts write them.
EVENT_FIELDS = {"ev": "event", "s": "step", "w": "worker", "a": "attempt", "wf": "workflow"}
EVENT_TIMES = ("due", "until")  # fields holding a time in ms
EVENT_COUNTS = ("attempt", "epoch")  # fields holding an integer


@click.group()
def runs() -> None:
    """Show one run in detail, or list recent runs."""


@runs.command()
@click.argument("run_id")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the run, its steps and its history as one JSON object.",
)
@connection_options
def show(run_id: str, as_json: bool) -> None:
    """Show a run in detail. RUN_ID may be a unique prefix of the run's id.

    Workflow, status, sticky strategy, pinned worker, one row per step
    (status, worker, attempts, times, error) and the last history events.
    """
    client = current_app().client
    run_id = resolve_run_id(client, run_id)
    try:
        run = client.get_run(run_id)
    except RunNotFound as exc:  # expired since it was resolved
        raise BadInput(str(exc)) from None
    history = client.history(run_id)
    parent_status = None
    if run.parent:
        try:
            parent_status = client.get_run(run.parent.split("/")[0]).status.value
        except RunNotFound:
            parent_status = "expired"
    if as_json:
        click.echo(
            dumps(
                {
                    **run.to_json(),
                    "parent_status": parent_status,
                    "history": [event_json(e) for e in history],
                }
            )
        )
        return
    now = time.time()
    click.echo(fields(summary(run, now, parent_status)))
    click.echo()
    click.echo(
        table(
            ["STEP", "STATUS", "WORKER", "ATTEMPTS", "STARTED", "FINISHED", "DURATION", "ERROR"],
            [step_row(s, now) for s in run.steps],
        )
    )
    if history:
        shown = history[-HISTORY_SHOWN:]
        click.echo()
        click.echo(
            f"history (last {len(shown)} of {len(history)}):"
            if len(shown) < len(history)
            else "history:"
        )
        for event in shown:
            click.echo(f"  {event_line(event, now)}")


def summary(run: Run, now: float, parent_status: str | None = None) -> list[tuple[str, Any]]:
    status = run.status.value
    if run.error_step:
        error = run.step(run.error_step).error
        detail = f": {shorten(f'{error.type}: {error.message}', 80)}" if error else ""
        status += f" (step {run.error_step!r}{detail})"
    ran = duration(run.finished_at - run.created_at) if run.finished_at and run.created_at else None
    return [
        ("run", run.run_id),
        ("workflow", run.workflow + (" (task)" if run.is_task else "")),
        ("status", status),
        ("sticky", run.sticky.value + (" (moved from a lost worker)" if run.reassigned else "")),
        ("worker", run.worker or "-"),
        ("queue", run.queue or None),
        ("parent", f"{run.parent} ({parent_status})" if run.parent else None),
        ("children", " ".join(run.children) or None),
        (
            "parked",
            f"until {clock(run.parked_until, now)} ({age(run.parked_until, now)})"
            if run.parked_until
            else None,
        ),
        (
            "created",
            f"{clock(run.created_at, now)} ({age(run.created_at, now)})"
            if run.created_at
            else None,
        ),
        ("duration", ran),
    ]


def step_row(step: StepState, now: float) -> list[Any]:
    error = shorten(f"{step.error.type}: {step.error.message}") if step.error else None
    return [
        step.name,
        step.status.value,
        step.worker,
        step.attempts,
        clock(step.started_at, now),
        clock(step.finished_at, now),
        duration(step.duration),
        error,
    ]


def readable(event: dict[str, Any]) -> dict[str, Any]:
    """A history event with its fields' full names (``ev`` -> ``event``, ``s`` -> ``step``)."""
    return {EVENT_FIELDS.get(k, k): v for k, v in event.items()}


def event_json(event: dict[str, Any]) -> dict[str, Any]:
    """A history event for ``--json``: full names, counts as numbers, times in seconds
    since the epoch like every other time there."""
    out = readable(event)
    for key, value in out.items():
        if not (isinstance(value, str) and value.isdigit()):
            continue
        if key in EVENT_COUNTS:
            out[key] = int(value)
        elif key in EVENT_TIMES:
            out[key] = int(value) / 1000
    return out


def event_line(event: dict[str, Any], now: float) -> str:
    """``12:00:01.234  started  step=a worker=w1 attempt=1``"""
    parts = []
    for key, value in readable(event).items():
        if key in ("at", "event"):
            continue
        if key in EVENT_TIMES and str(value).isdigit():
            value = clock(int(value) / 1000, now)
        parts.append(f"{key}={value}")
    return f"{clock(event.get('at'), now)}  {event.get('ev', '?'):<10} {' '.join(parts)}".rstrip()


@runs.command()
@click.argument("run_id")
@click.option(
    "--keep-children",
    is_flag=True,
    help="Cancel this run only; its child runs (and theirs) run on.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print one JSON object {"run_id", "status", "cancelled": [ids]}.',
)
@connection_options
def cancel(run_id: str, keep_children: bool, as_json: bool) -> None:
    """Cancel a run that has not finished, and every unfinished run it spawned
    (children, grandchildren...): queued steps are dropped, running ones finish
    and their results are ignored.

    RUN_ID may be a unique prefix of the run's id. Exits 2 if there is no such run,
    1 if it had already ended (its unfinished descendants are cancelled all the
    same).
    """
    client = current_app().client
    run_id = resolve_run_id(client, run_id)
    try:
        done = client.cancel(run_id, children=not keep_children)
    except RunNotFound as exc:
        raise BadInput(str(exc)) from None
    descendants = [i for i in done.cancelled if i != run_id]
    if as_json:
        click.echo(dumps(done.to_json()))
    if run_id not in done.cancelled:
        also = f" (cancelled {len(descendants)} unfinished descendants)" if descendants else ""
        raise Fail(f"run {run_id} already ended: {done.status.value}{also}")
    if not as_json:
        click.echo(f"cancelled {run_id}")
        for child in descendants:
            click.echo(f"cancelled {child} (descendant)")


@runs.command("list")
@click.option(
    "--status", type=click.Choice([s.value for s in RunStatus]), help="Only runs in this status."
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="At most this many runs.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of runs.")
@connection_options
def list_(status: str | None, limit: int, as_json: bool) -> None:
    """List recent runs, newest first."""
    found = current_app().client.list_runs(status=status, limit=limit)
    if as_json:
        click.echo(dumps([r.to_json() for r in found]))
        return
    if not found:
        click.echo("no runs" + (f" with status {status}" if status else ""), err=True)
        return
    now = time.time()
    click.echo(
        table(
            ["RUN", "WORKFLOW", "STATUS", "STICKY", "WORKER", "CREATED", "DURATION"],
            [
                [
                    r.run_id,
                    r.workflow,
                    r.status.value,
                    r.sticky.value,
                    r.worker,
                    clock(r.created_at, now),
                    duration(r.finished_at - r.created_at)
                    if r.finished_at and r.created_at
                    else None,
                ]
                for r in found
            ],
        )
    )
