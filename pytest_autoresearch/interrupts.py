"""Signals: while a session runs, SIGTERM stops it the way Ctrl-C does (KeyboardInterrupt), and the
few steps that must not be cut in half (landing a keep, appending a record) hold both signals until done.

Why: a scheduler or `kill` sends SIGTERM, whose default action ends the process at once -- possibly
between two renames of a keep. As a KeyboardInterrupt it unwinds like Ctrl-C: the runner's process group
is killed, an `interrupted` record is written, and pytest reports the session as interrupted.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HELD = (signal.SIGINT, signal.SIGTERM)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")


def _already_stopping(signum: int, frame: FrameType | None) -> None:
    os.write(2, f"autoresearch: {signal.Signals(signum).name} received: already stopping (the iteration in "
                f"progress is recorded); the summary follows\n".encode())


def interrupt_reason(error: BaseException) -> str:
    """What stopped us: our handlers name the signal; Python's own Ctrl-C handler leaves the message empty."""
    return str(error) or "SIGINT received"


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # only it may set signal handlers


class TerminateAsInterrupt:
    """Installs the SIGTERM -> KeyboardInterrupt handler for the session, and (wind_down) the quiet handlers
    of its end; restore() puts the old ones back."""

    def __init__(self) -> None:
        self.installed = False
        self.previous: object = signal.SIG_DFL
        self.before_wind_down: dict[int, object] = {}

    def install(self) -> None:
        if _in_main_thread() and not self.installed:
            self.previous = signal.signal(signal.SIGTERM, _raise_interrupt)
            self.installed = True

    def wind_down(self) -> None:
        """Once the session is interrupted, a second SIGINT or SIGTERM says that it is already stopping: raised,
        it would land in pytest's own teardown (its summary, the unconfigure hooks) as a raw traceback."""
        if _in_main_thread() and not self.before_wind_down:
            self.before_wind_down = {signum: signal.signal(signum, _already_stopping) for signum in HELD}

    def restore(self) -> None:
        for signum, handler in self.before_wind_down.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.before_wind_down = {}
        if self.installed:
            signal.signal(signal.SIGTERM, self.previous if self.previous is not None else signal.SIG_DFL)
            self.installed = False


@contextmanager
def held_signals() -> Iterator[None]:
    """Run the block to its end even if SIGINT/SIGTERM arrive; then raise KeyboardInterrupt if one did."""
    if not _in_main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {signum: signal.signal(signum, hold) for signum in HELD}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if received:  # even when the block failed: the user asked to stop
            raise KeyboardInterrupt(f"{signal.Signals(received[0]).name} received")
