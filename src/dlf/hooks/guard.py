"""Telling a user's interrupt from plugin code that raises ``KeyboardInterrupt`` or exits.

Plugin code (an import, ``dlf_register``, a hook, a model factory) that raises ``SystemExit`` or
``KeyboardInterrupt`` is a failing plugin like any other: named, and the core's work kept. Only
a real Ctrl-C or SIGTERM stops the command. While :func:`user_interrupts` is active (the command
line holds it for every command) those signals raise :class:`UserInterrupt`, so the two can be
told apart; without it (dlf used as a library) any ``KeyboardInterrupt`` counts as the user's.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_watching = False


class UserInterrupt(KeyboardInterrupt):
    """Ctrl-C or SIGTERM received by the process: never counted as a plugin's failure."""


def _raise_user_interrupt(signum: int, frame: object) -> None:
    raise UserInterrupt


@contextmanager
def user_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`UserInterrupt` while this is active (main thread only;
    elsewhere signals are not delivered and this does nothing)."""
    global _watching
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        sig: signal.signal(sig, _raise_user_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    _watching, was_watching = True, _watching
    try:
        yield
    finally:
        _watching = was_watching
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def is_user_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is the user stopping the command rather than plugin code failing."""
    if isinstance(exc, UserInterrupt):
        return True
    return isinstance(exc, KeyboardInterrupt) and not _watching


def plugin_failure(exc: BaseException) -> bool:
    """Whether ``exc``, raised from plugin code, is that plugin's failure: any exception, a
    ``SystemExit`` or a ``KeyboardInterrupt`` it raised itself; not a user's interrupt nor
    ``GeneratorExit``."""
    return not is_user_interrupt(exc) and not isinstance(exc, GeneratorExit)
