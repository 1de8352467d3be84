"""``rstick reap``: settle dead workers now, as the workers' own reaper would."""

from __future__ import annotations

import asyncio

import click

from rstick.reap_report import ReapReport
from rstick.reaper import Reaper

from .render import dumps
from .settings import connection_options, current_app


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print what was done as one JSON object.")
@connection_options
def reap(as_json: bool) -> None:
    """Settle every dead worker once: move its SOFT runs, park its HARD runs,
    fail HARD runs past their deadline, re-dispatch its plain jobs.

    Workers do this by themselves under a leader lock; this is for operators
    who do not want to wait, and it is safe to run beside them.
    """
    app = current_app()

    async def once() -> ReapReport:
        try:
            return await Reaper(app).reap(lead=False)
        finally:
            await app.aclose()

    report = asyncio.run(once())
    if as_json:
        click.echo(dumps(report.to_json()))
        return
    click.echo(report.summary())
    for action, ids in sorted(report.runs.items()):
        for run_id in ids:
            click.echo(f"  {action:<13} {run_id}")
