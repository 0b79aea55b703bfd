"""A wall-clock limit on a block of code, so a hostile input cannot keep a verifier busy.

SIGALRM interrupts the Python code between bytecodes (a torch op or a solver call in
progress finishes first; MILP calls carry their own time limit). Where signals are not
available (a thread other than the main one), the block runs without a limit.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class _Expired(BaseException):
    """Raised inside the block when its time is up. A BaseException, so the block's own
    `except Exception` handlers do not swallow it and report something else."""

    def __init__(self, error):
        super().__init__(error)
        self.error = error


@contextmanager
def deadline(seconds, error):
    """Raise `error` out of the block once `seconds` have passed (None: no limit). In nested
    deadlines the one that expires first raises its own error."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    if outer_left and outer_left <= seconds:
        yield  # an enclosing deadline fires first
        return

    def expire(signum, frame):
        raise _Expired(error)
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    except _Expired as e:
        if e.error is not error:
            raise
        raise error from None
    finally:
        left, _ = signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left:  # give the enclosing deadline what is left of its time
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (seconds - left), 1e-3))
