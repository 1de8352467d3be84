"""Where the CLI finds Redis: ``--redis`` / ``--namespace``, and the app they make."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click

from rstick import Rstick
from rstick.credentials import hide_password
from rstick.defaults import REDIS_URL as DEFAULT_URL

F = TypeVar("F", bound=Callable[..., Any])

SCHEMES = ("redis", "rediss", "unix")


@dataclass
class Settings:
    """What the command line said; None means "the app's own setting, or its env var"."""

    redis_url: str | None = None
    namespace: str | None = None
    url_in_use: str | None = None  # the URL actually connected to, for error messages

    @property
    def url(self) -> str:
        return (
            self.url_in_use or self.redis_url or os.environ.get("RSTICK_REDIS_URL") or DEFAULT_URL
        )


def make_app(redis_url: str | None, namespace: str | None) -> Rstick:
    """The app the client commands use: it knows no workflows, it reads what workers registered.

    Tests replace this function to bind the CLI to fakeredis.
    """
    return Rstick(redis_url=redis_url, namespace=namespace)


def current_app() -> Rstick:
    """An app for the running command, closed when the command ends."""
    ctx = click.get_current_context()
    settings = ctx.ensure_object(Settings)
    app = make_app(settings.redis_url, settings.namespace)
    settings.url_in_use = str(app.redis_url)
    check_url(settings.url_in_use)
    ctx.call_on_close(app.close)
    return app


def check_url(url: str) -> None:
    """A Redis URL redis-py can read, else BadParameter (exit 2) saying what is wrong:
    redis-py raises a bare ValueError for a bad port and reads a bad db as 0."""
    parts = urlsplit(url)
    problem = None
    if parts.scheme not in SCHEMES:
        problem = "is not a Redis URL (redis://, rediss:// or unix://)"
    else:
        try:
            if parts.port == 0:  # redis-py would take it for 6379
                raise ValueError
        except ValueError:  # out of range, or not a number
            problem = "has a bad port (a number from 1 to 65535)"
        db = parts.path.strip("/")
        if parts.scheme != "unix" and db and not db.isdigit():
            problem = f"names database {db!r}: it must be a number (redis://host:6379/0)"
    if problem:
        raise click.BadParameter(
            f"{hide_password(url)!r} {problem}", param_hint="'--redis' / RSTICK_REDIS_URL"
        )


def _store(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None and param.name is not None:
        setattr(ctx.ensure_object(Settings), param.name, value)


REDIS_HELP = f"Redis URL [env RSTICK_REDIS_URL; default {DEFAULT_URL}]."
NAMESPACE_HELP = "Key namespace, to share one Redis [env RSTICK_NAMESPACE; default rstick]."


def connection_options(fn: F) -> F:
    """``--redis`` and ``--namespace`` on a command; they override the group's."""
    fn = click.option(
        "--namespace",
        "namespace",
        metavar="NS",
        expose_value=False,
        callback=_store,
        help=NAMESPACE_HELP,
    )(fn)
    fn = click.option(
        "--redis",
        "redis_url",
        metavar="URL",
        expose_value=False,
        callback=_store,
        help=REDIS_HELP,
    )(fn)
    return fn
