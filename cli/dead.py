"""``rstick dead``: the dead-letter stream — list, requeue, purge."""

from __future__ import annotations

import re
import time

import click

from rstick.plural import plural

from .errors import BadInput, Fail
from .render import clock, dumps, shorten, table
from .settings import connection_options, current_app

DEAD_ID = re.compile(r"[0-9]+-[0-9]+")  # a stream entry id, as `rstick dead list` shows it


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
@click.option(
    "--json", "as_json", is_flag=True, help='Print one JSON object {"dead_id", "new_id"}.'
)
@connection_options
def requeue(dead_id: str, as_json: bool) -> None:
    """Put dead letter DEAD_ID back on the stream it came from; print its new entry id."""
    if not DEAD_ID.fullmatch(dead_id):
        raise BadInput(
            f"{dead_id!r} is not a dead-letter id (like 1700000000000-0: see `rstick dead list`)"
        )
    try:
        new_id = current_app().client.requeue_dead(dead_id)
    except KeyError:
        raise BadInput(f"no dead letter {dead_id} (see `rstick dead list`)") from None
    except ValueError as exc:
        raise Fail(str(exc.args[0])) from None
    if as_json:
        click.echo(dumps({"dead_id": dead_id, "new_id": new_id}))
    else:
        click.echo(new_id)


@dead.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help='Print one JSON object {"deleted": N}.')
@connection_options
def purge(yes: bool, as_json: bool) -> None:
    """Delete every dead letter."""
    if not yes:
        try:
            confirmed = click.confirm("Delete every dead letter?")
        except click.Abort:  # no one to answer (end of input), or Ctrl-C
            confirmed = False
        if not confirmed:
            raise Fail("not confirmed: nothing deleted (--yes skips the question)")
    deleted = current_app().client.purge_dead()
    if as_json:
        click.echo(dumps({"deleted": deleted}))
    else:
        click.echo(f"deleted {plural(deleted, 'dead letter')}")
