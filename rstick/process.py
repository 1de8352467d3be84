"""A worker as a process: its own event loop, SIGINT and SIGTERM to drain, a second
one to exit at once.

The signals are taken on a thread of their own (blocked everywhere else), so that
a stop is bounded even while an async def step blocks the event loop: past the
drain timeout and a hand-off, a watchdog exits 1.

Not ``asyncio.run``: at its end that waits for every task, and a step that ignores
its cancellation would keep the process from ever exiting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from typing import TYPE_CHECKING

from .drain import STOP_GRACE

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("rstick.worker")

# Seconds a stop may take past its drain: the last outcomes, then the hand-off.
HAND_OFF_GRACE = 5.0
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
LISTEN_TICK = 0.5  # seconds between two looks of the signal thread at whether the worker ended


def serve(worker: Worker) -> int:
    """Run ``worker`` until a stop; returns its exit code after a clean drain."""
    loop = asyncio.new_event_loop()
    stopping, done = threading.Event(), threading.Event()

    def on_signal(signum: int, _: object = None) -> None:
        if stopping.is_set() or worker.stopping:
            log.warning("second stop signal: exiting now")
            os._exit(128 + signum)  # as a shell says a process ended by it: 130 for Ctrl-C
        stopping.set()
        loop.call_soon_threadsafe(worker.request_stop)
        threading.Thread(target=watchdog, name="rstick-stop-watchdog", daemon=True).start()

    def listen() -> None:
        """Take the stop signals on a thread of their own: the event loop may be
        blocked by an async def step, and so may the main thread."""
        while not done.is_set():
            info = signal.sigtimedwait(STOP_SIGNALS, LISTEN_TICK)
            # After a SIGSTOP and SIGCONT, CPython (3.11) returns an uninitialized
            # struct here: only a stop signal is one.
            if info is not None and info.si_signo in STOP_SIGNALS:
                on_signal(info.si_signo)

    def watchdog() -> None:
        """The stop takes the drain timeout and a hand-off, at most: past that, the
        loop is blocked (an async def step doing blocking work) and cannot drain."""
        if not done.wait(worker.drain_timeout + STOP_GRACE + HAND_OFF_GRACE):
            log.error(
                "could not stop within --drain-timeout (%gs): the event loop is blocked "
                "(an async def step doing blocking work?); exiting now, its runs are "
                "recovered as after a crash",
                worker.drain_timeout,
            )
            os._exit(1)

    # Blocked here, so in every thread started from now on (they inherit the mask):
    # the signals wait for ``listen``. A thread that was there before gets them
    # through the handler, which runs on the main thread.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    listener = threading.Thread(target=listen, name="rstick-signals", daemon=True)
    listener.start()
    try:
        loop.run_until_complete(worker.main())
    finally:
        done.set()
        listener.join(2 * LISTEN_TICK)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for task in asyncio.all_tasks(loop):
            task._log_destroy_pending = False  # type: ignore[attr-defined]  # abandoned on purpose
        loop.close()
    return worker.exit_code
