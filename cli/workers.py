"""``rstick workers``: who is serving, and how busy."""

from __future__ import annotations

import time

import click

from .render import age, dumps, table
from .settings import connection_options, current_app


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of workers.")
@connection_options
def workers(as_json: bool) -> None:
    """List the workers and how busy they are.

    Shows id, host, pid, queues, concurrency, running steps, pinned runs,
    last heartbeat and whether the worker is alive.
    """
    found = current_app().list_workers()
    if as_json:
        click.echo(dumps([w.to_json() for w in found]))
        return
    if not found:
        click.echo("no workers", err=True)
        return
    now = time.time()
    click.echo(
        table(
            [
                "WORKER",
                "HOST",
                "PID",
                "QUEUES",
                "CONCURRENCY",
                "RUNNING",
                "PINNED",
                "HEARTBEAT",
                "ALIVE",
            ],
            [
                [
                    w.worker_id,
                    w.host,
                    w.pid,
                    ",".join(w.queues),
                    w.concurrency,
                    w.running,
                    w.pinned,
                    age(w.last_heartbeat, now),
                    "yes" if w.alive else "no",
                ]
                for w in found
            ],
        )
    )
