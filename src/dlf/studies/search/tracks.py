"""The two tracks of a study: the static baseline and the dynamical loss, each one Optuna study
whose next job (retries, the bisection's next width, or a confirmation round) is derived from
the trials it holds."""

from __future__ import annotations

from dataclasses import dataclass, replace

import optuna
from optuna.trial import FrozenTrial, TrialState

from dlf.config import RunConfig
from dlf.hooks.manager import load_plugins
from dlf.studies.search.config import StudyConfig
from dlf.studies.search.confirm import SequentialRule, is_confirmation
from dlf.studies.search.ladder import (
    FINISHED,
    PENDING,
    Bracket,
    Job,
    bracket,
    next_job,
    rungs,
    trial_width,
)
from dlf.studies.search.pruning import make_pruner


@dataclass
class Track:
    """One Optuna study (static baseline or dynamical loss) and how its trials are run."""

    kind: str
    study: optuna.Study
    run: RunConfig  # the run every trial of this track shares, but for the width
    dynamical: bool
    trials_per_width: int
    budget: int | None  # most trials this track may take (None: the ladder bounds it)

    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def bracket(self, config: StudyConfig) -> Bracket:
        search = config.search
        table = rungs(self.trials())
        rule = SequentialRule.of(search)
        return bracket(search.width.ladder(), table, rule, self.trials_per_width)

    def next_job(self, config: StudyConfig) -> tuple[Job, bool] | None:
        """(job, retries?) to start now, or None: retries first, then the bisection (search
        trials or a confirmation round). Only meaningful under the study lock, where nobody
        else asks meanwhile."""
        trials = self.trials()
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        if waiting:  # retries of lost search trials carry their width
            width = trial_width(waiting[0])
            same = [t for t in waiting if trial_width(t) == width]
            if width is not None:
                return Job(width, room=min(len(same), config.search.batch)), True
        ladder = config.search.width.ladder()
        rule = SequentialRule.of(config.search)
        job = next_job(ladder, rungs(trials), rule, self.trials_per_width)
        if job is None or job.confirm is not None:
            return None if job is None else (job, False)
        room = min(job.room, config.search.batch)
        if self.budget is not None:
            searched = [t for t in trials if not is_confirmation(t)]
            used = sum(t.state in (*FINISHED, *PENDING) for t in searched)
            room = min(room, self.budget - used)
        return (replace(job, room=room), False) if room > 0 else None

    def busy(self) -> bool:
        return any(t.state in PENDING for t in self.trials())


def track_losses(config: StudyConfig) -> dict[str, str]:
    """The loss each Optuna study trains: the dynamical loss and its static counterpart, from the
    loss registry of the config's plugins."""
    losses = load_plugins(config.run.plugins).registries.losses
    loss = losses.get(config.run.loss.name, "loss.name")
    return {"static": loss.static_name, "dynamical": loss.name}


def make_tracks(config: StudyConfig, studies: dict[str, optuna.Study]) -> list[Track]:
    """The static track (if any) first: it is cheap and gives the baseline early."""
    names = track_losses(config)
    search = config.search
    tracks = []
    for kind, study in studies.items():
        dynamical = kind == "dynamical"
        run = config.run.model_copy(
            update={"loss": config.run.loss.model_copy(update={"name": names[kind]})}
        )
        study.pruner = make_pruner(search.pruner, search.target, run)
        per_width = search.trials_at_width(kind)
        tracks.append(
            Track(kind, study, run, dynamical, per_width, search.trials if dynamical else None)
        )
    return tracks
