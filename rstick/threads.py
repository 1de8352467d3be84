"""The threads that run a worker's ``def`` steps.

A thread cannot be killed: a sync step that ignores its timeout keeps its thread
until it returns, if ever. So this pool starts a thread whenever none is idle (the
worker's slots already bound how many steps run at once), and a hung step never
takes capacity from the others; the worker counts hung steps and stops past its
limit (``Worker(max_hung=...)``). The threads are daemons: a hung one never holds
up the process's exit, as ``concurrent.futures.ThreadPoolExecutor``'s would.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_Work = tuple[Callable[[], Any], "Future[Any]"]


class StepThreads:
    def __init__(self, name: str) -> None:
        self.name = name
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._started = 0

    @property
    def started(self) -> int:
        """Threads started so far (idle, busy or hung)."""
        return self._started

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                self._started += 1
                threading.Thread(
                    target=self._serve, name=f"{self.name}-{self._started}", daemon=True
                ).start()
        self._work.put((fn, future))
        return future

    def _serve(self) -> None:
        while (work := self._work.get()) is not None:
            fn, future = work
            del work
            if future.set_running_or_notify_cancel():
                try:
                    result = fn()
                except BaseException as exc:  # the step's own, SystemExit included
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del fn, future
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Let idle threads end; busy or hung ones end when their step returns."""
        for _ in range(self._started):
            self._work.put(None)
