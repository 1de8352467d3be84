"""The server checks a worker makes at start (rstick/preflight.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from drive import run
from redis.exceptions import ResponseError

from rstick import Rstick, Worker
from rstick.preflight import UnsafeRedis, check_server


class Server:
    """What INFO and CONFIG GET save answer; None: the command is refused."""

    def __init__(self, info: dict[str, Any] | None, save: str | None) -> None:
        self._info, self._save = info, save

    async def info(self) -> dict[str, Any]:
        if self._info is None:
            raise ResponseError("unknown command 'info'")
        return self._info

    async def config_get(self, name: str) -> dict[str, Any]:
        if self._save is None:
            raise ResponseError("unknown command 'config'")
        return {name: self._save}


def check(server: Server, allow_eviction: bool = False) -> list[str]:
    return asyncio.run(check_server(server, allow_eviction=allow_eviction))


SAFE = {"maxmemory_policy": "noeviction", "aof_enabled": 1}


def test_a_safe_server_gives_no_warning() -> None:
    assert check(Server(SAFE, "")) == []
    assert check(Server({**SAFE, "aof_enabled": 0}, "3600 1 300 100")) == []


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
def test_an_allkeys_policy_is_refused_unless_allowed(policy: str) -> None:
    with pytest.raises(UnsafeRedis) as refused:
        check(Server({**SAFE, "maxmemory_policy": policy}, ""))
    message = str(refused.value)
    assert f"maxmemory-policy {policy}" in message and "vanish silently" in message
    assert "--allow-eviction" in message and "allow_eviction=True" in message
    [warning] = check(Server({**SAFE, "maxmemory_policy": policy}, ""), allow_eviction=True)
    assert "(allowed)" in warning


def test_a_volatile_policy_warns_about_finished_runs() -> None:
    [warning] = check(Server({**SAFE, "maxmemory_policy": "volatile-ttl"}, ""))
    assert "finished runs' results may go before their retention" in warning


def test_persistence_off_warns_what_a_restart_loses() -> None:
    [warning] = check(Server({**SAFE, "aof_enabled": 0}, ""))
    assert "a Redis restart loses every queued and running run" in warning
    assert check(Server({**SAFE, "aof_enabled": b"0"}, " ")) == [warning]


def test_a_server_that_refuses_info_or_config_is_not_checked() -> None:
    assert check(Server(None, None)) == []
    assert check(Server({**SAFE, "aof_enabled": 0}, None)) == []  # managed Redis


def test_a_worker_warns_once_and_refuses_before_it_registers(
    app: Rstick, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.task
    def job(ctx: Any) -> None:
        return None

    fake = app.client._async_given  # the fake server's async client, which every loop uses
    answers = {"maxmemory_policy": "volatile-lru", "aof_enabled": 1}
    monkeypatch.setattr(fake, "info", Server(answers, "").info, raising=False)
    worker = Worker(app, worker_id="w1")
    caplog.set_level(logging.WARNING, logger="rstick")
    run(worker.start())
    run(worker.start())  # a start retried after an outage
    assert sum("volatile-lru" in m for m in caplog.messages) == 1
    answers["maxmemory_policy"] = "allkeys-lru"
    other = Worker(app, worker_id="w2")
    with pytest.raises(UnsafeRedis):
        run(other.start())
    assert [w.worker_id for w in app.list_workers()] == ["w1"]
