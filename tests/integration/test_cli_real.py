"""The ``rstick`` command as a user runs it, on a real Redis: Ctrl-C while waiting,
Redis over its memory limit, a password-protected server."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis

from rstick.embedded import RedisServer, free_port
from rstick.keys import Keys
from rstick.testing.processes import WorkerProcesses, wait_until
from tests.integration.harness import chaos_app
from tests.integration.harness.procs import ROOT, rstick_command, subprocess_env

APP = "tests.integration.harness.chaos_app:app"


def start_cli(url: str, namespace: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*rstick_command(), *args, "--redis", url, "--namespace", namespace],
        cwd=ROOT,
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(url: str, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = start_cli(url, namespace, *args)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("as_json", [True, False])
def test_ctrl_c_while_waiting_prints_the_run_and_exits_130(
    workers: WorkerProcesses, redis_url: str, namespace: str, tmp_path: Path, as_json: bool
) -> None:
    workers.start("w1", APP)
    workers.wait_ready()
    run_id = f"held-{as_json}"
    data = json.dumps({"dir": str(tmp_path), "hold": ["job:1"]})
    args = ["enqueue", "job", "--input", data, "--run-id", run_id, "--wait"]
    waiter = start_cli(redis_url, namespace, *args, *(["--json"] if as_json else []))
    try:
        # The step runs (and waits for the test), and the command waits for its end.
        wait_until((tmp_path / f"{run_id}.job.1.held").exists, 30, "the step to start")
        done_channel = workers.client.keys.done(run_id)
        r = redis.Redis.from_url(redis_url)
        wait_until(
            lambda: r.pubsub_numsub(done_channel)[0][1] == 1, 30, "the command to wait for the run"
        )
        waiter.send_signal(signal.SIGINT)
        out, err = waiter.communicate(timeout=30)
    finally:
        waiter.kill()
        (tmp_path / f"{run_id}.job.release").touch()
    assert waiter.returncode == 130
    follow = f"follow it with `rstick runs show {run_id}`"
    assert err == f"rstick: interrupted; run {run_id} is running: {follow}\n"
    if as_json:
        assert json.loads(out) == {"run_id": run_id, "status": "running"}
    else:
        assert out == f"{run_id}\n"
    assert "Aborted" not in out + err and "Traceback" not in err


def test_enqueue_on_a_redis_over_its_memory_limit_is_one_line_and_exit_1(
    own_server: RedisServer,
) -> None:
    url = own_server.url
    admin = redis.Redis.from_url(url)
    admin.hset(Keys("oom").workflows, "job", chaos_app.app.workflows["job"].to_json())
    assert run_cli(url, "oom", "enqueue", "job").returncode == 0
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)  # anything is over it now
    try:
        result = run_cli(url, "oom", "enqueue", "job", "--input", '{"x": 1}')
    finally:
        admin.config_set("maxmemory", 0)
    assert result.returncode == 1
    assert result.stderr == (
        f"rstick: Redis at {url} is out of memory (used memory > maxmemory) and refuses writes\n"
    )
    assert result.stdout == ""


# -- a password-protected Redis ---------------------------------------------------------


@pytest.fixture
def protected(own_server: RedisServer) -> str:
    """The URL of a server that needs the password ``s3cret`` (no password in it)."""
    admin = redis.Redis.from_url(own_server.url)
    admin.config_set("requirepass", "s3cret")  # this connection stays logged in
    admin.close()
    return own_server.url


def with_password(url: str, password: str) -> str:
    return url.replace("redis://", f"redis://:{password}@")


@pytest.mark.parametrize(
    ("password", "problem"), [("wrong", "wrong password"), (None, "the server needs a password")]
)
def test_a_worker_refused_by_redis_exits_1_with_one_line(
    protected: str, password: str | None, problem: str, make_workers: Any
) -> None:
    url = with_password(protected, password) if password else protected
    pool: WorkerProcesses = make_workers(url, "login")
    worker = pool.start("w1", APP)
    assert worker.wait(60) == 1
    shown = with_password(protected, "***") if password else protected
    lines = worker.output().splitlines()[1:]  # the first is the command line
    assert lines == [f"rstick: cannot log in to Redis at {shown}: {problem}"]
    # The CLI says the same, in one line.
    result = run_cli(url, "login", "workers")
    assert (result.returncode, result.stderr) == (1, f"{lines[0]}\n")
    # With the password the same worker serves.
    good = make_workers(with_password(protected, "s3cret"), "login")
    good.start("w2", APP)
    good.wait_ready()


def test_a_worker_waiting_for_redis_names_the_url_without_its_password(
    make_workers: Any,
) -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    pool: WorkerProcesses = make_workers(url, "away")
    worker = pool.start("w1", APP)
    shown = url.replace(":s3cret@", ":***@")
    wait_until(
        lambda: worker.output().count(f"redis unavailable at {shown} (") >= 2,
        30,
        "two backoff lines",
    )
    worker.terminate()
    assert worker.wait(30) == 0
    logged = worker.output().split("\n", 1)[1]  # after the command line the test wrote
    assert "s3cret" not in logged
    assert "; start retrying in 0.1s" in logged


# -- what a worker checks of the server at start -----------------------------------------


def test_a_worker_refuses_an_evicting_redis_and_warns_of_the_rest(
    own_server: RedisServer, make_workers: Any
) -> None:
    url = own_server.url
    admin = redis.Redis.from_url(url)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    pool: WorkerProcesses = make_workers(url, "evict")
    refused = pool.start("w1", APP)
    assert refused.wait(60) == 2
    [line] = refused.output().splitlines()[1:]
    assert line.startswith("rstick: Redis evicts keys under maxmemory-policy allkeys-lru: ")
    assert "--allow-eviction" in line
    assert pool.client.list_workers() == []  # it registered nothing

    allowed = pool.start("w2", APP, allow_eviction=True)
    pool.wait_ready()
    admin.config_set("maxmemory-policy", "volatile-lru")
    warned = pool.start("w3", APP)
    pool.wait_ready()
    for life, policy in ((allowed, "allkeys-lru"), (warned, "volatile-lru")):
        logged = life.output()
        assert logged.count(f"maxmemory-policy {policy}") == 1
        # The test server runs with --save '' --appendonly no.
        assert logged.count("Redis persistence is off (no AOF, no RDB save points)") == 1
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("appendonly", "yes")
    quiet = pool.start("w4", APP)
    pool.wait_ready()
    assert "rstick.preflight" not in quiet.output()
