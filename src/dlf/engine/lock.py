"""The lock that keeps two runs from writing one trace at the same time."""

from __future__ import annotations

import os
from pathlib import Path

from dlf.errors import ConfigError, OutputError, is_disk_full

try:
    import fcntl
except ImportError:  # not POSIX: runs aimed at one trace are not guarded
    fcntl = None  # type: ignore[assignment]


class TraceLock:
    """An exclusive lock on one trace path for the duration of a run (``flock`` on a hidden
    ``.<name>.lock`` beside it). The kernel drops it when the process dies, so a killed run
    never leaves a stale lock; a second run aimed at the same trace gets a one-line error.
    A run that ends removes the file (while still holding it), and a locker that finds its
    file unlinked under it tries again, so no two runs ever hold the same path."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.file = self.path.with_name(f".{self.path.name}.lock")
        self._fd: int | None = None

    def acquire(self) -> TraceLock:
        while not self._try_acquire():  # the file was removed by the holder that just ended
            pass
        return self

    def _try_acquire(self) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if is_disk_full(exc):
                raise OutputError(self.file, exc) from None
            raise ConfigError(
                "output.root", f"cannot write in {self.path.parent}: {exc.strerror or exc}"
            ) from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise ConfigError(
                    "name",
                    f"another run (pid {holder}) is writing {self.path}; wait for it to end, "
                    "or give this run another name or --out",
                ) from None
        if not _same_file(fd, self.file):
            os.close(fd)
            return False
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:  # a full disk: the lock is held, only its holder's PID is lost
            os.close(fd)
            raise OutputError(self.file, exc) from None
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            self.file.unlink(missing_ok=True)  # still held: no one can be between open and lock
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> TraceLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open ``fd`` is still the file at ``path`` (not unlinked or replaced)."""
    try:
        held, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)
