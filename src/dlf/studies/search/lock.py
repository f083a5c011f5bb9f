"""A mutex shared by every worker of a study, through the study's own Optuna storage.

Choosing the next width and asking its trials must be one atomic step, or two workers both see
room at a width and overshoot its budget (or ask the same slot twice). Optuna storages have one
operation that is atomic across processes and machines for every backend: creating a study whose
name is taken fails with :class:`~optuna.exceptions.DuplicatedStudyError` (a unique row in an RDB,
the replayed log order in a journal). So holding the lock is owning a marker study
``<name>.lock``; releasing it deletes that study. A holder that died leaves its marker behind; it
is taken over once its process is known gone (same host) or its stamp is older than the grace
period, and it is deleted by id, so a taken-over lock is never released by its old holder.
"""

from __future__ import annotations

import contextlib
import time
from types import TracebackType

from optuna.exceptions import DuplicatedStudyError
from optuna.storages import BaseStorage
from optuna.study import StudyDirection

from dlf.studies.search.liveness import holder_gone

HOLDER_ATTR = "dlf:holder"
STAMP_ATTR = "dlf:stamp"
POLL_SECONDS = 0.05


class StudyLock:
    """``with StudyLock(storage, name, worker, grace):`` — one holder at a time, study-wide."""

    def __init__(self, storage: BaseStorage, name: str, worker: str, grace_seconds: float) -> None:
        self.storage = storage
        self.name = f"{name}.lock"
        self.worker = worker
        self.grace_seconds = grace_seconds
        self.study_id: int | None = None
        self._unstamped_since: float | None = None  # when a holder was first seen unstamped

    def __enter__(self) -> StudyLock:
        while True:
            try:
                self.study_id = self.storage.create_new_study(
                    [StudyDirection.MAXIMIZE], study_name=self.name
                )
            except DuplicatedStudyError:
                self._take_over_if_stale()
                time.sleep(POLL_SECONDS)
                continue
            self.storage.set_study_system_attr(self.study_id, HOLDER_ATTR, self.worker)
            self.storage.set_study_system_attr(self.study_id, STAMP_ATTR, time.time())
            return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.study_id is not None:
            self._delete(self.study_id)
            self.study_id = None

    def _take_over_if_stale(self) -> None:
        try:
            study_id = self.storage.get_study_id_from_name(self.name)
            attrs = self.storage.get_study_system_attrs(study_id)
        except KeyError:  # released meanwhile
            return
        holder, stamp = attrs.get(HOLDER_ATTR), attrs.get(STAMP_ATTR)
        now = time.time()
        if stamp is None:  # created but not stamped yet: normally its holder is between 2 calls
            self._unstamped_since = self._unstamped_since or now
            stamp = self._unstamped_since
        if (holder is not None and holder_gone(str(holder))) or now - stamp > self.grace_seconds:
            self._delete(study_id)

    def _delete(self, study_id: int) -> None:
        with contextlib.suppress(KeyError):  # taken over (and deleted) by another worker
            self.storage.delete_study(study_id)
