"""``rstick demo``: the sticky file-processing example on real worker processes.

The demo runs ``examples/sticky_files`` from the repository, which is not part
of the installed package: it needs a clone installed with ``pip install -e``
(the README's install command), and says so otherwise. Its workers import the
example with the repository on their PYTHONPATH, from any current folder.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import click
from redis.exceptions import RedisError

from rstick.credentials import hide_password
from rstick.defaults import REDIS_URL as DEFAULT_URL
from rstick.embedded import RedisServer, RedisServerError, probe, redis_available

from .errors import Fail, redis_failure
from .settings import Settings, check_url

GIVEN_REDIS_TIMEOUT = 2.0  # seconds the Redis the demo is given has to answer

EXAMPLE = "examples.sticky_files.start"


def find_example() -> ModuleType:
    """The example's starter, imported from the repository this CLI was installed from."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "examples" / "sticky_files" / "workflow.py").is_file():
        raise Fail(
            "the demo runs examples/sticky_files from a clone of the repository: "
            "git clone the project, then `pip install -e '.[embedded]'` in it"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(EXAMPLE)


@contextmanager
def demo_redis(url: str | None) -> Iterator[tuple[str, str]]:
    """(url, where it comes from): the URL given, else a local Redis, else an embedded
    one that lives as long as the demo."""
    if url:
        check_url(url)
        client = probe(url, GIVEN_REDIS_TIMEOUT)
        try:
            client.ping()  # at once, rather than the workers' 30 s wait to register
        except RedisError as exc:
            raise Fail(redis_failure(url, exc) + " (from RSTICK_REDIS_URL / --redis)") from None
        finally:
            client.close()
        yield url, "from RSTICK_REDIS_URL / --redis"
    elif redis_available(DEFAULT_URL):
        yield DEFAULT_URL, "the local Redis"
    else:
        with RedisServer() as server:
            yield server.url, f"an embedded redis-server {server.version}, stopped at the end"


def progress_printer(tty: bool) -> Callable[[int, int], None]:
    """``3/10 runs done``: rewritten in place on a terminal, one line per change otherwise."""

    def show(done: int, total: int) -> None:
        if tty:
            click.echo(f"\r{done}/{total} runs done", nl=done == total)
        else:
            click.echo(f"{done}/{total} runs done")

    return show


@click.command()
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=5,
    show_default=True,
    help="Worker processes to start.",
)
@click.option(
    "--runs",
    type=click.IntRange(1, 10_000),
    default=10,
    show_default=True,
    help="FileProcessing runs to enqueue.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.pass_context
def demo(ctx: click.Context, workers: int, runs: int, as_json: bool) -> None:
    """Run the sticky file-processing example on local worker processes.

    Starts WORKERS `rstick worker` processes in a fresh namespace, runs the
    three-step FileProcessing workflow (download a file to the worker's disk,
    process it from there, clean up) and shows which worker ran each step.
    Uses RSTICK_REDIS_URL when set, else Redis on localhost:6379, else starts
    an embedded redis-server. Stops its processes and deletes its files at the
    end, also on Ctrl-C. Exits 1 if a run failed or left its worker.
    """
    example = find_example()
    settings = ctx.find_object(Settings)
    given = (settings.redis_url if settings else None) or os.environ.get("RSTICK_REDIS_URL")
    try:
        with demo_redis(given) as (url, where):
            if not as_json:
                click.echo(
                    f"Starting {workers} workers on {hide_password(url)} ({where}); "
                    f"{runs} runs of FileProcessing, sticky SOFT."
                )
            progress = None if as_json else progress_printer(sys.stdout.isatty())
            report = example.run_example(url, workers=workers, runs=runs, progress=progress)
    except KeyboardInterrupt:
        click.echo("\nrstick: interrupted: workers stopped, files deleted", err=True)
        ctx.exit(130)
    except (TimeoutError, RuntimeError, RedisServerError) as exc:
        raise Fail(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(example.table(report))
        for run in report.runs:
            if run.error:
                click.echo(f"{run.run_id}: {run.error}")
        click.echo(report.summary())
    ctx.exit(0 if report.ok else 1)
