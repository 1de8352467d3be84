"""``rstick worker MODULE:APP``: import the user's app and serve its workflows."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback

import click

from rstick import LoginFailed, Rstick, Worker, WorkerIdInUse, defaults
from rstick.limits import seconds
from rstick.preflight import UnsafeRedis

from .errors import BadInput, Fail
from .settings import Settings, check_url, connection_options


def load_app(spec: str) -> Rstick:
    """The Rstick object named by ``module.path:attribute``, imported from the current folder."""
    module_name, colon, attr = spec.partition(":")
    if not (module_name and colon and attr):
        raise BadInput(f"expected MODULE:APP (for example examples.sticky_dag:app), got {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like uvicorn and arq: run from the project's folder
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name + ".").startswith(exc.name + "."):
            raise BadInput(
                f"cannot import {module_name!r}: no module named {exc.name!r} "
                f"(looked in {os.getcwd()} and sys.path)"
            ) from None
        click.echo(traceback.format_exc().rstrip(), err=True)
        raise BadInput(f"error while importing {module_name!r}: {exc}") from None
    except Exception as exc:  # the user's module is broken: its traceback says where
        click.echo(traceback.format_exc().rstrip(), err=True)
        raise BadInput(
            f"error while importing {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise BadInput(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, Rstick):
        raise BadInput(f"{spec!r} is a {type(obj).__name__}, not an Rstick app")
    return obj


def setup_logging(worker_id: str, verbose: bool) -> None:
    """One line per event on stderr, with the time and the worker's id."""
    handler = logging.StreamHandler()
    safe_id = worker_id.replace("%", "%%")
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s.%(msecs)03d %(levelname)-7s [{safe_id}] %(name)s: %(message)s",
            datefmt="%Y-%m-%d %H:%M:%S",
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("rstick").setLevel(logging.DEBUG if verbose else logging.INFO)


@click.command()
@click.argument("app_spec", metavar="MODULE:APP")
@click.option(
    "--worker-id",
    metavar="ID",
    help="Stable id; a HARD run waits for a worker with its id to come back. "
    "[default: host-pid-random]",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=defaults.CONCURRENCY,
    show_default=True,
    help="Steps run at once.",
)
@click.option(
    "--queue",
    "-q",
    "queues",
    multiple=True,
    metavar="Q",
    help="Shared queue to read (repeatable). [default: the queues of the app's workflows]",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=defaults.DRAIN_TIMEOUT,
    show_default=True,
    metavar="S",
    help="On SIGINT/SIGTERM, wait this long for running steps.",
)
@click.option(
    "--heartbeat",
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    help="Seconds between heartbeats. [default: the app's, 2]",
)
@click.option(
    "--worker-ttl",
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    help="A worker is dead after this long without a heartbeat. [default: the app's, 10]",
)
@click.option(
    "--max-hung",
    type=click.IntRange(min=0),
    metavar="N",
    help="Steps that ignore their timeout and run on (threads cannot be killed) the worker "
    "tolerates; one more and it drains and exits 1, for its supervisor to restart it. "
    "[default: --concurrency]",
)
@click.option(
    "--allow-eviction",
    is_flag=True,
    help="Start even if Redis evicts any key when full (maxmemory-policy allkeys-*): "
    "runs may then vanish.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug events too.")
@connection_options
@click.pass_context
def worker(
    ctx: click.Context,
    app_spec: str,
    worker_id: str | None,
    concurrency: int,
    queues: tuple[str, ...],
    drain_timeout: float,
    heartbeat: float | None,
    worker_ttl: float | None,
    max_hung: int | None,
    allow_eviction: bool,
    verbose: bool,
) -> None:
    """Serve the workflows of an app until SIGINT or SIGTERM.

    MODULE:APP names the Rstick object, e.g. examples.sticky_dag:app.
    MODULE is imported from the current folder. On the first signal the worker
    stops taking work, finishes its running steps and exits 0; a second signal
    exits at once. It exits 1 when it stopped itself: Redis refused its login,
    another process took its --worker-id over, or too many steps hung (--max-hung).
    """
    settings = ctx.ensure_object(Settings)
    app = load_app(app_spec)
    if not app.workflows:
        raise BadInput(f"{app_spec!r} defines no workflows: nothing to serve")
    # Settings given here win over the app's own; the client is remade to use them.
    app.redis_url = settings.redis_url or app.redis_url
    app.namespace = settings.namespace or app.namespace
    try:  # click takes "inf" and "nan" for floats
        if heartbeat is not None:
            app.heartbeat = seconds("--heartbeat", heartbeat, positive=True)
        if worker_ttl is not None:
            app.worker_ttl = seconds("--worker-ttl", worker_ttl, positive=True)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    if app.worker_ttl <= app.heartbeat:
        raise BadInput(
            f"--worker-ttl ({app.worker_ttl:g}s) must be longer than --heartbeat "
            f"({app.heartbeat:g}s)"
        )
    app.close()
    settings.url_in_use = str(app.redis_url)
    check_url(settings.url_in_use)
    try:
        serving = Worker(
            app,
            worker_id=worker_id,
            concurrency=concurrency,
            queues=list(queues) or None,
            drain_timeout=drain_timeout,
            max_hung=max_hung,
            allow_eviction=allow_eviction,
        )
    except ValueError as exc:  # a worker id or queue name the layout cannot hold
        raise BadInput(str(exc)) from None
    setup_logging(serving.id(), verbose)
    try:
        code = serving.run()
    except (LoginFailed, WorkerIdInUse) as exc:
        raise Fail(str(exc)) from None
    except UnsafeRedis as exc:
        raise BadInput(str(exc)) from None
    if code:
        raise click.exceptions.Exit(code)
