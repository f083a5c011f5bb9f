"""Errors that the command line turns into one-line messages."""

from __future__ import annotations


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
