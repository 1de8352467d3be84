"""The ``rstick`` command: a group of thin commands, each in its own module.

A command from another module joins with one line: ``cli.add_command(command)``.
"""

from __future__ import annotations

import click

from .dead import dead
from .demo import demo
from .enqueue import emit, enqueue
from .errors import RstickGroup
from .reap import reap
from .runs import runs
from .settings import NAMESPACE_HELP, REDIS_HELP, Settings
from .worker import worker
from .workers import workers


@click.group(cls=RstickGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--redis", "redis_url", metavar="URL", help=REDIS_HELP)
@click.option("--namespace", metavar="NS", help=NAMESPACE_HELP)
@click.version_option(package_name="rstick")
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, namespace: str | None) -> None:
    """rstick: sticky workflow runs and fast jobs on Redis Streams.

    --redis and --namespace work here or on any command.
    """
    ctx.obj = Settings(redis_url, namespace)


cli.add_command(worker)
cli.add_command(enqueue)
cli.add_command(emit)
cli.add_command(runs)
cli.add_command(workers)
cli.add_command(reap)
cli.add_command(dead)
cli.add_command(demo)
