"""Where a study's trials live: the Optuna storage, the two Optuna studies, and their identity.

The default is a journal file (``optuna.storages.journal``) in the study folder: no server, safe
for several local processes. A URL (``postgresql://…``, ``sqlite:///…``) selects Optuna's RDB
storage, which workers on several machines can share. Each study remembers what its trials
measure (:func:`~dlf.studies.search.config.setup_fingerprint`); re-opening it with a different
setup is a :class:`dlf.ConfigError` that leaves the stored study untouched.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage

from dlf.errors import ConfigError
from dlf.studies.search.config import StudyConfig, setup_fingerprint

JOURNAL_NAME = "optuna.journal"
SETUP_ATTR = "dlf_setup"
CONFIG_ATTR = "dlf_config"
KINDS = ("static", "dynamical")  # the static baseline and the dynamical loss, one study each

optuna.logging.set_verbosity(logging.WARNING)


def study_dir(config: StudyConfig) -> Path:
    return Path(config.run.output.root) / config.name


def storage_label(config: StudyConfig) -> str:
    """The storage as users may name it (passwords hidden), for messages and the report."""
    url = config.search.storage
    if url is None:
        return str(study_dir(config) / JOURNAL_NAME)
    if "://" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://…"


def open_storage(config: StudyConfig) -> BaseStorage:
    """The configured storage; one that cannot be opened is a ConfigError on search.storage."""
    url = config.search.storage
    try:
        if url is None or "://" not in url:
            path = study_dir(config) / JOURNAL_NAME if url is None else Path(url)
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        engine_kwargs: dict[str, Any] = {}
        if url.startswith("postgresql"):
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
        return RDBStorage(with_installed_driver(url), engine_kwargs=engine_kwargs)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            "search.storage", f"cannot open {storage_label(config)}: {reason}"
        ) from None


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
