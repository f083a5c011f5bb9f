"""Which running trials still have a live worker, and retrying those that do not.

The journal storage has no heartbeats of its own, so one mechanism serves every storage: a
worker stamps each trial it evaluates with its identity and refreshes a heartbeat time from a
background thread. A RUNNING trial is stale when its heartbeat is older than the grace period,
or at once when its worker ran on this host and that process is gone (a study killed and
re-run resumes without waiting). A stale trial is failed and re-enqueued with the same
parameters; only the process whose FAIL succeeds enqueues, so a trial is never retried twice.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import datetime

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

WORKER_ATTR = "dlf:worker"
HEARTBEAT_ATTR = "dlf:heartbeat"
RETRY_OF = "retry_of"  # a retried trial: the number of the trial first asked with its parameters
FAILED_ATTR = "dlf:failed"  # a failed trial's system attribute: why (released, or the error)
WIDTH = "width"
SLOT = "slot"  # user attribute: the trial is the slot-th (A, T) proposal at its width
ROLE = "role"  # user attribute: set on confirmation trials (dlf.studies.search.confirm)

HOST = socket.gethostname()


def worker_id() -> str:
    """``host:pid:token`` for this process; the token tells apart processes that reuse a pid."""
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def trial_id(storage: BaseStorage, study: optuna.Study, number: int) -> int:
    """The storage's id of trial ``number`` of ``study``, through the public storage API."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def claim(storage: BaseStorage, trial_id: int, worker: str) -> None:
    """Mark a freshly asked trial as this worker's and give it its first heartbeat."""
    storage.set_trial_system_attr(trial_id, WORKER_ATTR, worker)
    storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())


class Heartbeat:
    """While entered, refreshes the heartbeat of ``trial_ids`` every ``interval`` seconds."""

    def __init__(self, storage: BaseStorage, trial_ids: Iterable[int], interval: float) -> None:
        self.storage = storage
        self.trial_ids = list(trial_ids)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="dlf-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            for trial_id in self.trial_ids:
                try:
                    self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
                except (UpdateFinishedTrialError, KeyError):
                    continue  # finished (or taken over as stale) meanwhile

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def holder_gone(worker: str) -> bool:
    """Whether the process ``worker`` (a :func:`worker_id`) ran on this host and has exited."""
    host, pid, _ = worker.rsplit(":", 2)
    return host == HOST and int(pid) != os.getpid() and _process_gone(int(pid))


def is_stale(trial: FrozenTrial, grace_seconds: float, now: float | None = None) -> bool:
    """Whether a RUNNING trial's worker is known dead or silent for longer than the grace."""
    if trial.state != TrialState.RUNNING:
        return False
    now = time.time() if now is None else now
    worker = trial.system_attrs.get(WORKER_ATTR)
    if isinstance(worker, str) and holder_gone(worker):
        return True
    beat = trial.system_attrs.get(HEARTBEAT_ATTR)
    if beat is None:  # died between ask and claim: judge by the start time
        start = trial.datetime_start or datetime.now()
        beat = start.timestamp()
    return now - float(beat) > grace_seconds


def retry(study: optuna.Study, storage: BaseStorage, trial: FrozenTrial, reason: str) -> bool:
    """Fail ``trial`` and enqueue a fresh trial with its parameters; False if another process
    finished or retried it first. ``storage`` is the one ``study`` was opened on. A lost
    confirmation round is only failed: the next round asked is the same one again."""
    tid = trial_id(storage, study, trial.number)
    try:
        storage.set_trial_system_attr(tid, FAILED_ATTR, f"released ({reason})")
        if not storage.set_trial_state_values(tid, TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False
    if trial.params and trial.user_attrs.get(ROLE) is None:  # a lost confirmation is redone
        width = trial.params.get(WIDTH, trial.user_attrs.get(WIDTH))
        first = trial.user_attrs.get(RETRY_OF, trial.number)  # the trial first asked
        attrs = {RETRY_OF: first, WIDTH: width, SLOT: trial.user_attrs.get(SLOT)}
        study.enqueue_trial(trial.params, user_attrs=attrs)
    return True


def is_released(trial: FrozenTrial) -> bool:
    """Whether a FAIL trial was released by :func:`retry` (an interrupt, a lost worker, a full
    disk) rather than failed by an error of its run."""
    return str(trial.system_attrs.get(FAILED_ATTR, "")).startswith("released")


def recover_stale(study: optuna.Study, storage: BaseStorage, grace_seconds: float) -> list[int]:
    """Retry every stale RUNNING trial of ``study``; returns the numbers retried."""
    now = time.time()
    retried = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_stale(trial, grace_seconds, now) and retry(study, storage, trial, "worker lost"):
            retried.append(trial.number)
    return retried
