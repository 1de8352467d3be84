"""Cancel on real workers: a SOFT parent whose step spawned two sticky children and
a plain one, cancelled while they run. Every child ends cancelled, and none of
them succeeds afterwards, although each step runs on to its end."""

from __future__ import annotations

import redis

from rstick import Rstick, RunStatus, StepStatus
from rstick.testing.processes import WorkerProcesses, wait_until
from tests.integration.harness.cancel_app import key
from tests.integration.harness.procs import rstick_cli

APP = "tests.integration.harness.cancel_app:app"


def outputs(app: Rstick, run_id: str) -> dict[bytes, bytes]:
    raw = app.client.redis.hgetall(app.keys.run(run_id))
    return {k[:-2]: v for k, v in raw.items() if k.endswith(b".o")}


def test_cancel_of_a_parent_cancels_its_running_children_and_ignores_their_results(
    workers: WorkerProcesses, app: Rstick, redis_url: str, namespace: str
) -> None:
    workers.start_many(2, APP, concurrency=4)
    parent = app.enqueue("Family")
    with redis.Redis.from_url(redis_url) as r:
        wait_until(lambda: r.llen(key(namespace, "started")) == 3, 30, "the 3 children to start")
        kids = app.get_run(parent.run_id).children
        assert len(kids) == 3
        assert {app.get_run(k).status for k in kids} == {RunStatus.RUNNING}
        pinned = app.get_run(parent.run_id).worker
        sticky = [k for k in kids if app.get_run(k).workflow == "Kid"]
        assert [app.get_run(k).worker for k in sticky] == [pinned, pinned]

        report = rstick_cli(redis_url, namespace, "runs", "cancel", parent.run_id)
        assert report["run_id"] == parent.run_id and report["status"] == "cancelled"
        assert report["cancelled"][0] == parent.run_id
        assert sorted(report["cancelled"][1:]) == sorted(kids)

        r.set(key(namespace, "release"), 1)  # the children's steps run on to their end
        wait_until(lambda: r.llen(key(namespace, "finished")) == 3, 30, "the children to finish")

        # Their completions reach Redis and are ignored. The worker logs that after
        # the script that applied them, which also settled their entries.
        ignored = [f"completion of {k}/work ignored: run is cancelled" for k in kids]
        ignored.append(f"completion of {parent.run_id}/spawn ignored: run is cancelled")

        def logged() -> bool:
            logs = "".join(proc.output() for proc in workers.lives)
            return all(line in logs for line in ignored)

        wait_until(logged, 30, "the 4 completions to be ignored")
        streams = [app.keys.queue("default"), app.keys.personal("w1"), app.keys.personal("w2")]
        assert [r.xpending(s, "rstick")["pending"] for s in streams] == [0, 0, 0]
    for run_id in [parent.run_id, *kids]:
        run = app.get_run(run_id)
        assert run.status is RunStatus.CANCELLED, run
        assert {s.status for s in run.steps} == {StepStatus.CANCELLED}, run
        with redis.Redis.from_url(redis_url) as r:
            assert outputs(app, run_id) == {}
    assert not [r for r in app.client.list_runs(limit=100) if r.status is RunStatus.SUCCEEDED]
