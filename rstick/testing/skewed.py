"""``rstick`` for a process whose wall clock is skewed by Debian's libfaketime:

    FAKETIME_DONT_FAKE_MONOTONIC=1 faketime -f -11s \\
        python -m rstick.testing.skewed worker myapp.tasks:app ...

``WorkerProcesses.start(..., skew=-11)`` runs it so. Two things the plain
``rstick`` launcher does not need:

- ``faketime`` forks the command and waits for it, so signals sent to the
  process the test started reach the wrapper, not the worker: the harness
  signals the worker's own pid (``processes.py``), and the worker dies with its
  wrapper (PR_SET_PDEATHSIG), as the wrapper dies with the test.
- libfaketime 0.9.10 (Debian 12) turns Python 3.11's ``time.sleep`` into
  ``EINVAL`` when it leaves the monotonic clock alone: it shifts the absolute
  ``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`` deadline by the fake offset
  (wolfcw/libfaketime#426). Waits on locks and events, and asyncio, are not
  affected, so ``time.sleep`` waits on an event here. rstick itself never calls
  ``time.sleep`` in a worker; redis-py's retry backoff and the workload's steps do.
"""

from __future__ import annotations

import ctypes
import signal
import sys
import threading
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    threading.Event().wait(seconds)


def main() -> None:
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    time.sleep = _sleep  # type: ignore[assignment]  # float only, as the callers pass
    from rstick_cli.main import cli

    cli(prog_name="rstick")


if __name__ == "__main__":
    main()
