"""``rstick dead``: the dead-letter stream — list, requeue, purge."""

from __future__ import annotations

import time

import click

from .errors import Fail
from .render import clock, dumps, shorten, table
from .settings import connection_options, current_app


@click.group()
def dead() -> None:
    """Messages no worker could take: malformed entries, poison steps."""


@dead.command("list")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="At most this many, newest first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@connection_options
def list_(limit: int, as_json: bool) -> None:
    """List dead letters with their reason, newest first."""
    letters = current_app().client.dead_letters(limit)
    if as_json:
        click.echo(dumps(letters))
        return
    if not letters:
        click.echo("no dead letters", err=True)
        return
    now = time.time()
    click.echo(
        table(
            ["ID", "AT", "REASON", "RUN", "STEP", "FROM"],
            [
                [
                    d["id"],
                    clock(int(d["id"].split("-")[0]) / 1000, now),
                    shorten(d.get("reason", ""), 60),
                    d.get("r"),
                    d.get("s"),
                    d.get("stream"),
                ]
                for d in letters
            ],
        )
    )


@dead.command()
@click.argument("dead_id")
@connection_options
def requeue(dead_id: str) -> None:
    """Put dead letter DEAD_ID back on the stream it came from."""
    try:
        new_id = current_app().client.requeue_dead(dead_id)
    except (KeyError, ValueError) as exc:
        raise Fail(str(exc.args[0])) from None
    click.echo(new_id)


@dead.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@connection_options
def purge(yes: bool) -> None:
    """Delete every dead letter."""
    if not yes:
        click.confirm("Delete every dead letter?", abort=True)
    click.echo(f"deleted {current_app().client.purge_dead()} dead letters")
