"""A worker as a process: its own event loop, SIGINT and SIGTERM to drain, a second
one to exit at once.

Not ``asyncio.run``: at its end that waits for every task, and a step that ignores
its cancellation would keep the process from ever exiting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("rstick.worker")


def serve(worker: Worker) -> int:
    """Run ``worker`` until a stop; returns its exit code after a clean drain."""

    def on_signal(sig: signal.Signals) -> None:
        if worker.stopping:
            log.warning("second stop signal: exiting now")
            os._exit(128 + sig)  # as a shell says a process ended by it: 130 for Ctrl-C
        worker.request_stop()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        await worker.main()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        for task in asyncio.all_tasks(loop):
            task._log_destroy_pending = False  # type: ignore[attr-defined]  # abandoned on purpose
        loop.close()
    return worker.exit_code
