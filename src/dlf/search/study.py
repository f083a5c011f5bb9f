"""The study: workers that ask Optuna for trials in batches, train them, and tell the results.

Two Optuna studies share one storage: ``<name>.dynamical`` searches width × A × T for the
configured dynamical loss, ``<name>.static`` the width alone for its static counterpart (the
baseline). A worker repeatedly retries stale trials, picks the next job from the width bisection
(:mod:`dlf.search.ladder`), asks that many trials with the width fixed (Optuna's sampler proposes
A and T), evaluates them as one ensemble run and tells the outcomes. ``--workers N`` starts N such
processes against the same storage; several machines can do the same against PostgreSQL.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import optuna
import torch
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.samplers import BaseSampler, PartialFixedSampler, QMCSampler, RandomSampler, TPESampler
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from dlf.config import Member, RunConfig
from dlf.errors import ConfigError, DlfError
from dlf.plugin_manager import load_plugins
from dlf.run import build_context
from dlf.search.config import StudyConfig
from dlf.search.evaluate import Candidate, run_batch, tell
from dlf.search.ladder import FINISHED, PENDING, Bracket, bracket, next_width, rungs, trial_width
from dlf.search.liveness import WIDTH, Heartbeat, claim, recover_stale, retry, worker_id
from dlf.search.pruning import make_pruner, static_from
from dlf.search.storage import open_storage, open_studies, study_dir

POLL_SECONDS = 2.0  # how often an idle worker looks whether others finished


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
        return bracket(search.width.ladder(), table, search.target, self.trials_per_width)

    def next_job(self, config: StudyConfig) -> tuple[int, int] | None:
        """(width, number of trials) to start now, or None: retries first, then the bisection."""
        trials = self.trials()
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        if waiting:  # retries of lost trials carry their width
            width = trial_width(waiting[0])
            same = [t for t in waiting if trial_width(t) == width]
            if width is not None:
                return width, min(len(same), config.search.batch)
        ladder = config.search.width.ladder()
        job = next_width(ladder, rungs(trials), config.search.target, self.trials_per_width)
        if job is None:
            return None
        width, room = job
        room = min(room, config.search.batch)
        if self.budget is not None:
            used = sum(t.state in (*FINISHED, *PENDING) for t in trials)
            room = min(room, self.budget - used)
        return (width, room) if room > 0 else None

    def busy(self) -> bool:
        return any(t.state in PENDING for t in self.trials())


def make_tracks(config: StudyConfig, studies: dict[str, optuna.Study]) -> list[Track]:
    """The static track (if any) first: it is cheap and gives the baseline early."""
    names = config.loss_names()
    search = config.search
    tracks = []
    for kind, study in studies.items():
        dynamical = kind == "dynamical"
        run = config.run.model_copy(
            update={"loss": config.run.loss.model_copy(update={"name": names[kind]})}
        )
        study.pruner = make_pruner(search.pruner, search.target, static_from(run))
        per_width = search.trials_at_width(kind)
        tracks.append(
            Track(kind, study, run, dynamical, per_width, search.trials if dynamical else None)
        )
    return tracks


def make_sampler(config: StudyConfig, width: int, seed: int) -> BaseSampler:
    """The configured sampler for A and T, with the width fixed to the job's."""
    cfg = config.search.sampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        base: BaseSampler
        if cfg.name == "tpe":
            base = TPESampler(seed=seed, n_startup_trials=cfg.startup_trials, constant_liar=True)
        elif cfg.name == "random":
            base = RandomSampler(seed=seed)
        else:  # the Sobol sequence continues across batches only with one seed
            base = QMCSampler(seed=cfg.seed, scramble=True, warn_asynchronous_seeding=False)
        return PartialFixedSampler({WIDTH: width}, base)


class Worker:
    """One process's share of the study: the job loop against the shared storage."""

    def __init__(self, config: StudyConfig, index: int = 0, progress: bool = False) -> None:
        self.config = config
        self.index = index
        self.progress = progress
        self.storage: BaseStorage = open_storage(config)
        self.tracks = make_tracks(config, open_studies(config, self.storage))
        self.id = worker_id()
        self.dir = study_dir(config)
        # Sampler seeds differ between the workers of one command by their index; against a
        # shared storage URL (the same command started on several machines, all with index 0)
        # they also differ by this process's id, or two workers would propose the same (A, T).
        self.stream = 0 if config.search.storage is None else zlib.crc32(self.id.encode())

    def say(self, message: str) -> None:
        prefix = f"[worker {self.index}] " if self.index else ""
        print(f"{prefix}{message}", file=sys.stderr, flush=True)

    def run(self) -> None:
        """Take jobs until every track is converged or out of budget and nothing is pending."""
        grace = self.config.search.grace_seconds
        while True:
            job = None
            for track in self.tracks:
                retried = recover_stale(track.study, self.storage, grace)
                if retried:
                    self.say(f"{track.kind}: retrying trials {retried} whose worker is gone")
                job = track.next_job(self.config)
                if job is not None:
                    self.do(track, *job)
                    break
            if job is None:
                if not any(track.busy() for track in self.tracks):
                    return
                time.sleep(POLL_SECONDS)

    def ask(self, track: Track, width: int, n: int) -> list[Candidate]:
        search = self.config.search
        seed = (search.sampler.seed + 10_007 * len(track.trials()) + self.index + self.stream) % (
            2**32
        )
        track.study.sampler = make_sampler(self.config, width, seed)
        ladder = search.width.ladder()
        candidates = []
        for _ in range(n):
            trial = track.study.ask()
            claim(self.storage, trial._trial_id, self.id)
            trial.suggest_int(WIDTH, ladder[0], ladder[-1], log=True)
            if track.dynamical:
                amplitude = trial.suggest_float(
                    "amplitude", search.amplitude.low, search.amplitude.high, log=True
                )
                period = trial.suggest_float(
                    "period", search.period.low, search.period.high, log=True
                )
            else:
                amplitude, period = 1.0, float(track.run.train.steps)
            candidates.append(Candidate(trial, amplitude, period))
        return candidates

    def do(self, track: Track, width: int, n: int) -> None:
        """Ask ``n`` trials, evaluate each width group (retries may differ) as one run, tell."""
        candidates = sorted(self.ask(track, width, n), key=lambda c: c.trial.params[WIDTH])
        for group_width, group in groupby(candidates, key=lambda c: c.trial.params[WIDTH]):
            self.evaluate(track, int(group_width), list(group))

    def evaluate(self, track: Track, width: int, candidates: Sequence[Candidate]) -> None:
        search = self.config.search
        numbers = [c.trial.number for c in candidates]
        trace = Path("runs") / f"{track.kind}-w{width:04d}-t{numbers[0]:04d}.nc"
        where = track.bracket(self.config).describe()
        self.say(
            f"{track.kind}: width {width}, trials {numbers} × {len(search.seeds)} seeds ({where})"
        )
        run = track.run.model_copy(
            update={"model": track.run.model.model_copy(update={"width": width})}
        )
        ids = [c.trial._trial_id for c in candidates]
        try:
            with Heartbeat(self.storage, ids, search.heartbeat_seconds):
                outcomes = run_batch(
                    track.study,
                    run,
                    candidates,
                    search.seeds,
                    search.metric,
                    self.dir / trace,
                    self.progress,
                )
        except BaseException as exc:
            self.release(track, ids, exc)
            raise
        n_seeds = len(search.seeds)
        for i, (candidate, outcome) in enumerate(zip(candidates, outcomes, strict=True)):
            members = list(range(i * n_seeds, (i + 1) * n_seeds))
            try:
                tell(
                    track.study,
                    candidate,
                    outcome,
                    search.target,
                    trace=str(trace),
                    members=members,
                )
            except UpdateFinishedTrialError:
                self.say(f"trial {candidate.trial.number} was retried elsewhere; result dropped")
        best = max(o.mean for o in outcomes)
        pruned = sum(o.state == TrialState.PRUNED for o in outcomes)
        stopped = outcomes[0].measured_step
        early = "" if outcomes[0].full_length else f", run stopped at step {stopped}"
        self.say(
            f"{track.kind}: width {width} → best {search.metric} {best:.3f}"
            f" ({pruned} of {len(outcomes)} pruned{early})"
        )

    def release(self, track: Track, trial_ids: Sequence[int], exc: BaseException) -> None:
        """Interrupted trials are retried by the next run; trials hit by an error fail."""
        for trial_id in trial_ids:
            trial = self.storage.get_trial(trial_id)
            if isinstance(exc, KeyboardInterrupt):
                retry(track.study, self.storage, trial, "interrupted")
            elif not trial.state.is_finished():
                self.storage.set_trial_system_attr(trial_id, "dlf:failed", repr(exc)[:500])
                self.storage.set_trial_state_values(trial_id, TrialState.FAIL)


def _work(config: StudyConfig, index: int, threads: int) -> None:
    """Entry point of a worker process."""
    torch.set_num_threads(threads)
    Worker(config, index).run()


def check_study(config: StudyConfig) -> None:
    """Everything a trial's run could reject, checked once before any trial starts."""
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
    run = config.run.model_copy(
        update={"model": config.run.model.model_copy(update={"width": config.search.width.low})}
    )
    lr = config.run.train.lr[0]
    build_context(run, plugins, [Member(seed=0, amplitude=1.0, period=1.0, lr=lr)])


def progress_wanted(config: StudyConfig) -> bool:
    mode = config.run.output.progress
    return mode == "always" or (mode == "auto" and sys.stderr.isatty())


def run_workers(config: StudyConfig, workers: int) -> None:
    """Run the job loop here (one worker) or in ``workers`` processes sharing the storage."""
    if workers < 1:
        raise ConfigError("--workers", f"must be >= 1 (got {workers})")
    if workers == 1:
        Worker(config, 0, progress_wanted(config)).run()
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_work, args=(config, i + 1, threads), name=f"dlf-worker-{i + 1}")
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    failed = [p.name for p in processes if p.exitcode != 0]
    if failed:
        raise DlfError(f"worker processes failed: {', '.join(failed)} (see their messages above)")
