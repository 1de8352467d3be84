"""Run the sticky file-processing example across real worker processes.

    python -m examples.sticky_files.start --workers 5 --runs 10 [--kill-one]

Starts N ``rstick worker examples.sticky_files.workflow:app`` subprocesses in a
fresh namespace on ``RSTICK_REDIS_URL`` (default redis://localhost:6379/0),
enqueues the runs, prints each run's checksum and the worker of each step,
then stops the workers and deletes their files. ``--kill-one`` SIGKILLs the
worker of a run that has downloaded but not processed its file: the run moves
to another worker (SOFT) and ``process`` downloads again there.

``rstick demo`` is this script with an embedded Redis and a progress line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from rstick import Rstick, RunRef, RunStatus
from rstick.testing.processes import WorkerProcesses

from .workflow import expected_sha256

ROOT = Path(__file__).resolve().parents[2]  # the repository: examples/ is importable from it
APP = "examples.sticky_files.workflow:app"
STEPS = ("download", "process", "cleanup")
POLL = 0.05  # seconds between looks at the runs' state
STOP_TIMEOUT = 10.0  # seconds the workers have to stop before they are killed


@dataclass
class RunResult:
    run_id: str
    status: str
    expected: str
    sha256: str | None
    workers: dict[str, str | None]  # step -> worker that ran it last
    seconds: float | None
    redownloaded: bool = False
    error: str | None = None

    @property
    def checksum_ok(self) -> bool:
        return self.sha256 == self.expected

    @property
    def one_worker(self) -> bool:
        return len(set(self.workers.values())) == 1 and None not in self.workers.values()

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "checksum_ok": self.checksum_ok, "one_worker": self.one_worker}


@dataclass
class Report:
    runs: list[RunResult]
    killed: str | None = None
    seconds: float = 0.0  # from enqueue to the last run's end

    @property
    def ok(self) -> bool:
        """Every run succeeded with the right checksum, and stayed on one worker
        unless its worker was the one killed."""
        return all(
            r.status == RunStatus.SUCCEEDED
            and r.checksum_ok
            and (r.one_worker or r.workers["download"] == self.killed)
            for r in self.runs
        )

    def summary(self) -> str:
        steps = sum(len(r.workers) for r in self.runs)
        line = f"{len(self.runs)} runs, {steps} steps"
        moved = [r for r in self.runs if not r.one_worker]
        failed = [r for r in self.runs if r.status != RunStatus.SUCCEEDED or not r.checksum_ok]
        if not moved:
            line += ", every run on one worker"
        else:
            line += f", {len(moved)} moved"
            if self.killed:
                line += f" after {self.killed} was killed"
                redo = sum(r.redownloaded for r in moved)
                line += f" ({redo} downloaded again on the new worker)"
        if failed:
            line += f", {len(failed)} FAILED"
        return line + f" ({self.seconds:.1f}s)"

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "summary": self.summary(),
            "killed": self.killed,
            "runs": [r.to_json() for r in self.runs],
        }


def table(report: Report) -> str:
    """One line per run: id, checksum verdict, the worker of each step, duration,
    and for a run that moved, whether ``process`` downloaded its file again."""
    rows = [["run", "checksum", *STEPS, "time", ""]]
    for r in report.runs:
        check = (
            "FAILED"
            if r.status != RunStatus.SUCCEEDED
            else (f"ok {r.expected[:8]}" if r.checksum_ok else "MISMATCH")
        )
        rows.append(
            [
                r.run_id[:8],
                check,
                *(r.workers.get(s) or "-" for s in STEPS),
                "-" if r.seconds is None else f"{r.seconds:.2f}s",
                "" if r.one_worker else "moved" + (", downloaded again" * r.redownloaded),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def result_of(client_app: Rstick, ref: RunRef, input: dict[str, Any]) -> RunResult:
    run = ref.get()
    outputs: dict[str, Any] = {}
    error = None
    if run.status == RunStatus.SUCCEEDED:
        outputs = ref.result(timeout=5)
    elif run.error_step:
        err = run.step(run.error_step).error
        error = f"{run.error_step}: {err.type}: {err.message}" if err else run.error_step
    seconds = None
    if run.finished_at is not None and run.created_at is not None:
        seconds = run.finished_at - run.created_at
    process = outputs.get("process") or {}
    return RunResult(
        run_id=ref.run_id,
        status=run.status.value,
        expected=expected_sha256(input),
        sha256=process.get("sha256"),
        workers={s.name: s.worker for s in run.steps},
        seconds=seconds,
        redownloaded=bool(process.get("redownloaded")),
        error=error,
    )


def victim(client_app: Rstick, refs: list[RunRef]) -> str | None:
    """The worker of a run whose file is downloaded but not yet processed."""
    for ref in refs:
        run = ref.get()
        if (
            run.status == RunStatus.RUNNING
            and run.worker
            and run.step("download").status == "succeeded"
            and run.step("process").status in ("queued", "running")
        ):
            return run.worker
    return None


def run_example(
    url: str,
    *,
    workers: int = 5,
    runs: int = 10,
    kill_one: bool = False,
    size: int = 256 * 1024,
    sleep: float = 0.3,
    concurrency: int = 2,
    progress: Callable[[int, int], None] | None = None,
    timeout: float | None = None,
) -> Report:
    """Start the workers, run the example, stop everything; returns what happened.

    Everything lives in a fresh namespace and a temporary folder, both
    removed at the end, also when interrupted."""
    namespace = f"demo-{uuid.uuid4().hex[:8]}"
    client_app = Rstick(redis_url=url, namespace=namespace)
    tmp = Path(tempfile.mkdtemp(prefix="rstick-demo-"))
    procs = WorkerProcesses(
        url, namespace, app=APP, concurrency=concurrency, logs=tmp, cwd=ROOT, pythonpath=[ROOT]
    )
    try:
        procs.start_many(workers)
        inputs = [
            {"seed": n, "size": size, "sleep": sleep, "base": str(tmp / "demo_fs")}
            for n in range(runs)
        ]
        started = time.monotonic()
        refs = client_app.enqueue_many("FileProcessing", inputs)
        killed = None
        if timeout is None:  # three times the work, spread over every slot
            timeout = 60 + 3 * (-(-runs // (workers * concurrency))) * len(STEPS) * sleep
        deadline = time.monotonic() + timeout
        done = -1
        while time.monotonic() < deadline:
            if kill_one and killed is None:
                killed = victim(client_app, refs)
                if killed:
                    procs.kill(killed)
            finished = count_finished(client_app, refs)
            if finished != done and progress:
                progress(finished, len(refs))
            done = finished
            if done == len(refs):
                break
            time.sleep(POLL)
        else:
            logs = "\n".join(
                f"--- {life.worker_id}\n{last_lines(life.output(), 5)}" for life in procs.lives
            )
            raise TimeoutError(
                f"{len(refs) - done} runs not finished after {timeout:.0f}s; "
                f"the workers' last lines:\n{logs}"
            )
        results = [result_of(client_app, ref, i) for ref, i in zip(refs, inputs, strict=True)]
        return Report(results, killed, time.monotonic() - started)
    finally:
        try:
            procs.close(timeout=STOP_TIMEOUT)  # SIGTERM, then SIGKILL
        finally:
            forget(client_app)
            client_app.close()
            shutil.rmtree(tmp, ignore_errors=True)


def last_lines(text: str, n: int) -> str:
    return "\n".join(text.splitlines()[-n:])


def count_finished(client_app: Rstick, refs: list[RunRef]) -> int:
    """How many of the runs have finished, in one round trip."""
    pipe = client_app.client.redis.pipeline(transaction=False)
    for ref in refs:
        pipe.hget(client_app.keys.run(ref.run_id), "status")
    return sum(raw is not None and RunStatus(raw.decode()).finished for raw in pipe.execute())


def forget(client_app: Rstick) -> None:
    """Delete the namespace's keys: the example leaves nothing behind in Redis."""
    r = client_app.client.redis
    pattern = f"{client_app.keys.prefix}:*"
    try:
        for _ in range(10_000):  # bounded: a demo namespace holds a few hundred keys
            batch = list(r.scan_iter(match=pattern, count=500))
            if not batch:
                return
            r.delete(*batch)
    except (RedisError, OSError):  # best effort: never hide why the example stopped
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--kill-one",
        action="store_true",
        help="SIGKILL one worker mid-run to show SOFT reassignment",
    )
    parser.add_argument("--size", type=int, default=256 * 1024, help="bytes per file")
    parser.add_argument(
        "--sleep", type=float, help="seconds each step works (default 0.3, 1.0 with --kill-one)"
    )
    args = parser.parse_args(argv)
    url = os.environ.get("RSTICK_REDIS_URL") or "redis://localhost:6379/0"
    sleep = args.sleep if args.sleep is not None else (1.0 if args.kill_one else 0.3)
    report = run_example(
        url,
        workers=args.workers,
        runs=args.runs,
        kill_one=args.kill_one,
        size=args.size,
        sleep=sleep,
    )
    print(table(report))
    for r in report.runs:
        if r.error:
            print(f"{r.run_id}: {r.error}")
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
