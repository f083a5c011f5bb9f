"""Where a study's trials live: the Optuna storage, the two Optuna studies, and their identity.

The default is a journal file (``optuna.storages.journal``) in the study folder: no server, safe
for several local processes. A URL (``postgresql://…``, ``sqlite:///…``) selects Optuna's RDB
storage, which workers on several machines can share. Each study remembers what its trials
measure (:func:`~dlf.studies.search.config.setup_fingerprint`); re-opening it with a different
setup is a :class:`dlf.ConfigError` that leaves the stored study untouched.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import (
    JournalFileBackend,
    JournalFileSymlinkLock,
    JournalStorage,
)

from dlf.config import redact_url as redact
from dlf.config import url_secrets, with_encoded_password
from dlf.engine.interrupts import interrupts_deferred
from dlf.errors import ConfigError, OutputError
from dlf.studies.search.config import StudyConfig, setup_fingerprint

JOURNAL_NAME = "optuna.journal"
STORAGE_ENV = "DLF_STORAGE_URL"  # the storage URL when search.storage is unset
SETUP_ATTR = "dlf_setup"
CONFIG_ATTR = "dlf_config"
KINDS = ("static", "dynamical")  # the static baseline and the dynamical loss, one study each

optuna.logging.set_verbosity(logging.WARNING)


def study_dir(config: StudyConfig) -> Path:
    return Path(config.run.output.root) / config.name


def storage_url(config: StudyConfig) -> str | None:
    """``search.storage``, else the environment's :data:`STORAGE_ENV` (which keeps a database
    password out of config files), else None: the journal file in the study folder."""
    return config.search.storage or os.environ.get(STORAGE_ENV) or None


def storage_label(config: StudyConfig) -> str:
    """The storage as users may name it (credentials hidden), for messages and the report."""
    url = storage_url(config)
    return str(study_dir(config) / JOURNAL_NAME) if url is None else redact(url)


def open_storage(config: StudyConfig) -> BaseStorage:
    """The configured storage; one that cannot be opened is a ConfigError on search.storage
    (whose message never shows the password)."""
    url = storage_url(config)
    try:
        if url is None or "://" not in url:
            path = study_dir(config) / JOURNAL_NAME if url is None else Path(url)
            path.parent.mkdir(parents=True, exist_ok=True)
            repair_journal(path)
            return JournalStorage(JournalFile(str(path)))
        engine_kwargs: dict[str, Any] = {}
        if url.startswith("postgresql"):
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
        return open_rdb(with_installed_driver(with_encoded_password(url)), engine_kwargs)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        for secret in url_secrets(url or ""):  # a driver's message may quote any of them
            reason = reason.replace(secret, "***").replace(quote(secret, safe=""), "***")
        raise ConfigError(
            "search.storage", f"cannot open {storage_label(config)}: {reason}"
        ) from None


SCHEMA_LOCK_KEY = 0x646C665F736368  # "dlf_sch": PostgreSQL advisory lock of schema creation
SCHEMA_ATTEMPTS = 5


def open_rdb(url: str, engine_kwargs: dict[str, Any]) -> RDBStorage:
    """Optuna's RDB storage, whose first opening creates its tables. Commands started at once
    on a fresh database raced there (``UniqueViolation`` on PostgreSQL's catalogue): on
    PostgreSQL they take turns under an advisory lock; on any database a creation that lost
    such a race (an ``IntegrityError``) is simply tried again, finding the tables made."""
    from sqlalchemy.exc import IntegrityError

    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            with _schema_lock(url, engine_kwargs):
                return RDBStorage(url, engine_kwargs=engine_kwargs)
        except IntegrityError:
            if attempt == SCHEMA_ATTEMPTS - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


@contextmanager
def _schema_lock(url: str, engine_kwargs: dict[str, Any]) -> Iterator[None]:
    """Held while Optuna creates (or checks) its schema: a session-level advisory lock on
    PostgreSQL, released with its connection however the holder ends; elsewhere nothing."""
    if not url.startswith("postgresql"):
        yield
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool, **engine_kwargs)
    try:
        with engine.connect() as connection:
            key = {"key": SCHEMA_LOCK_KEY}
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), key)
            connection.commit()
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), key)
                connection.commit()
    finally:
        engine.dispose()


class FileLock(Protocol):
    """Optuna's journal file locks (``JournalFileSymlinkLock``, ``JournalFileOpenLock``)."""

    def acquire(self) -> bool: ...

    def release(self) -> None: ...


@contextmanager
def held(lock: FileLock) -> Iterator[None]:
    """Hold one of Optuna's journal file locks for a block, through their public
    ``acquire``/``release`` (what Optuna's private ``get_lock_file`` does)."""
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def repair_journal(path: Path) -> None:
    """Cut a torn last record (a full disk or a kill mid-append) off the journal, saving its
    bytes to ``<journal>.torn`` and saying so on stderr; Optuna would otherwise append after
    it and fail to read the journal ever after. Done under the journal's own lock (see
    :meth:`JournalFile.append_logs` for why interrupts wait)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with interrupts_deferred(), held(JournalFileSymlinkLock(str(path))):
        data = path.read_bytes()
        keep = data.rfind(b"\n", 0, len(data) - 1) + 1 if data.endswith(b"\n") else None
        if keep is None:
            keep = data.rfind(b"\n") + 1
        else:
            try:
                json.loads(data[keep:])
                return
            except ValueError:
                pass
        torn = data[keep:]
        backup = path.with_name(path.name + ".torn")
        with backup.open("ab") as file:
            file.write(torn if torn.endswith(b"\n") else torn + b"\n")
        os.truncate(path, keep)
    print(
        f"dlf-study: warning: {path} ended in a torn record ({len(torn)} bytes, from a full "
        f"disk or a kill); moved it to {backup}, the records before it are kept",
        file=sys.stderr,
    )


class JournalFile(JournalFileBackend):
    """Optuna's journal file, whose failed append (a full disk) takes back what it wrote, so
    the journal keeps only whole records, and is one :class:`~dlf.errors.OutputError` line.

    Ctrl-C or SIGTERM (a worker whose parent died) waits until the append and its lock are
    done: Optuna's symlink lock is not safe to interrupt. Interrupted while waiting, it removes
    the lock even when another process holds it; between its rename and unlink, it fails with
    ``FileNotFoundError``, which failed the trial instead of releasing it for a retry."""

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        path = Path(self._file_path)
        data = b"".join(json.dumps(log, separators=(",", ":")).encode() + b"\n" for log in logs)
        try:
            with interrupts_deferred(), held(self._lock):
                size = path.stat().st_size
                try:
                    self._append(data)
                except OSError:
                    os.truncate(path, size)  # shrinking needs no space
                    raise
        except OSError as exc:
            raise OutputError(path, exc) from None

    def _append(self, data: bytes) -> None:
        """Append ``data`` and push it to the disk (Optuna's own way: flush, fsync)."""
        with open(self._file_path, "ab") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())


def with_installed_driver(url: str) -> str:
    """``postgresql://`` with the PostgreSQL driver that is installed: SQLAlchemy 2.1 assumes
    psycopg 3, the ``postgres`` extra installs psycopg2."""
    if url.startswith("postgresql://"):
        for module in ("psycopg", "psycopg2"):
            if importlib.util.find_spec(module) is not None:
                return f"postgresql+{module}://" + url.removeprefix("postgresql://")
    return url


def study_name(config: StudyConfig, kind: str) -> str:
    return f"{config.name}.{kind}"


def open_studies(config: StudyConfig, storage: BaseStorage) -> dict[str, optuna.Study]:
    """Load (or create) the static-baseline and dynamical studies, checking that a stored study
    was made with the same setup. Every check happens before anything is written."""
    setup = setup_fingerprint(config)
    kinds = [k for k in KINDS if k != "static" or config.search.static_baseline]
    existing = set(optuna.get_all_study_names(storage))
    for kind in kinds:
        name = study_name(config, kind)
        if name in existing:
            stored = optuna.load_study(study_name=name, storage=storage).user_attrs.get(SETUP_ATTR)
            if stored is not None:
                _check_same_setup(name, stored, setup)
    studies = {}
    for kind in kinds:
        study = optuna.create_study(
            storage=storage,
            study_name=study_name(config, kind),
            direction="maximize",
            load_if_exists=True,
        )
        if SETUP_ATTR not in study.user_attrs:
            study.set_user_attr(SETUP_ATTR, setup)
            study.set_user_attr(CONFIG_ATTR, config.run.model_dump(mode="json"))
        studies[kind] = study
    return studies


def _check_same_setup(name: str, stored: dict[str, Any], setup: dict[str, Any]) -> None:
    for key in sorted(set(stored) | set(setup)):
        old, new = stored.get(key, "(unset)"), setup.get(key, "(unset)")
        if old != new:
            raise ConfigError(
                key,
                f"study {name!r} already exists with {old!r}, not {new!r}; "
                "use another name (or output root), or delete the old study",
            )
