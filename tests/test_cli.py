"""The ``rstick`` command line on fakeredis: each command's output, JSON shape and exit code."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import fakeredis
import pytest
from click.testing import CliRunner, Result
from drive import started
from redis.exceptions import AuthenticationError, OutOfMemoryError, ReadOnlyError, ResponseError

from rstick import Context, Rstick, StickyStrategy, Worker
from rstick.credentials import hide_password
from rstick_cli import settings
from rstick_cli.main import cli
from rstick_cli.render import duration, table
from rstick_cli.worker import load_app

_namespaces = itertools.count()
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def bind(app: Rstick, server: fakeredis.FakeServer) -> Rstick:
    app.client.use(
        sync=fakeredis.FakeRedis(server=server), aio=fakeredis.FakeAsyncRedis(server=server)
    )
    return app


def define(app: Rstick) -> None:
    """The workflows the worker side knows; the CLI side never imports them."""

    @app.workflow(sticky=StickyStrategy.SOFT, on_events=["user:create"])
    class Dag:
        @app.step()
        def a(self, ctx: Context) -> str:
            return ctx.worker.id()

        @app.step(parents=["a"])
        def b(self, ctx: Context) -> Any:
            return [ctx.parent_output("a"), ctx.input]

    @app.workflow()
    class Boom:
        @app.step()
        def explode(self, ctx: Context) -> None:
            raise ValueError("boom")


@dataclass
class World:
    """A worker-side app and the CLI, both on one fake server."""

    server: fakeredis.FakeServer
    namespace: str
    app: Rstick
    made: list[tuple[str | None, str | None]]

    def invoke(self, *args: str) -> Result:
        return CliRunner().invoke(cli, list(args), prog_name="rstick")

    def keys(self) -> set[bytes]:
        return set(fakeredis.FakeRedis(server=self.server).keys("*"))

    def serve(self, worker_id: str = "w1", passes: int = 4) -> Worker:
        """Register the worker, then run what is queued, a few non-blocking passes."""
        # An asyncio client per event loop: redis-py before 8 binds one to its first loop.
        self.app.client.use(aio=fakeredis.FakeAsyncRedis(server=self.server))

        async def go() -> Worker:
            async with started(self.app, worker_id) as [worker]:
                for _ in range(passes):
                    await worker.run_once()
            return worker

        return asyncio.run(go())


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    server = fakeredis.FakeServer()
    namespace = f"cli{next(_namespaces)}"
    app = bind(Rstick(redis_url="redis://fake", namespace=namespace), server)
    define(app)
    made: list[tuple[str | None, str | None]] = []

    def make_app(redis_url: str | None, ns: str | None) -> Rstick:
        made.append((redis_url, ns))
        return bind(Rstick(redis_url="redis://fake", namespace=namespace), server)

    monkeypatch.setattr(settings, "make_app", make_app)
    world = World(server, namespace, app, made)
    world.serve(passes=0)  # the worker registers its definitions, as at start
    yield world


def run_id_of(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()[0]


# -- enqueue -----------------------------------------------------------------


def test_enqueue_prints_the_run_id(world: World) -> None:
    result = world.invoke("enqueue", "Dag", "--input", '{"user": 1}')
    assert result.exit_code == 0, result.output
    run_id = result.stdout.strip()
    assert RUN_ID.match(run_id)
    run = world.app.get_run(run_id)
    assert (run.workflow, run.status.value) == ("Dag", "queued")


def test_enqueue_json_is_one_object(world: World) -> None:
    result = world.invoke("enqueue", "Dag", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"run_id", "status", "result"}
    assert report["status"] == "queued" and report["result"] is None
    assert world.app.get_run(report["run_id"]).workflow == "Dag"


def test_enqueue_wait_prints_the_outputs(world: World) -> None:
    run_id = run_id_of(world.invoke("enqueue", "Dag", "--input", '{"u": 1}', "--run-id", "r1"))
    assert run_id == "r1"
    world.serve()
    # The same run id again starts nothing new: --wait finds the run already finished.
    text = world.invoke("enqueue", "Dag", "--run-id", "r1", "--wait", "--timeout", "5")
    assert text.exit_code == 0, text.output
    first, *rest = text.stdout.splitlines()
    assert first == "r1"
    assert json.loads("\n".join(rest)) == {"a": "w1", "b": ["w1", {"u": 1}]}
    report = json.loads(world.invoke("enqueue", "Dag", "--run-id", "r1", "--wait", "--json").stdout)
    assert report == {
        "run_id": "r1",
        "status": "succeeded",
        "result": {"a": "w1", "b": ["w1", {"u": 1}]},
    }


def test_enqueue_wait_on_a_failed_run_exits_non_zero(world: World) -> None:
    run_id_of(world.invoke("enqueue", "Boom", "--run-id", "r2"))
    world.serve()
    result = world.invoke("enqueue", "Boom", "--run-id", "r2", "--wait", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["status"] == "failed" and report["result"] is None
    error = report["error"]
    assert (error["step"], error["type"], error["message"]) == ("explode", "ValueError", "boom")
    assert "Traceback" in error["traceback"]
    text = world.invoke("enqueue", "Boom", "--run-id", "r2", "--wait")
    assert text.exit_code == 1
    assert text.stdout.strip() == "r2"
    assert text.stderr.splitlines()[-1] == (
        "rstick: run r2 failed in step 'explode': ValueError: boom"
    )


def test_enqueue_wait_gives_up_after_the_timeout(world: World) -> None:
    result = world.invoke("enqueue", "Dag", "--wait", "--timeout", "0.2", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["status"] == "queued" and report["result"] is None
    assert report["error"]["type"] == "ResultTimeout"
    alone = world.invoke("enqueue", "Dag", "--timeout", "1")
    assert alone.exit_code == 2
    assert alone.stderr == "rstick: --timeout only applies with --wait\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--delay", "inf"], "--delay must be a finite number of seconds, not inf"),
        (["--delay", "nan"], "--delay must be a finite number of seconds, not nan"),
        (["--delay", "-5"], "--delay must be at least 0 seconds, not -5.0"),
        (["--delay", "1e30"], "--delay must be at most 31536000 seconds (a year), not 1e+30"),
        (["--wait", "--timeout", "inf"], "--timeout must be a finite number of seconds, not inf"),
        (["--wait", "--timeout", "0"], "--timeout must be above 0 seconds, not 0.0"),
    ],
)
def test_delay_and_timeout_out_of_bounds_are_one_line_and_exit_2(
    world: World, args: list[str], message: str
) -> None:
    before = world.keys()
    result = world.invoke("enqueue", "Dag", *args)
    assert result.exit_code == 2
    assert result.stderr == f"rstick: {message}\n"
    assert world.keys() == before


@pytest.mark.parametrize(
    ("command", "option"),
    [(["enqueue", "Dag", "--input"], "--input"), (["emit", "user:create", "--data"], "--data")],
)
def test_an_input_over_the_size_limit_is_one_line_and_exit_2(
    world: World, command: list[str], option: str
) -> None:
    before = world.keys()
    result = world.invoke(*command, json.dumps("x" * (4 * 1024 * 1024)))
    assert result.exit_code == 2
    assert result.stderr == (
        f"rstick: {option}: input is 4,194,309 bytes packed, over the limit of 4,194,304 "
        "(Rstick(max_payload_bytes=...))\n"
    )
    assert world.keys() == before


def test_a_task_input_that_is_not_keyword_arguments_is_one_line_and_exit_2(
    world: World,
) -> None:
    @world.app.task
    def job(ctx: Context, n: int) -> int:
        return n

    world.serve(passes=0)  # registered: the CLI knows it is a task, not its signature
    before = world.keys()
    result = world.invoke("enqueue", "job", "--input", "[1, 2]")
    assert result.exit_code == 2
    assert result.stderr == (
        "rstick: --input: task 'job' takes a dict of keyword arguments (or None) as input, "
        "not list\n"
    )
    assert world.keys() == before


def test_unknown_workflow_exits_non_zero_and_writes_nothing(world: World) -> None:
    before = world.keys()
    result = world.invoke("enqueue", "Nope", "--input", "{}")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("rstick: unknown workflow 'Nope'; workers registered: ")
    assert "Dag" in result.stderr and result.stderr.count("\n") == 1
    assert world.keys() == before


@pytest.mark.parametrize(
    "command", [["enqueue", "Dag", "--input"], ["emit", "user:create", "--data"]]
)
def test_bad_json_is_one_line_and_exit_2(world: World, command: list[str]) -> None:
    before = world.keys()
    result = world.invoke(*command, "{user: 1")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"rstick: {command[-1]} is not valid JSON: ")
    assert result.stderr.count("\n") == 1
    assert world.keys() == before


# -- emit --------------------------------------------------------------------


def test_emit_starts_the_listeners_and_prints_their_runs(world: World) -> None:
    result = world.invoke("emit", "user:create", "--data", '{"id": 1}')
    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    run_id, workflow = line.split()
    assert workflow == "Dag"
    assert world.app.get_run(run_id).workflow == "Dag"


def test_emit_with_a_key_starts_the_runs_once(world: World) -> None:
    first = json.loads(world.invoke("emit", "user:create", "--key", "k1", "--json").stdout)
    again = json.loads(world.invoke("emit", "user:create", "--key", "k1", "--json").stdout)
    assert first == again
    assert first["event"] == "user:create" and len(first["runs"]) == 1
    assert len(world.app.client.list_runs()) == 1


def test_emit_without_listeners_reports_zero_runs(world: World) -> None:
    text = world.invoke("emit", "nobody:listens")
    assert text.exit_code == 0
    assert text.stdout == ""
    assert "no workflow listens to 'nobody:listens'" in text.stderr
    report = world.invoke("emit", "nobody:listens", "--json")
    assert report.exit_code == 0
    assert json.loads(report.stdout) == {"event": "nobody:listens", "runs": []}
    assert world.app.client.list_runs() == []


def test_emit_of_an_event_name_the_layout_cannot_hold_is_one_line_and_exit_2(
    world: World,
) -> None:
    before = world.keys()
    result = world.invoke("emit", "user\x01create")
    assert result.exit_code == 2
    assert result.stderr == (
        "rstick: event name 'user\\x01create' contains a control character (U+0001)\n"
    )
    assert world.keys() == before


# -- runs --------------------------------------------------------------------


def test_runs_show_text(world: World) -> None:
    ok = run_id_of(world.invoke("enqueue", "Dag"))
    failed = run_id_of(world.invoke("enqueue", "Boom"))
    world.serve()
    result = world.invoke("runs", "show", ok)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert re.search(r"^workflow\s+Dag$", out, re.M)
    assert re.search(r"^status\s+succeeded$", out, re.M)
    assert re.search(r"^sticky\s+soft$", out, re.M)
    assert re.search(r"^worker\s+w1$", out, re.M)
    assert re.search(
        r"^STEP\s+STATUS\s+WORKER\s+ATTEMPTS\s+STARTED\s+FINISHED\s+DURATION\s+ERROR$", out, re.M
    )
    assert re.search(r"^a\s+succeeded\s+w1\s+1\s", out, re.M)
    assert re.search(r"^b\s+succeeded\s+w1\s+1\s", out, re.M)
    assert re.search(r"started\s+step=a worker=w1 attempt=1$", out, re.M)
    assert re.search(r"finished\s+status=succeeded$", out, re.M)

    bad = world.invoke("runs", "show", failed).stdout
    assert re.search(r"^status\s+failed \(step 'explode': ValueError: boom\)$", bad, re.M)
    assert re.search(r"^explode\s+failed\s+w1\s+1\s.*ValueError: boom$", bad, re.M)


def test_runs_cancel_cancels_the_run_and_its_unfinished_descendants(world: World) -> None:
    run_id = run_id_of(world.invoke("enqueue", "Dag"))
    child = world.app.client.enqueue("Boom", parent=(run_id, "a")).run_id
    grandchild = world.app.client.enqueue("Boom", parent=(child, "explode")).run_id
    result = world.invoke("runs", "cancel", run_id)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"cancelled {run_id}\ncancelled {child} (descendant)\ncancelled {grandchild} (descendant)\n"
    )
    shown = world.invoke("runs", "show", run_id).stdout
    assert re.search(r"^status\s+cancelled$", shown, re.M)
    assert re.search(r"^a\s+cancelled\s+-\s+1\s", shown, re.M)
    assert re.search(r"^b\s+cancelled\s+-\s+0\s", shown, re.M)
    # Again: it already ended, exit 1, and --json says so too.
    again = world.invoke("runs", "cancel", run_id, "--json")
    assert again.exit_code == 1
    assert json.loads(again.stdout) == {"run_id": run_id, "status": "cancelled", "cancelled": []}
    assert again.stderr == f"rstick: run {run_id} already ended: cancelled\n"


def test_runs_cancel_takes_a_unique_prefix_of_the_run_id(world: World) -> None:
    run_id = run_id_of(world.invoke("enqueue", "Dag"))
    result = world.invoke("runs", "cancel", run_id[:8])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"cancelled {run_id}\n"
    assert world.app.get_run(run_id).status.value == "cancelled"


def test_runs_cancel_json_and_keep_children(world: World) -> None:
    run_id = run_id_of(world.invoke("enqueue", "Dag"))
    child = world.app.client.enqueue("Boom", parent=(run_id, "a")).run_id
    result = world.invoke("runs", "cancel", run_id, "--keep-children", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "run_id": run_id,
        "status": "cancelled",
        "cancelled": [run_id],
    }
    assert world.app.get_run(child).status.value == "queued"
    # The run has ended; its child has not: it is cancelled, and the exit code
    # still says the run itself had already ended.
    later = world.invoke("runs", "cancel", run_id, "--json")
    assert later.exit_code == 1
    assert json.loads(later.stdout)["cancelled"] == [child]
    assert later.stderr == (
        f"rstick: run {run_id} already ended: cancelled (cancelled 1 unfinished descendants)\n"
    )


def test_runs_cancel_of_an_unknown_run_is_exit_2(world: World) -> None:
    result = world.invoke("runs", "cancel", "nope")
    assert result.exit_code == 2
    assert result.stderr == "rstick: no run 'nope' (see `rstick runs list`)\n"
    finished = run_id_of(world.invoke("enqueue", "Boom"))
    world.serve()
    ended = world.invoke("runs", "cancel", finished)
    assert ended.exit_code == 1
    assert ended.stderr == f"rstick: run {finished} already ended: failed\n"


def test_runs_show_json(world: World) -> None:
    run_id = run_id_of(world.invoke("enqueue", "Boom"))
    world.serve()
    result = world.invoke("runs", "show", run_id, "--json")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert {"run_id", "workflow", "status", "sticky", "worker", "steps", "history"} <= set(run)
    assert (run["run_id"], run["workflow"], run["status"], run["sticky"]) == (
        run_id,
        "Boom",
        "failed",
        "none",
    )
    [step] = run["steps"]
    wanted = {"name", "status", "worker", "attempts", "started_at", "finished_at", "error"}
    assert wanted <= set(step)
    assert (step["name"], step["status"], step["worker"], step["attempts"]) == (
        "explode",
        "failed",
        "w1",
        1,
    )
    assert step["started_at"] <= step["finished_at"]
    assert (step["error"]["type"], step["error"]["message"]) == ("ValueError", "boom")
    events = run["history"]
    assert events[0]["event"] == "created" and events[-1]["event"] == "finished"
    assert {"event": "failed", "step": "explode", "worker": "w1", "attempt": 1}.items() <= (
        events[-2].items()
    )
    sticky = run_id_of(world.invoke("enqueue", "Dag"))
    world.serve()
    history = json.loads(world.invoke("runs", "show", sticky, "--json").stdout)["history"]
    [pinned] = [e for e in history if e["event"] == "pinned"]
    assert pinned == {"event": "pinned", "worker": "w1", "epoch": 0, "at": pinned["at"]}
    assert isinstance(pinned["at"], float)


def test_runs_show_unknown_run(world: World) -> None:
    result = world.invoke("runs", "show", "nope")
    assert result.exit_code == 2
    assert result.stderr == "rstick: no run 'nope' (see `rstick runs list`)\n"


def test_runs_list_filters_by_status(world: World) -> None:
    ok = run_id_of(world.invoke("enqueue", "Dag"))
    failed = run_id_of(world.invoke("enqueue", "Boom"))
    world.serve()
    queued = run_id_of(world.invoke("enqueue", "Dag"))
    listed = json.loads(world.invoke("runs", "list", "--status", "failed", "--json").stdout)
    assert [r["run_id"] for r in listed] == [failed]
    every = json.loads(world.invoke("runs", "list", "--json").stdout)
    assert {r["run_id"] for r in every} == {ok, failed, queued}
    assert len(json.loads(world.invoke("runs", "list", "--limit", "1", "--json").stdout)) == 1

    text = world.invoke("runs", "list", "--status", "succeeded").stdout.splitlines()
    assert text[0].split() == [
        "RUN",
        "WORKFLOW",
        "STATUS",
        "STICKY",
        "WORKER",
        "CREATED",
        "DURATION",
    ]
    assert [line.split()[:5] for line in text[1:]] == [[ok, "Dag", "succeeded", "soft", "w1"]]
    bad = world.invoke("runs", "list", "--status", "lost")
    assert bad.exit_code == 2


# -- workers -----------------------------------------------------------------


def test_workers_json_and_text(world: World) -> None:
    asyncio.run(Worker(world.app, worker_id="w2", concurrency=10).start())  # alive: it just beat
    result = world.invoke("workers", "--json")
    assert result.exit_code == 0, result.output
    w1, w2 = json.loads(result.stdout)
    assert (w1["worker_id"], w1["alive"]) == ("w1", False)  # its process is gone
    assert (w2["worker_id"], w2["alive"], w2["concurrency"], w2["queues"]) == (
        "w2",
        True,
        10,
        ["default"],
    )
    assert {"host", "pid", "running", "pinned", "last_heartbeat"} <= set(w2)
    lines = world.invoke("workers").stdout.splitlines()
    assert lines[0].split() == [
        "WORKER",
        "HOST",
        "PID",
        "QUEUES",
        "CONCURRENCY",
        "RUNNING",
        "PINNED",
        "HEARTBEAT",
        "ALIVE",
    ]
    assert lines[1].split()[0] == "w1" and lines[1].split()[-1] == "no"
    assert lines[2].split()[0] == "w2" and lines[2].split()[-1] == "yes"


# -- options, errors, help -----------------------------------------------------


def test_command_options_override_the_groups(world: World) -> None:
    world.invoke("--namespace", "a", "--redis", "redis://one", "workers")
    world.invoke("--namespace", "a", "workers", "--namespace", "b")
    world.invoke("workers")
    assert world.made == [("redis://one", "a"), (None, "b"), (None, None)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "command",
    [["workers"], ["runs", "list"], ["runs", "show", "x"], ["enqueue", "Dag"], ["emit", "e"]],
)
def test_unreachable_redis_is_one_line_with_the_password_hidden(command: list[str]) -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    result = CliRunner().invoke(cli, ["--redis", url, *command])
    assert result.exit_code == 1
    assert "s3cret" not in result.output
    expected = f"rstick: cannot reach Redis at {hide_password(url)}: "
    assert expected.startswith("rstick: cannot reach Redis at redis://:***@127.0.0.1:")
    assert result.stderr.startswith(expected)
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


def test_unreachable_redis_from_the_environment() -> None:
    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    result = CliRunner(env={"RSTICK_REDIS_URL": url}).invoke(cli, ["workers"])
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"rstick: cannot reach Redis at redis://user:***@127.0.0.1:{url.rsplit(':', 1)[1]}: "
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:p%40ss:w@host/1", "redis://user:***@host/1"),
        ("rediss://lonely@host", "rediss://***@host"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://:a/b@host/0", "redis://:***@host/0"),
        ("redis://host?password=pw&db=2", "redis://host?password=***&db=2"),
        ("unix:///tmp/r.sock?db=1&password=pw", "unix:///tmp/r.sock?db=1&password=***"),
    ],
)
def test_hide_password(url: str, shown: str) -> None:
    assert hide_password(url) == shown


@pytest.mark.parametrize(
    ("spec", "code", "message"),
    [
        ("no_colon", 2, "expected MODULE:APP"),
        ("no_such_module_xyz:app", 2, "cannot import 'no_such_module_xyz': no module named"),
        ("json:app", 2, "module 'json' has no attribute 'app'"),
        ("json:loads", 2, "'json:loads' is a function, not an Rstick app"),
    ],
)
def test_worker_refuses_a_bad_app(spec: str, code: int, message: str) -> None:
    result = CliRunner().invoke(cli, ["worker", spec])
    assert result.exit_code == code
    assert result.stderr.startswith(f"rstick: {message}")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--worker-id", "w 1"], "worker id 'w 1' contains whitespace"),
        (["--worker-id", "{w1}"], "worker id '{w1}' contains '{'"),
        (["-q", "default", "-q", "a|b"], "queue name 'a|b' contains '|'"),
    ],
)
def test_worker_refuses_an_id_or_queue_the_layout_cannot_hold(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cli_app_names.py").write_text(
        "from rstick import Rstick\napp = Rstick(redis_url='redis://127.0.0.1:1/0')\n"
        "@app.task\ndef job(ctx):\n    return 1\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "cli_app_names", raising=False)
    result = CliRunner().invoke(cli, ["worker", "cli_app_names:app", *args])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"rstick: {message}")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--worker-ttl", "nan"], "--worker-ttl must be a finite number of seconds, not nan"),
        (["--worker-ttl", "inf"], "--worker-ttl must be a finite number of seconds, not inf"),
        (["--heartbeat", "nan"], "--heartbeat must be a finite number of seconds, not nan"),
    ],
)
def test_worker_refuses_a_heartbeat_or_ttl_out_of_bounds(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cli_app_ttl.py").write_text(
        "from rstick import Rstick\napp = Rstick(redis_url='redis://127.0.0.1:1/0')\n"
        "@app.task\ndef job(ctx):\n    return 1\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "cli_app_ttl", raising=False)
    result = CliRunner().invoke(cli, ["worker", "cli_app_ttl:app", *args])
    assert result.exit_code == 2
    assert result.stderr == f"rstick: {message}\n"


def test_worker_imports_the_app_from_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cli_app_ok.py").write_text(
        "from rstick import Rstick\napp = Rstick(redis_url='redis://127.0.0.1:1/0')\n"
        "@app.task\ndef job(ctx):\n    return 1\n"
    )
    (tmp_path / "cli_app_broken.py").write_text("raise RuntimeError('nope')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    for name in ("cli_app_ok", "cli_app_broken"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    app = load_app("cli_app_ok:app")
    assert isinstance(app, Rstick) and list(app.workflows) == ["job"]
    result = CliRunner().invoke(cli, ["worker", "cli_app_broken:app"])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr  # the user's bug: its traceback says where
    assert result.stderr.splitlines()[-1] == (
        "rstick: error while importing 'cli_app_broken': RuntimeError: nope"
    )


def test_every_command_has_help() -> None:
    def walk(command: click.Command, path: list[str]) -> Iterator[list[str]]:
        yield path
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])

    paths = list(walk(cli, []))
    assert len(paths) >= 7
    for path in paths:
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, path
        assert result.stdout.startswith("Usage: "), path
        assert "--help" in result.stdout


# -- rendering ------------------------------------------------------------------


def test_durations_and_tables() -> None:
    assert [duration(s) for s in (None, 0.012, 1.25, 123.0, 7322.0)] == [
        None,
        "12 ms",
        "1.25 s",
        "2m 03s",
        "2h 02m",
    ]
    assert table(["A", "LONGER"], [["xyz", None], ["q", 1]]).splitlines() == [
        "A    LONGER",
        "xyz  -",
        "q    1",
    ]


# -- run id prefixes ---------------------------------------------------------------


def test_runs_show_takes_a_unique_prefix_of_a_run_id(world: World) -> None:
    for run_id in ("ab12cd34aaaa", "ab12cd34bbbb", "ab99", "x*y?[z]"):
        run_id_of(world.invoke("enqueue", "Dag", "--run-id", run_id))
    shown = world.invoke("runs", "show", "ab12cd34a", "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["run_id"] == "ab12cd34aaaa"
    text = world.invoke("runs", "show", "ab9")
    assert re.search(r"^run\s+ab99$", text.stdout, re.M)
    # Glob characters in a prefix are matched as themselves.
    assert json.loads(world.invoke("runs", "show", "x*y?", "--json").stdout)["run_id"] == "x*y?[z]"
    assert world.invoke("runs", "show", "x?").exit_code == 2
    # A whole id that is also the prefix of another names its own run.
    run_id_of(world.invoke("enqueue", "Dag", "--run-id", "ab12"))
    assert json.loads(world.invoke("runs", "show", "ab12", "--json").stdout)["run_id"] == "ab12"


def test_an_ambiguous_prefix_exits_2_listing_the_runs(world: World) -> None:
    for run_id in ("ab12cd34aaaa", "ab12cd34bbbb", "zz"):
        run_id_of(world.invoke("enqueue", "Dag", "--run-id", run_id))
    result = world.invoke("runs", "show", "ab12")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        "rstick: run id prefix 'ab12' is ambiguous: it matches ab12cd34aaaa, ab12cd34bbbb; "
        "give more characters\n"
    )


def test_an_ambiguous_prefix_of_many_runs_lists_a_few(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rstick_cli import run_ids

    monkeypatch.setattr(run_ids, "SCAN_COUNT", 2)  # many ZSCAN calls, over a small index
    for n in range(30):
        world.app.enqueue("Dag", run_id=f"pre{n:02d}")
    world.app.enqueue("Dag", run_id="other")
    result = world.invoke("runs", "show", "pre")
    assert result.exit_code == 2
    listed = result.stderr.split("it matches ")[1].split("; give more")[0].split(", ")
    assert len(listed) == run_ids.MATCHES_SHOWN + 1 and listed[-1] == "..."
    assert all(run_id.startswith("pre") for run_id in listed[:-1])
    assert json.loads(world.invoke("runs", "show", "pre17", "--json").stdout)["run_id"] == "pre17"
    assert world.invoke("runs", "show", "oth").exit_code == 0
    assert world.invoke("runs", "show", "").stderr == "rstick: an empty run id names no run\n"


# -- dead letters -------------------------------------------------------------------


def dead_letter(world: World) -> str:
    """Make one dead letter (a malformed entry on the shared queue); its id."""
    fakeredis.FakeRedis(server=world.server).xadd(world.app.keys.queue("default"), {"junk": "yes"})
    world.serve()
    [letter] = json.loads(world.invoke("dead", "list", "--json").stdout)
    return str(letter["id"])


@pytest.mark.parametrize("bad", ["xyz", "1700000000000", "1-2-3", "1-x"])
def test_dead_requeue_of_a_malformed_id_is_one_line_and_exit_2(world: World, bad: str) -> None:
    result = world.invoke("dead", "requeue", bad)
    assert result.exit_code == 2
    assert result.stderr == (
        f"rstick: {bad!r} is not a dead-letter id (like 1700000000000-0: see `rstick dead list`)\n"
    )


def test_dead_requeue_of_an_unknown_id_exits_2(world: World) -> None:
    result = world.invoke("dead", "requeue", "1700000000000-0")
    assert result.exit_code == 2
    assert result.stderr == "rstick: no dead letter 1700000000000-0 (see `rstick dead list`)\n"


def test_dead_requeue_and_purge_json(world: World) -> None:
    dead_id = dead_letter(world)
    # A malformed entry cannot go back: it is no rstick message.
    refused = world.invoke("dead", "requeue", dead_id, "--json")
    assert refused.exit_code == 1
    assert refused.stderr == f"rstick: dead letter {dead_id} is not a complete rstick message\n"
    redis = fakeredis.FakeRedis(server=world.server)
    fields = {"r": "r1", "s": "a", "a": "1", "e": "0", "w": "Dag", "stream": "somewhere"}
    letter_id = redis.xadd(world.app.keys.dead, {"reason": "test", **fields}).decode()
    requeued = world.invoke("dead", "requeue", letter_id, "--json")
    assert requeued.exit_code == 0, requeued.output
    report = json.loads(requeued.stdout)
    assert report["dead_id"] == letter_id
    assert redis.xrange("somewhere")[0][0].decode() == report["new_id"]
    purged = world.invoke("dead", "purge", "--yes", "--json")
    assert purged.exit_code == 0
    assert json.loads(purged.stdout) == {"deleted": 1}
    assert world.invoke("dead", "purge", "--yes").stdout == "deleted 0 dead letters\n"


def test_dead_purge_unconfirmed_deletes_nothing(world: World) -> None:
    dead_letter(world)
    for answer in ("n\n", ""):  # no, and end of input (a script without --yes)
        result = CliRunner().invoke(cli, ["dead", "purge"], input=answer)
        assert result.exit_code == 1
        assert result.stderr.splitlines()[-1] == (
            "rstick: not confirmed: nothing deleted (--yes skips the question)"
        )
    assert len(json.loads(world.invoke("dead", "list", "--json").stdout)) == 1
    result = CliRunner().invoke(cli, ["dead", "purge"], input="y\n")
    assert result.stdout.endswith("deleted 1 dead letter\n")


# -- one line, one exit code ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["runs", "show"], r"Missing argument 'RUN_ID'\. \(see 'rstick runs show --help'\)"),
        (
            ["enqueue", "Dag", "--bogus"],
            r"No such option.*--bogus.* \(see 'rstick enqueue --help'\)",
        ),
        (["nosuchcommand"], r"No such command 'nosuchcommand'\. \(see 'rstick --help'\)"),
        (["--bogus"], r"No such option.*--bogus.* \(see 'rstick --help'\)"),
        (["runs", "list", "--limit", "0"], r"Invalid value for '--limit': 0 is not in the range"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(world: World, args: list[str], message: str) -> None:
    result = world.invoke(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert re.match(f"rstick: {message}", result.stderr)
    assert result.stderr.count("\n") == 1


def test_a_url_that_is_not_redis_is_one_line_and_exit_2() -> None:
    result = CliRunner().invoke(cli, ["--redis", "http://:pw@x", "workers"], prog_name="rstick")
    assert result.exit_code == 2
    assert result.stderr == (
        "rstick: Invalid value for '--redis' / RSTICK_REDIS_URL: 'http://:***@x' is not a "
        "Redis URL (redis://, rediss:// or unix://) (see 'rstick workers --help')\n"
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://:pw@127.0.0.1:99999/0", "has a bad port (a number from 1 to 65535)"),
        ("redis://127.0.0.1:abc/0", "has a bad port (a number from 1 to 65535)"),
        ("redis://127.0.0.1:0/0", "has a bad port (a number from 1 to 65535)"),
        ("redis://127.0.0.1:6379/abc", "names database 'abc': it must be a number"),
    ],
)
@pytest.mark.parametrize("command", [["workers"], ["worker", "examples.sticky_dag:app"]])
def test_a_bad_port_or_database_in_the_url_is_one_line_and_exit_2(
    url: str, problem: str, command: list[str]
) -> None:
    result = CliRunner().invoke(cli, ["--redis", url, *command], prog_name="rstick")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("rstick: Invalid value for '--redis' / RSTICK_REDIS_URL: ")
    assert problem in result.stderr
    assert "pw" not in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
            "Redis at redis://fake is out of memory (used memory > maxmemory) and refuses writes",
        ),
        (
            ReadOnlyError("You can't write against a read only replica."),
            "Redis at redis://fake is a read-only replica and refuses writes",
        ),
        (
            ResponseError("Error running script: -OOM command not allowed when used memory"),
            "Redis at redis://fake is out of memory (used memory > maxmemory) and refuses writes",
        ),
        (
            ResponseError("ERR something else"),
            "Redis at redis://fake refused the command: ResponseError: ERR something else",
        ),
        (
            AuthenticationError("invalid username-password pair or user is disabled."),
            "cannot log in to Redis at redis://fake: wrong password",
        ),
    ],
)
def test_redis_refusing_a_command_is_one_line_and_exit_1(
    world: World, monkeypatch: pytest.MonkeyPatch, error: Exception, message: str
) -> None:
    def refuse(*_: Any, **__: Any) -> Any:
        raise error

    monkeypatch.setattr(Rstick, "enqueue", refuse)
    result = world.invoke("enqueue", "Dag")
    assert result.exit_code == 1
    assert result.stderr == f"rstick: {message}\n"


def test_ctrl_c_in_a_command_is_exit_130(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(*_: Any, **__: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(Rstick, "list_workers", interrupt)
    result = world.invoke("workers")
    assert result.exit_code == 130
    assert result.stderr == "rstick: interrupted\n"


@pytest.mark.parametrize("args", [[], ["runs"], ["dead"]])
def test_a_group_without_a_command_shows_its_whole_help(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args, prog_name="rstick")
    assert result.exit_code == 2  # click's: no command is a usage error
    assert result.stderr.startswith(f"Usage: {' '.join(['rstick', *args])} [OPTIONS] COMMAND")
    assert "Commands:" in result.stderr
    assert result.stderr.count("\n") > 5  # the help as click prints it, not one line


def test_the_demo_given_a_redis_that_does_not_answer_says_so_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as s:  # a free port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RSTICK_REDIS_URL", f"redis://:pw@127.0.0.1:{port}/0")
    result = CliRunner().invoke(cli, ["demo"], prog_name="rstick")
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(
        f"rstick: cannot reach Redis at redis://:***@127.0.0.1:{port}/0"
    )
    assert result.stderr.endswith(" (from RSTICK_REDIS_URL / --redis)\n")
    assert result.stdout == ""  # no workers were started
