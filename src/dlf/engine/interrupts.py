"""Ctrl-C and SIGTERM around what must not be cut short: a file write waits for the write to
end, and a run or study turns SIGTERM into the same clean stop as Ctrl-C."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from dlf.hooks.guard import UserInterrupt


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C or SIGTERM during a file write takes effect once the write is done: HDF5 is not
    safe to interrupt (a write cut short could hang the next one). The signal is then raised
    again for its own handler. Only the main thread receives signals; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {
        sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in signals
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    if received:
        signal.raise_signal(received[0])


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a batch system's stop, ``kill``) is handled like Ctrl-C: a run writes its
    trace of the finished steps, a study releases its trials for a retry and writes its results.
    Only the main thread can handle signals; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise UserInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
