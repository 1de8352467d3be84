"""How the CLI fails: one line on stderr and a non-zero exit code, never a traceback."""

from __future__ import annotations

from typing import IO, Any

import click
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from rstick.credentials import hide_password

from .settings import Settings


class Fail(click.ClickException):
    """``rstick: <message>`` on stderr, then exit 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"rstick: {self.format_message()}", err=True, file=file)


class BadInput(Fail):
    """A bad argument: exit 2, as click does for usage errors."""

    exit_code = 2


class RstickGroup(click.Group):
    """The root group: turns "Redis is not there" from any command into one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            url = ctx.ensure_object(Settings).url
            reason = str(exc) or type(exc).__name__
            raise Fail(f"cannot reach Redis at {hide_password(url)}: {reason}") from None
