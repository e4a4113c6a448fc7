"""SIGINT / SIGTERM: the first asks the loop to stop after the current optimizer step;
a second one exits at once (checkpoints are written atomically, so none is left corrupt)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType, TracebackType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """A context that turns the first SIGINT/SIGTERM into `requested = True`."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            sys.stderr.write("second interrupt: exiting now\n")
            sys.stderr.flush()
            os._exit(130)
        self.requested = True
        name = signal.Signals(signum).name
        sys.stderr.write(
            f"{name}: finishing the current step, then saving last.pt (again to exit at once)\n"
        )
        sys.stderr.flush()


def ignore_in_workers(_worker_id: int) -> None:
    """DataLoader worker_init_fn: workers leave SIGINT to the main process, which stops cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
