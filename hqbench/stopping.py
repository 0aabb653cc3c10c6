"""Stopping on SIGTERM and SIGINT: within seconds, with nothing half-written, exit code 128 + signal.

Lightning's trainer answers SIGTERM by only recording it (it is meant for SLURM requeueing in
``fit``), so a scheduler's SIGTERM during calibration, AdaRound or evaluation used to be swallowed.
:func:`stop_on_signals` makes both signals raise :class:`Stopped` in the main thread instead;
Lightning chains the handler it finds, so its own still runs first. Writers that must finish as a
whole (a results file with its CSV and Markdown siblings) run under :func:`deferred`, which holds a
signal until the block ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_pending: list[int] = []
_depth = 0


class Stopped(BaseException):
    """Raised in the main thread by SIGTERM or SIGINT (a BaseException, as KeyboardInterrupt is, so no
    ``except Exception`` swallows it)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        """143 for SIGTERM, 130 for SIGINT: the shell's convention, which schedulers read."""
        return 128 + self.signum


def _handler(signum: int, frame) -> None:
    if _depth:
        _pending.append(signum)
    else:
        raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
    """While the block runs, ``signums`` raise :class:`Stopped`; the previous handlers come back after.
    Outside the main thread (where Python cannot set handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def deferred():
    """Hold a stopping signal until the block ends, then raise it: the block is never cut in half."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending:
            signum = _pending[0]
            _pending.clear()
            raise Stopped(signum)
