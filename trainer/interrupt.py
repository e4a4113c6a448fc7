"""SIGINT / SIGTERM: the first asks the loop to stop after the current training step;
a second one exits at once (checkpoints are written atomically, so none is left corrupt).

Before training begins (imports, building), either signal ends the command at once: SIGTERM
is made to raise KeyboardInterrupt as SIGINT does, and the command exits 130. A process
started by a sweep or by `--nproc` stops (SIGTERM) when the process that started it dies,
even by SIGKILL.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
PARENT_ENV = "TRAINER_STOP_WITH_PARENT"  # set by a parent: its pid
WATCH_PARENT_S = 0.5  # how often a child started by a sweep or --nproc looks at its parent
# What signal.signal() takes and returns: a function, SIG_DFL / SIG_IGN, or None (not set
# from Python).
Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class StopRequests:
    """A context that turns the first SIGINT/SIGTERM into `requested = True`.

    Nested in another, it takes over that one's request, and hands its own back on exit.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Handler] = {}
        self._outer: StopRequests | None = None

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            outer = getattr(self._previous[signal.SIGINT], "__self__", None)
            if isinstance(outer, StopRequests):
                self._outer, self.requested = outer, outer.requested
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._outer is not None:
            self._outer.requested = self._outer.requested or self.requested

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            sys.stderr.write("second interrupt: exiting now\n")
            sys.stderr.flush()
            os._exit(130)
        self.requested = True
        if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 alone prints
            return
        name = signal.Signals(signum).name
        sys.stderr.write(
            f"{name}: finishing the current step, then saving last.pt (again to exit at once)\n"
        )
        sys.stderr.flush()


def terminate_as_interrupt() -> None:
    """SIGTERM raises KeyboardInterrupt, as SIGINT does: a command stopped before training
    (or outside it) ends at once with exit 130 instead of being killed (-15)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def stop_with_parent() -> None:
    """If a parent set PARENT_ENV to its pid: SIGTERM this process once that parent is gone,
    however it died (a thread watches for this process being handed to another parent).

    Not Linux's parent-death signal: it fires each time the thread that started this
    process exits, once per thread of a dying parent, and a second SIGTERM exits at once.
    The variable is removed, so this process's own children do not inherit it.
    """
    parent = os.environ.pop(PARENT_ENV, "")
    if not parent.isdigit():
        return
    if os.getppid() != int(parent):  # it died before this process got this far
        sys.stderr.write("the process that started this one is gone: not starting\n")
        sys.exit(130)
    threading.Thread(target=_watch_parent, args=(int(parent),), daemon=True).start()


def _watch_parent(parent: int) -> None:
    """Send this process SIGTERM once `parent` is no longer its parent (it died)."""
    while os.getppid() == parent:
        time.sleep(WATCH_PARENT_S)
    os.kill(os.getpid(), signal.SIGTERM)


def ignore_in_workers(_worker_id: int) -> None:
    """DataLoader worker_init_fn: workers leave SIGINT to the main process, which stops cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
