"""Stopping a training loop cleanly: SIGTERM / Ctrl-C become a checkpoint at the next step boundary, then
TrainingStopped; shared by the policy trainer and image_gen's generator trainer."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator


class TrainingStopped(Exception):
    """Training stopped on SIGTERM or SIGINT after writing a checkpoint; the same command resumes it."""


@contextlib.contextmanager
def stop_requests() -> Iterator[list[signal.Signals]]:
    """While open, SIGTERM and SIGINT (preemption, Ctrl-C) are recorded in the yielded list instead of killing the
    process mid-step; a second one acts at once as usual. No-op outside the main thread, where signals cannot be set."""
    received: list[signal.Signals] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {}

    def handle(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum))
        signal.signal(signum, previous[signum])  # a second signal is not deferred
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step (send it again to stop at once)", flush=True)

    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, handle)
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
