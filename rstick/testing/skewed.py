"""``rstick`` for a process whose wall clock is skewed by Debian's libfaketime:

    LD_PRELOAD=.../libfaketimeMT.so.1 FAKETIME=-11s FAKETIME_DONT_FAKE_MONOTONIC=1 \\
        python -m rstick.testing.skewed worker myapp.tasks:app ...

``WorkerProcesses.start(..., skew=-11)`` runs it so (``processes.faketime_env``).
What the plain ``rstick`` launcher does not need:

- the worker dies with the process that started it (PR_SET_PDEATHSIG), as under
  the ``faketime`` wrapper it died with that;
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
