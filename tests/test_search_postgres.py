"""Studies on a real PostgreSQL server: concurrent workers lose and duplicate no trial, and a
worker that went silent on another machine has its trial retried.

Needs ``DLF_TEST_POSTGRES_URL`` (``export DLF_TEST_POSTGRES_URL=$(.ci/postgres.sh)``); run with
``pytest -m postgres``. Every test uses a fresh study name, so the database may be reused.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from dlf.engine.trace import open_trace
from dlf.studies.search import load_study_config, open_study, run_study
from dlf.studies.search.config import study_config_from_raw
from dlf.studies.search.liveness import HEARTBEAT_ATTR, WORKER_ATTR, trial_id
from dlf.studies.search.storage import open_storage, with_installed_driver
from tests.conftest import study_raw
from tests.test_search import (  # noqa: F401
    REPO,
    assert_no_duplicates_and_within_budget,
    one_thread,
    trials_of,
)

URL = os.environ.get("DLF_TEST_POSTGRES_URL")
pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not URL, reason="DLF_TEST_POSTGRES_URL is not set (.ci/postgres.sh)"),
]


def fresh_raw(tmp_path, url=None, **search):
    name = f"pg_{uuid.uuid4().hex[:10]}"
    return study_raw(tmp_path, name=name, storage=url or URL, **search)


@pytest.fixture
def fresh_database():
    """The URL of a new, empty database on the test server (Optuna's schema not created yet),
    dropped afterwards."""
    import sqlalchemy

    admin = sqlalchemy.create_engine(with_installed_driver(URL), isolation_level="AUTOCOMMIT")
    name = f"fresh_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    yield URL.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as connection, contextlib.suppress(sqlalchemy.exc.DBAPIError):
        connection.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


OPEN = textwrap.dedent(
    """
    import sys
    from dlf.studies.search import load_study_config
    from dlf.studies.search.storage import open_storage, open_studies
    config = load_study_config(sys.argv[1])
    open_studies(config, open_storage(config))
    """
)


def test_commands_started_at_once_on_a_fresh_database_all_create_the_schema(tmp_path):
    """Issue 16.3: of 3 commands started at once on a fresh database, 1–2 exited with
    ``UniqueViolation`` while creating Optuna's tables (7 of 8 tries). 5 at once, 3 times."""
    import sqlalchemy

    admin = sqlalchemy.create_engine(with_installed_driver(URL), isolation_level="AUTOCOMMIT")
    for attempt in range(3):
        database = f"fresh_{uuid.uuid4().hex[:10]}"
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"CREATE DATABASE {database}"))
        path = tmp_path / f"study{attempt}.yaml"
        url = URL.rsplit("/", 1)[0] + "/" + database
        path.write_text(yaml.safe_dump(fresh_raw(tmp_path, url=url)))
        commands = [
            subprocess.Popen([sys.executable, "-c", OPEN, str(path)], stderr=subprocess.PIPE)
            for _ in range(5)
        ]
        for command in commands:
            _, err = command.communicate(timeout=120)
            assert command.returncode == 0, err.decode()[-2000:]
        config = load_study_config(path)
        names = optuna.get_all_study_names(open_storage(config))
        assert sorted(names) == [f"{config.name}.dynamical", f"{config.name}.static"]
        with admin.connect() as connection, contextlib.suppress(sqlalchemy.exc.DBAPIError):
            connection.execute(sqlalchemy.text(f"DROP DATABASE {database} WITH (FORCE)"))
    admin.dispose()


def assert_nothing_lost_or_duplicated(config, directory):
    """Every trial finished exactly once, no (width, A, T) was evaluated twice, and every stored
    value is what its members measured in the trace."""
    trials = {kind: trials_of(config, kind) for kind in ("static", "dynamical")}  # search trials
    storage = open_storage(config)
    for kind, those in trials.items():
        assert those, kind
        every = optuna.load_study(study_name=f"{config.name}.{kind}", storage=storage).trials
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in every)
        assert sorted(t.number for t in every) == list(range(len(every)))
    points = [
        (t.params["width"], t.params["amplitude"], t.params["period"]) for t in trials["dynamical"]
    ]
    assert len(set(points)) == len(points)
    ds = open_study(directory)
    assert ds.sizes["trial"] == sum(len(t) for t in trials.values())
    done = ds.where(ds["state"] == "COMPLETE", drop=True)
    for row in done["trial"].values:
        trial = done.sel(trial=row)
        trace = open_trace(directory / str(trial["trace"].values))
        members = np.flatnonzero((trace["amplitude"] == trial["amplitude"]).values)
        if trial["kind"] == "dynamical":
            members = np.flatnonzero(
                (
                    (trace["amplitude"] == trial["amplitude"])
                    & (trace["period"] == trial["period"])
                ).values
            )
        at = trace["val_accuracy"].sel(eval_step=int(trial["measured_step"])).values[members]
        assert float(trial["value"]) == pytest.approx(at.mean())


def test_two_worker_processes_share_a_postgres_study(tmp_path):
    config = study_config_from_raw(fresh_raw(tmp_path, trials=6))
    result = run_study(config, workers=2)
    assert_nothing_lost_or_duplicated(config, result.directory)


RUN = textwrap.dedent(
    """
    import sys, torch
    from dlf.studies.search import load_study_config, run_study
    torch.set_num_threads(1)
    run_study(load_study_config(sys.argv[1]))
    """
)


def test_three_independent_commands_share_a_postgres_study_and_agree_with_one_worker(
    tmp_path, fresh_database
):
    """What three machines do: the same command started three times against one fresh database
    (creating its schema at once). No trial lost, duplicated or over budget, and the same
    answer as one worker with the embedded journal on the same seeds."""
    raw = fresh_raw(tmp_path, url=fresh_database, trials=6)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    commands = [
        subprocess.Popen([sys.executable, "-c", RUN, str(path)], cwd=REPO, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for command in commands:
        _, err = command.communicate(timeout=300)
        assert command.returncode == 0, err.decode()[-2000:]
    config = load_study_config(path)
    assert_nothing_lost_or_duplicated(config, tmp_path / config.name)
    assert_no_duplicates_and_within_budget(config)
    alone = study_config_from_raw({**raw, "search": {**raw["search"], "storage": None}})
    alone = alone.with_root(tmp_path / "alone")
    one = run_study(alone)
    shared = run_study(config)  # nothing left to do: summarises the shared study
    for kind in ("dynamical", "static"):
        assert shared.findings[kind].w_star == one.findings[kind].w_star


def test_a_silent_worker_elsewhere_has_its_trial_retried(tmp_path):
    config = study_config_from_raw(
        fresh_raw(tmp_path, static_baseline=False, heartbeat_seconds=1, grace_seconds=3)
    )
    run_study(config)
    storage = open_storage(config)
    study = optuna.load_study(study_name=f"{config.name}.dynamical", storage=storage)
    trial = study.ask()  # a trial a worker on another machine started and then went silent
    trial.suggest_int("width", 2, 8, log=True)
    trial.suggest_float("amplitude", 2, 10, log=True)
    trial.suggest_float("period", 10, 40, log=True)
    tid = trial_id(storage, study, trial.number)
    storage.set_trial_system_attr(tid, WORKER_ATTR, "elsewhere:4242:gone")
    storage.set_trial_system_attr(tid, HEARTBEAT_ATTR, time.time() - 10)

    run_study(config)

    after = {t.number: t for t in trials_of(config)}
    assert after[trial.number].state == TrialState.FAIL
    retries = [t for t in after.values() if t.user_attrs.get("retry_of") == trial.number]
    assert len(retries) == 1 and retries[0].params == after[trial.number].params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
