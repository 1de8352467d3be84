"""Sticky file processing: three steps that share a file on the local disk.

``download`` writes a file into this worker's folder, ``process`` reads it
back from that same folder, ``cleanup`` deletes it. Nothing is copied between
steps: it only works because every step of a run executes on the worker that
took its first step. Run the workers with::

    rstick worker examples.sticky_files.workflow:app

The input is ``{"seed": int, "size": int, "sleep": float, "base": str}``
(all optional). The bytes are generated from the seed, so anyone can
recompute the expected checksum with :func:`expected_sha256`.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from rstick import Context, Rstick, StickyStrategy

# A short heartbeat and TTL so that a killed worker (start.py --kill-one) is
# noticed, and its runs move to another worker, within a few seconds.
app = Rstick(heartbeat=1.0, worker_ttl=4.0)

DEFAULT_BASE = "./demo_fs"
DEFAULT_SIZE = 256 * 1024
DEFAULT_SLEEP = 0.3
_INVERT = bytes(255 - b for b in range(256))


def generate(seed: int, size: int) -> bytes:
    """``size`` bytes that depend only on ``seed``: SHA-256 in counter mode."""
    chunks = []
    for n in range((size + 31) // 32):
        chunks.append(hashlib.sha256(f"{seed}:{n}".encode()).digest())
    return b"".join(chunks)[:size]


def transform(data: bytes) -> bytes:
    """The "processing": invert every byte."""
    return data.translate(_INVERT)


def expected_sha256(input: dict[str, Any]) -> str:
    """The checksum ``process`` must report for this input."""
    data = generate(int(input.get("seed", 0)), int(input.get("size", DEFAULT_SIZE)))
    return hashlib.sha256(transform(data)).hexdigest()


def folder(ctx: Context) -> Path:
    """This worker's folder: where the run's files live between its steps."""
    base = ctx.input.get("base") or os.environ.get("RSTICK_DEMO_FS") or DEFAULT_BASE
    return Path(base) / ctx.worker.id()


def slow_work(ctx: Context) -> None:
    time.sleep(float(ctx.input.get("sleep", DEFAULT_SLEEP)))


def download(ctx: Context) -> Path:
    """Stand-in for fetching a file: write the run's bytes to this worker's disk."""
    path = folder(ctx) / f"{ctx.run_id}.raw"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        generate(int(ctx.input.get("seed", 0)), int(ctx.input.get("size", DEFAULT_SIZE)))
    )
    return path


@app.workflow(sticky=StickyStrategy.SOFT)
class FileProcessing:
    @app.step()
    def download(self, ctx: Context) -> dict[str, Any]:
        slow_work(ctx)
        path = download(ctx)
        return {"worker": ctx.worker.id(), "bytes": path.stat().st_size}

    @app.step(parents=["download"])
    def process(self, ctx: Context) -> dict[str, Any]:
        slow_work(ctx)
        raw = folder(ctx) / f"{ctx.run_id}.raw"
        if ctx.reassigned:
            # The run moved here from a lost worker: its file is on that worker's disk.
            ctx.logger.info("run %s was reassigned: downloading again", ctx.run_id)
            download(ctx)
        elif not raw.exists():
            raise FileNotFoundError(
                f"{raw} is not on worker {ctx.worker.id()}: download ran on "
                f"{ctx.parent_output('download')['worker']} (the run did not stick)"
            )
        out = transform(raw.read_bytes())
        raw.with_suffix(".out").write_bytes(out)
        return {
            "worker": ctx.worker.id(),
            "sha256": hashlib.sha256(out).hexdigest(),
            "redownloaded": ctx.reassigned,
        }

    @app.step(parents=["process"])
    def cleanup(self, ctx: Context) -> dict[str, Any]:
        slow_work(ctx)
        deleted = []
        for suffix in (".raw", ".out"):
            path = folder(ctx) / f"{ctx.run_id}{suffix}"
            if path.exists():  # after a reassignment the files are on the lost worker
                path.unlink()
                deleted.append(path.name)
        return {"worker": ctx.worker.id(), "deleted": deleted}
