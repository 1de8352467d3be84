"""The Redis password never shows (URLs, repr(app)); a refused login is told apart."""

from __future__ import annotations

import pytest
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    ConnectionError,
    OutOfMemoryError,
    ResponseError,
)

from rstick import Rstick
from rstick.credentials import hide_password, login_failure, login_problem

SECRET = "s3cr"  # in every password below, so that no piece of it may show


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cr?et@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://:s3cr#et@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:s3cr?#@x@host/1", "redis://user:***@host/1"),
        ("redis://:s3cr/a?b#c@host", "redis://:***@host"),
        ("rediss://:?s3cr@h:1/2?db=3", "rediss://:***@h:1/2?db=3"),
        ("redis://user:#s3cr@h", "redis://user:***@h"),
        ("redis://s3cr?lone@host", "redis://***@host"),
        ("redis://:s3cr@host?password=s3cr#x&db=2", "redis://:***@host?password=***&db=2"),
        ("redis://host/0?db=1&password=s3cr?#", "redis://host/0?db=1&password=***"),
        ("unix://:s3cr?x@/tmp/r.sock?db=1", "unix://:***@/tmp/r.sock?db=1"),
        ("redis://:p%40s3cr@host/0", "redis://:***@host/0"),
        ("redis://:s3cr::@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
    ],
)
def test_hide_password_hides_every_character_a_parser_would_stop_at(url: str, shown: str) -> None:
    assert hide_password(url) == shown
    assert SECRET not in hide_password(url)


def test_repr_of_an_app_hides_its_password() -> None:
    app = Rstick(redis_url="redis://:s3cr?et@127.0.0.1:6390/0", namespace="n")
    text = repr(app)
    assert SECRET not in text and "et@" not in text
    assert "redis://:***@127.0.0.1:6390/0" in text
    assert "namespace='n'" in text


@pytest.mark.parametrize(
    ("exc", "problem"),
    [
        (AuthenticationError("invalid username-password pair or user is disabled."), "wrong"),
        (ResponseError("WRONGPASS invalid username-password pair"), "wrong"),
        (AuthenticationError("invalid password"), "wrong"),
        (AuthenticationError("Authentication required."), "needs"),
        (ResponseError("NOAUTH Authentication required."), "needs"),
        (AuthenticationError("HELLO must be called with the client authenticated"), "needs"),
        (
            ResponseError("AUTH <password> called without any password configured for the user"),
            "no password set",
        ),
        (AuthenticationWrongNumberOfArgsError("wrong number of arguments for 'auth'"), "user name"),
    ],
)
def test_a_refused_login_is_named(exc: Exception, problem: str) -> None:
    found = login_problem(exc)
    assert found is not None and problem in found
    assert login_failure("redis://:s3cr@h:1/0", exc) == (
        f"cannot log in to Redis at redis://:***@h:1/0: {found}"
    )


@pytest.mark.parametrize(
    "exc",
    [ConnectionError("Connection refused"), OutOfMemoryError("OOM"), ResponseError("ERR x")],
)
def test_other_errors_are_no_login_problem(exc: Exception) -> None:
    assert login_problem(exc) is None
    assert login_failure("redis://h", exc) is None
