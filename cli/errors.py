"""How the CLI fails: one line on stderr, ``rstick: <message>``, and one exit code,
never a traceback:

- 0 success;
- 1 operational failure: Redis unreachable or refusing the command (out of memory,
  read-only, a refused login), a run that failed or was cancelled, --wait timed out;
- 2 bad input: usage, an unknown workflow, run or dead-letter id, bad JSON, an app
  (MODULE:APP) that cannot be imported;
- 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

from typing import IO, Any, NoReturn

import click
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from rstick.credentials import hide_password, login_failure

from .settings import Settings

INTERRUPTED = 130  # as a shell reports a process ended by SIGINT


class Fail(click.ClickException):
    """``rstick: <message>`` on stderr, then exit 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"rstick: {self.format_message()}", err=True, file=file)


class BadInput(Fail):
    """A bad argument: exit 2, as click does for usage errors."""

    exit_code = 2


def redis_failure(url: str, exc: RedisError) -> str:
    """One line saying why Redis at ``url`` did not do what was asked."""
    shown = hide_password(url)
    login = login_failure(url, exc)
    if login is not None:
        return login
    reason = str(exc) or type(exc).__name__
    # Inside a script the refusal comes as a script error that quotes Redis's reply.
    if isinstance(exc, OutOfMemoryError) or "OOM command not allowed" in reason:
        return f"Redis at {shown} is out of memory (used memory > maxmemory) and refuses writes"
    if isinstance(exc, ReadOnlyError) or "READONLY" in reason:
        return f"Redis at {shown} is a read-only replica and refuses writes"
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        return f"cannot reach Redis at {shown}: {reason}"
    return f"Redis at {shown} refused the command: {type(exc).__name__}: {reason}"


def interrupted() -> NoReturn:
    click.echo("rstick: interrupted", err=True)
    raise click.exceptions.Exit(INTERRUPTED)


class RstickGroup(click.Group):
    """The root group: whatever goes wrong in any command ends as one line and one
    exit code (see the module's docstring)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:  # the group's own options
            if isinstance(exc, click.exceptions.NoArgsIsHelpError):
                raise  # a bare `rstick`: its help, whole
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a command's arguments and options
            if isinstance(exc, click.exceptions.NoArgsIsHelpError):
                raise  # a bare `rstick runs`: its help, whole
            raise _one_line(exc) from None
        except RedisError as exc:
            url = ctx.ensure_object(Settings).url
            raise Fail(redis_failure(url, exc)) from None
        except (KeyboardInterrupt, click.Abort):
            interrupted()


def _one_line(exc: click.UsageError) -> BadInput:
    """click's usage error (usage, hint, message on three lines) as one line that
    says where the help is."""
    where = exc.ctx.command_path if exc.ctx else "rstick"
    message = " ".join(exc.format_message().split())
    return BadInput(f"{message} (see '{where} --help')")
