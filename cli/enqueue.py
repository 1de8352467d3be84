"""``rstick enqueue`` and ``rstick emit``: start runs from the command line."""

from __future__ import annotations

import json
from typing import Any, NoReturn

import click
from redis.exceptions import RedisError

from rstick import (
    PayloadTooLarge,
    ResultTimeout,
    RstickError,
    RunCancelled,
    RunFailed,
    RunRef,
    SerializationError,
    TaskInputError,
    UnknownWorkflow,
)
from rstick.limits import MAX_SECONDS, optional_seconds, seconds

from .errors import INTERRUPTED, BadInput, Fail
from .render import dumps
from .settings import connection_options, current_app

KNOWN_SHOWN = 20  # workflows an unknown name's error lists


def parse_json(text: str | None, option: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{option} is not valid JSON: {exc}") from None


@click.command()
@click.argument("workflow")
@click.option("--input", "input_json", metavar="JSON", help="The run's input, as JSON.")
@click.option(
    "--delay",
    type=float,
    default=0.0,
    metavar="S",
    help=f"Start the run after this many seconds (at most {MAX_SECONDS}, a year).",
)
@click.option(
    "--run-id",
    metavar="ID",
    help="Use this run id; enqueueing the same id again starts nothing new.",
)
@click.option("--wait", is_flag=True, help="Wait for the run to finish and print its outputs.")
@click.option(
    "--timeout",
    type=float,
    metavar="S",
    help="With --wait, give up after this many seconds.",
)
@click.option(
    "--json", "as_json", is_flag=True, help='Print one JSON object {"run_id", "status", "result"}.'
)
@connection_options
def enqueue(
    workflow: str,
    input_json: str | None,
    delay: float,
    run_id: str | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Start a run of WORKFLOW and print its id.

    With --wait, wait for the run and print its outputs as JSON.
    The workflow need not be importable here: its definition is the one the
    workers registered in Redis. Exits 1 if the run failed or --timeout passed.
    """
    if timeout is not None and not wait:
        raise BadInput("--timeout only applies with --wait")
    try:  # the library's own bounds, one line each
        seconds("--delay", delay)
        optional_seconds("--timeout", timeout, bounded=False)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    data = parse_json(input_json, "--input")
    app = current_app()
    try:
        ref = app.enqueue(workflow, data, run_id=run_id, delay=delay)
    except UnknownWorkflow as exc:
        known = sorted(k.decode() for k in app.client.redis.hkeys(app.keys.workflows))
        hint = (
            f"; workers registered: {', '.join(known[:KNOWN_SHOWN])}"
            + (", ..." if len(known) > KNOWN_SHOWN else "")
            if known
            else "; no worker has registered a workflow here (is one running, on this "
            "--redis and --namespace?)"
        )
        raise BadInput(f"{exc}{hint}") from None
    except (SerializationError, PayloadTooLarge, TaskInputError) as exc:  # e.g. an int > 64 bits
        raise BadInput(f"--input: {exc}") from None
    if not wait:
        if as_json:
            click.echo(dumps({"run_id": ref.run_id, "status": ref.status().value, "result": None}))
        else:
            click.echo(ref.run_id)
        return
    if not as_json:
        click.echo(ref.run_id)
    try:
        report, failure = wait_for(ref, timeout)
    except KeyboardInterrupt:
        stop_waiting(ref, as_json)
    if as_json:
        click.echo(dumps(report))
        if failure is not None:
            raise click.exceptions.Exit(1)
    elif failure is None:
        click.echo(dumps(report["result"]))
    else:
        if traceback := report.get("error", {}).get("traceback"):
            click.echo(traceback.rstrip(), err=True)
        raise Fail(failure)


def stop_waiting(ref: RunRef, as_json: bool) -> NoReturn:
    """Ctrl-C while waiting: the run goes on without us; say which run, where it is,
    and how to follow it, then exit 130."""
    try:
        status = ref.status().value
    except (RedisError, RstickError):  # Redis went away meanwhile: the id still helps
        status = "unknown"
    if as_json:
        click.echo(dumps({"run_id": ref.run_id, "status": status}))
    click.echo(
        f"rstick: interrupted; run {ref.run_id} is {status}: "
        f"follow it with `rstick runs show {ref.run_id}`",
        err=True,
    )
    raise click.exceptions.Exit(INTERRUPTED)


def wait_for(ref: RunRef, timeout: float | None) -> tuple[dict[str, Any], str | None]:
    """The ``--json`` report of a waited-for run, and why it is a failure (None if not)."""
    report: dict[str, Any] = {"run_id": ref.run_id, "status": "succeeded", "result": None}
    try:
        report["result"] = ref.result(timeout=timeout)
        return report, None
    except RunFailed as exc:
        report["status"] = "failed"
        report["error"] = {
            "step": exc.step,
            "type": exc.error_type,
            "message": exc.error_message,
            "traceback": exc.traceback,
        }
        return report, str(exc)
    except RunCancelled as exc:
        report["status"] = "cancelled"
        return report, str(exc)
    except ResultTimeout as exc:
        report["status"] = ref.status().value
        report["error"] = {"type": "ResultTimeout", "message": str(exc)}
        return report, str(exc)


@click.command()
@click.argument("event")
@click.option("--data", "data_json", metavar="JSON", help="The event's data, as JSON.")
@click.option(
    "--key",
    metavar="K",
    help="Idempotency key: emitting the same event and key again starts nothing new.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print one JSON object {"event", "runs": [{"run_id", "workflow"}]}.',
)
@connection_options
def emit(event: str, data_json: str | None, key: str | None, as_json: bool) -> None:
    """Start the runs of the workflows that listen to EVENT.

    Prints the id and workflow of each run started.
    An event nobody listens to starts no run; that is reported, not an error.
    """
    data = parse_json(data_json, "--data")
    app = current_app()
    try:
        refs = app.emit(event, data, key=key)
    except (SerializationError, PayloadTooLarge, TaskInputError) as exc:
        raise BadInput(f"--data: {exc}") from None
    except ValueError as exc:  # an event name the layout cannot hold
        raise BadInput(str(exc)) from None
    runs = [{"run_id": ref.run_id, "workflow": ref.get().workflow} for ref in refs]
    if as_json:
        click.echo(dumps({"event": event, "runs": runs}))
    elif not runs:
        click.echo(f"no workflow listens to {event!r}: no run started", err=True)
    else:
        for run in runs:
            click.echo(f"{run['run_id']}  {run['workflow']}")
