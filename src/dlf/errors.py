"""Errors that the command line turns into one-line messages."""

from __future__ import annotations

import errno


class DlfError(Exception):
    """Base of the errors a user can cause and fix; the CLI prints them on one line."""

    exit_code = 1


class ConfigError(DlfError):
    """A config value is wrong: names the dotted field and what is allowed (exit code 2)."""

    exit_code = 2

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class PluginError(DlfError):
    """A plugin raised during a run; names the plugin and the step."""

    def __init__(self, plugin: str, step: int | None, cause: BaseException) -> None:
        self.plugin = plugin
        self.step = step
        where = f" at step {step}" if step is not None else ""
        super().__init__(f"plugin {plugin!r} failed{where}: {type(cause).__name__}: {cause}")


def first_line(exc: BaseException, *, typed: bool = True) -> str:
    """``exc`` on one line, for a message that quotes it: ``Type: first line of its text``, or
    (``typed=False``) the first line of its text alone; the type's name where it has no text."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if not line:
        return type(exc).__name__
    return f"{type(exc).__name__}: {line}" if typed else line


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full."""
    return getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)


class InputError(DlfError):
    """A file given to read is not what it should be (missing, not NetCDF, damaged, not a
    dlf-study file): names the file (exit code 2)."""

    exit_code = 2

    def __init__(self, path: object, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


class OutputError(DlfError):
    """A file could not be written (disk full, read-only folder); the previous file is kept
    (exit code 2: the user frees space or picks another ``--out``)."""

    exit_code = 2

    def __init__(self, path: object, cause: BaseException) -> None:
        self.path = path
        if is_disk_full(cause):
            why = "disk full"
        else:
            why = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        super().__init__(f"cannot write {path}: {why}; the previous version of it is kept")


class DlfWarning(UserWarning):
    """Something the user should know, that does not stop the command (one line on the CLI)."""
