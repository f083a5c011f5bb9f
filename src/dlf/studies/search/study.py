"""The study: workers that ask Optuna for trials in batches, train them, and tell the results.

Two Optuna studies share one storage: ``<name>.dynamical`` searches width × A × T for the
configured dynamical loss, ``<name>.static`` the width alone for its static counterpart (the
baseline). A worker repeatedly retries stale trials, picks the next job from the width bisection
(:mod:`~dlf.studies.search.ladder`), asks that many trials with the width fixed (the
proposals give A and T), evaluates them as one ensemble run and tells the outcomes.
``--workers N`` starts N such processes against the same storage
(:mod:`~dlf.studies.search.processes`); several machines can do the same against PostgreSQL.
"""

from __future__ import annotations

import math
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from itertools import groupby
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from dlf.config import Member
from dlf.engine.budget import check_budget
from dlf.engine.interrupts import interrupts_deferred
from dlf.engine.run import build_analyzers, build_context
from dlf.errors import ConfigError, OutputError
from dlf.hooks.manager import load_plugins
from dlf.studies.search.config import StudyConfig
from dlf.studies.search.confirm import CONFIRM, CONFIRMS, SEEDS, SequentialRule
from dlf.studies.search.cost import check_memory
from dlf.studies.search.evaluate import Candidate, Outcome, run_batch, tell
from dlf.studies.search.ladder import Job, rungs
from dlf.studies.search.liveness import (
    FAILED_ATTR,
    RETRY_OF,
    ROLE,
    SLOT,
    WIDTH,
    WORKER_ATTR,
    Heartbeat,
    claim,
    recover_stale,
    retry,
    trial_id,
    worker_id,
)
from dlf.studies.search.lock import StudyLock
from dlf.studies.search.proposals import fixed_proposal, make_sampler
from dlf.studies.search.storage import open_storage, open_studies, storage_url, study_dir
from dlf.studies.search.tracks import Track, make_tracks

POLL_SECONDS = 2.0  # how often an idle worker looks whether others finished


class Worker:
    """One process's share of the study: the job loop against the shared storage."""

    def __init__(
        self,
        config: StudyConfig,
        index: int = 0,
        progress: bool = False,
        keep_going: Callable[[], bool] = lambda: True,
    ) -> None:
        self.config = config
        self.index = index
        self.progress = progress
        self.keep_going = keep_going  # False once this worker should stop between batches
        self.storage: BaseStorage = open_storage(config)
        self.tracks = make_tracks(config, open_studies(config, self.storage))
        self.id = worker_id()
        self.dir = study_dir(config)
        self.lock = StudyLock(self.storage, config.name, self.id, config.search.grace_seconds)
        # Optuna's samplers (tpe, random) get seeds that differ between the workers of one
        # command by their index, and against a shared storage URL (the same command started
        # on several machines, all with index 0) also by this process's id.
        self.stream = 0 if storage_url(config) is None else zlib.crc32(self.id.encode())
        self.started = time.monotonic()
        self.batch_seconds: list[float] = []

    def say(self, message: str) -> None:
        prefix = f"[worker {self.index}] " if self.index else ""
        print(f"{prefix}{message}", file=sys.stderr, flush=True)

    def run(self) -> None:
        """Take jobs until every track is converged or out of budget and nothing is pending.

        Interrupted (Ctrl-C, SIGTERM) anywhere, even between asking and training, or stopped
        by a full disk (not the trials' fault), it releases every trial it holds for a retry
        before it stops. A release the full disk refuses too is left to the next run, which
        retries trials whose worker is gone."""
        try:
            self.loop()
        except KeyboardInterrupt:
            self.release_held("interrupted")
            raise
        except OutputError:
            self.release_held("disk full")
            raise

    def loop(self) -> None:
        while self.keep_going():
            for track in self.tracks:
                candidates = self.take(track)
                if candidates:
                    self.evaluate(track, candidates)
                    break
            else:
                if not any(track.busy() for track in self.tracks):
                    return
                time.sleep(POLL_SECONDS)

    def take(self, track: Track) -> list[Candidate]:
        """Atomically (under the study lock): retry lost trials, choose the next job, ask its
        trials and claim them, so that no two workers take the same slot or overshoot."""
        with self.lock:
            retried = recover_stale(track.study, self.storage, self.config.search.grace_seconds)
            if retried:
                self.say(f"{track.kind}: retrying trials {retried} whose worker is gone")
            found = track.next_job(self.config)
            if found is None:
                return []
            job, retries = found
            if job.confirm is not None:
                return [self.ask_confirmation(track, job)]
            rung = rungs(track.trials()).get(job.width)  # its trials finished or under way
            first_slot = 0 if rung is None else rung.finished + rung.pending
            return [
                self.ask(track, job.width, None if retries else first_slot + i)
                for i in range(job.room)
            ]

    def ask_confirmation(self, track: Track, job: Job) -> Candidate:
        """A confirmation trial: the selected trial's width, A and T on fresh seeds, marked
        (before its parameters are drawn) so that a lost one is failed, not re-enqueued."""
        search = self.config.search
        selected = next(t for t in track.trials() if t.number == job.confirm)
        seeds = tuple(search.confirm_seed(k) for k in job.seeds)
        with interrupts_deferred():
            track.study.sampler = make_sampler(search, dict(selected.params), 0)
            trial = track.study.ask()
            claim(self.storage, trial_id(self.storage, track.study, trial.number), self.id)
            trial.set_user_attr(ROLE, CONFIRM)
            trial.set_user_attr(CONFIRMS, selected.number)
            trial.set_user_attr(SEEDS, list(seeds))
            candidate = self.suggest(track, trial)
            return replace(candidate, seeds=seeds)

    def ask(self, track: Track, width: int, slot: int | None) -> Candidate:
        """One trial at ``width``: slot ``slot`` of its proposals, or (None) a waiting retry.

        Ctrl-C or SIGTERM waits until the trial is claimed and its parameters are drawn: landing
        between Optuna's ask and the claim it left a RUNNING trial that no worker owned (so
        :meth:`release_held` could not release it), and before the draw a released trial had no
        parameters to retry with."""
        with interrupts_deferred():
            return self._ask(track, width, slot)

    def _ask(self, track: Track, width: int, slot: int | None) -> Candidate:
        search = self.config.search
        fixed: dict[str, float] = {WIDTH: width}
        if track.dynamical and slot is not None:
            fixed.update(fixed_proposal(search, slot) or {})
        seed = search.sampler.seed + 10_007 * len(track.trials()) + self.index + self.stream
        track.study.sampler = make_sampler(search, fixed, seed % 2**32)
        trial = track.study.ask()
        claim(self.storage, trial_id(self.storage, track.study, trial.number), self.id)
        if slot is not None:
            trial.set_user_attr(SLOT, slot)
        return self.suggest(track, trial)

    def suggest(self, track: Track, trial: optuna.Trial) -> Candidate:
        """Draw the trial's width (and A, T) from the sampler, which has them fixed."""
        search = self.config.search
        ladder = search.width.ladder()
        trial.suggest_int(WIDTH, ladder[0], ladder[-1], log=True)
        if not track.dynamical:
            return Candidate(trial, 1.0, float(track.run.train.steps))
        amplitude = trial.suggest_float(
            "amplitude", search.amplitude.low, search.amplitude.high, log=True
        )
        period = trial.suggest_float("period", search.period.low, search.period.high, log=True)
        return Candidate(trial, amplitude, period)

    def evaluate(self, track: Track, candidates: Sequence[Candidate]) -> None:
        """Evaluate each width group (retries may differ) as one run; a confirmation round is
        a job of its own."""
        ordered = sorted(candidates, key=lambda c: c.trial.params[WIDTH])
        for width, group in groupby(ordered, key=lambda c: c.trial.params[WIDTH]):
            self.evaluate_width(track, int(width), list(group))

    def evaluate_width(self, track: Track, width: int, candidates: Sequence[Candidate]) -> None:
        """Train one width's candidates as one run, record their outcomes, say what came out."""
        search, knob = self.config.search, self.config.knob
        numbers = [c.trial.number for c in candidates]
        confirming = candidates[0].seeds is not None
        seeds = candidates[0].seeds or search.trial_seeds()
        trace = Path("runs") / batch_trace_name(track.kind, width, candidates, knob.tag)
        where = track.bracket(self.config).describe()
        what = (
            f"confirming trial {candidates[0].trial.user_attrs[CONFIRMS]} as trial {numbers[0]}"
            f" on fresh seeds {seeds[0]}..{seeds[-1]}"
            if confirming
            else f"trials {numbers} × {len(seeds)} seeds"
        )
        self.say(f"{track.kind}: {knob.label} {width}, {what} ({where})")
        ids = [trial_id(self.storage, track.study, n) for n in numbers]
        start = time.monotonic()
        try:
            with Heartbeat(self.storage, ids, search.heartbeat_seconds):
                outcomes = run_batch(
                    track.study,
                    self.config.at_width(track.run, width),
                    candidates,
                    seeds,
                    search.metric,
                    self.dir / trace,
                    self.progress,
                    decide_early=not confirming,
                )
        except OutputError:
            raise  # a full disk: run() releases the trials for a retry
        except Exception as exc:
            self.fail(ids, exc)
            raise
        self.batch_seconds.append(time.monotonic() - start)
        self.record(track, candidates, outcomes, len(seeds), trace)
        if confirming:
            outcome = self.confirmation(track, width)
        else:
            best = max(o.mean for o in outcomes)
            pruned = sum(o.state == TrialState.PRUNED for o in outcomes)
            stopped = outcomes[0].measured_step
            early = "" if outcomes[0].full_length else f", run stopped at step {stopped}"
            outcome = f"best {search.metric} {best:.3f} ({pruned} of {len(outcomes)} pruned{early})"
        self.say(f"{track.kind}: {knob.label} {width} → {outcome}")
        self.say(self.overview())

    def record(
        self,
        track: Track,
        candidates: Sequence[Candidate],
        outcomes: Sequence[Outcome],
        n_seeds: int,
        trace: Path,
    ) -> None:
        """Tell every trial of a finished batch its outcome, as one step an interrupt waits
        for; a trial retried elsewhere meanwhile keeps that result."""
        with interrupts_deferred():
            for i, (candidate, outcome) in enumerate(zip(candidates, outcomes, strict=True)):
                members = list(range(i * n_seeds, (i + 1) * n_seeds))
                try:
                    tell(
                        track.study,
                        candidate,
                        outcome,
                        self.config.search.target,
                        trace=str(trace),
                        members=members,
                    )
                except UpdateFinishedTrialError:
                    number = candidate.trial.number
                    self.say(f"trial {number} was retried elsewhere; result dropped")

    def confirmation(self, track: Track, width: int) -> str:
        """The rung's confirmed estimate so far and its verdict (or that more seeds are due)."""
        rung = rungs(track.trials())[width]
        estimate = SequentialRule.of(self.config.search).confirmed(rung.confirm_values)
        verdict = estimate.verdict or "undecided, more seeds due"
        return f"confirmed {self.config.search.metric} {estimate.describe()}: {verdict}"

    def overview(self) -> str:
        """The study's state after a batch: each track's bracket, time spent and a rough ETA
        (bisection steps left × the mean batch time so far)."""
        parts, probes_left = [], 0
        for track in self.tracks:
            b = track.bracket(self.config)
            parts.append(f"{track.kind} {b.describe()}")
            if not b.converged:
                probes_left += math.ceil(math.log2(b.hi - b.lo))
        elapsed = time.monotonic() - self.started
        mean = sum(self.batch_seconds) / len(self.batch_seconds)
        widths = "width" if probes_left == 1 else "widths"
        eta = "done" if probes_left == 0 else f"≈ {probes_left} {widths} to go, ETA ≳ "
        eta += "" if probes_left == 0 else _minutes(probes_left * mean)
        return f"study: {'; '.join(parts)} — {_minutes(elapsed)} so far, {eta}"

    def fail(self, trial_ids: Sequence[int], exc: Exception) -> None:
        """Trials whose run raised an error fail with it (they are not retried)."""
        for tid in trial_ids:
            if not self.storage.get_trial(tid).state.is_finished():
                self.storage.set_trial_system_attr(tid, FAILED_ATTR, repr(exc)[:500])
                self.storage.set_trial_state_values(tid, TrialState.FAIL)

    def release_held(self, reason: str) -> None:
        """Every RUNNING trial this worker claimed is failed (``reason`` saying why) and
        re-enqueued for the next run.

        Read through a freshly opened storage: the interrupt may have cut short a read of this
        worker's own storage object, whose cached copy of the journal could then miss a trial.
        Interrupts wait until the release is done, so a second Ctrl-C cannot cut it in half."""
        with interrupts_deferred():
            storage = open_storage(self.config)
            for track in self.tracks:
                study = optuna.load_study(study_name=track.study.study_name, storage=storage)
                for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    if trial.system_attrs.get(WORKER_ATTR) == self.id:
                        retry(study, storage, trial, reason)


def batch_trace_name(kind: str, width: int, candidates: Sequence[Candidate], tag: str = "w") -> str:
    """The trace file of a batch, named after the width knob's ``tag`` and value and its first
    trial as first asked (a retry keeps its original's number, a confirmation round the trial
    it confirms and its first seed), so that a batch released by an interrupt and asked again
    finds its run's checkpoint: e.g. ``dynamical-w0016-t0003.nc``,
    ``static-channels0008-confirm0001-s10000.nc``."""
    first = candidates[0]
    if first.seeds is not None:
        confirms = first.trial.user_attrs[CONFIRMS]
        return f"{kind}-{tag}{width:04d}-confirm{confirms:04d}-s{first.seeds[0]}.nc"
    number = first.trial.user_attrs.get(RETRY_OF, first.trial.number)
    return f"{kind}-{tag}{width:04d}-t{number:04d}.nc"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def check_study(config: StudyConfig, workers: int = 1) -> None:
    """Everything a trial's run could reject (and the worker count), checked once before any
    trial starts and before the storage is opened, so a rejected study writes nothing."""
    if workers < 1:
        raise ConfigError("--workers", f"must be >= 1 (got {workers})")
    plugins = load_plugins(config.run.plugins)
    loss = plugins.registries.losses.get(config.run.loss.name, "loss.name")
    if not loss.dynamical:
        losses = plugins.registries.losses
        dynamical = [name for name in losses if losses.get(name, "loss.name").dynamical]
        raise ConfigError(
            "loss.name",
            f"a study searches A and T of a dynamical loss, {loss.name!r} is static; "
            f"allowed: {', '.join(dynamical)}",
        )
    ladder = config.search.width.ladder()
    run = config.at_width(config.run, ladder[0])
    lr = config.run.train.lr[0]
    context = build_context(run, plugins, [Member(seed=0, amplitude=1.0, period=1.0, lr=lr)])
    build_analyzers(run, plugins, context)  # their options too, before the storage is touched
    search = config.search
    members = max(search.batch * len(search.seeds), search.confirm_seeds, search.confirm_step)
    check_memory(config, plugins, context.data, members)
    try:
        check_budget(config.at_width(config.run, ladder[-1]), members)
    except ConfigError as exc:  # the width is the ladder's: name the search's field
        field = "search.width.high" if exc.field == config.knob.field else exc.field
        raise ConfigError(field, exc.message) from None
