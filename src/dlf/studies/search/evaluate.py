"""Evaluating a batch of trials of one width as the members of one vectorised ensemble run.

Trial i with seeds s_1..s_S is members i·S .. i·S+S-1 of the run. Its measurement is the mean
over its seeds of the metric at the final evaluation (oscillations are off for the last period,
as the core does by default). A seed whose loss diverged counts as 0: a diverged network
classifies nothing, and the trial stays in the study (with its diverged seeds recorded) so that
the sampler learns to avoid that region.

The trainer cannot stop single members, so early stopping acts on the whole run: at each
evaluation a :class:`BatchMonitor` reports every undecided trial's mean to Optuna and asks the
pruner; once every trial is decided (hopeless, or surely at the target) it stops the run. A trial
decided hopeless in a run that stopped early is PRUNED; every other trial is COMPLETE, with the
value at the last evaluation its run reached (``measured_step`` in its user attributes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
import xarray as xr
from optuna.trial import TrialState

from dlf.config import Member, RunConfig
from dlf.engine.run import execute, resume_point
from dlf.engine.trace import open_trace
from dlf.hooks.manager import load_plugins
from dlf.hooks.specs import hookimpl
from dlf.hooks.state import EvalState
from dlf.studies.search.pruning import FULL_LENGTH, HOPELESS, TargetPruner

MONITOR_NAME = "dlf.studies.search"


@dataclass
class Candidate:
    """An asked trial and the Γ schedule it evaluates (A = 1 for the static loss)."""

    trial: optuna.Trial
    amplitude: float
    period: float
    seeds: tuple[int, ...] | None = None  # a confirmation round's fresh seeds (None: search)


class BatchMonitor:
    """Reports each trial's seed-mean metric at every evaluation and decides trials early."""

    def __init__(
        self,
        study: optuna.Study,
        candidates: Sequence[Candidate],
        metric: str,
        total_steps: int,
    ) -> None:
        self.study = study
        self.trials = [c.trial for c in candidates]
        self.metric = metric
        self.total_steps = total_steps
        self.curves: list[dict[int, float]] = [{} for _ in candidates]
        self.verdicts: dict[int, tuple[str, int]] = {}  # trial index → (verdict, step)

    @hookimpl
    def dlf_evaluate(self, state: EvalState) -> None:
        values = state.val_accuracy if self.metric == "val_accuracy" else state.eval_train_accuracy
        if self.observe(state.step, values):
            state.run.request_stop(f"dlf.studies.search: every trial decided at step {state.step}")

    def prime(self, trace: xr.Dataset, until: int) -> None:
        """Observe the evaluations before step ``until`` that ``trace`` (a run continuing from
        there) already holds, so that the trials' curves and decisions are whole."""
        name = "val_accuracy" if self.metric == "val_accuracy" else "eval_train_accuracy"
        for step in trace["eval_step"].values[trace["eval_step"].values < until]:
            self.observe(int(step), torch.as_tensor(trace[name].sel(eval_step=step).values))

    def observe(self, step: int, values: torch.Tensor) -> bool:
        """Report each trial's seed mean of ``values (member,)`` at ``step`` and decide those
        the pruner can; whether every trial is now decided."""
        if step >= self.total_steps:
            return False
        means = torch.nan_to_num(values.detach(), nan=0.0).view(len(self.trials), -1).mean(dim=1)
        pruner = self.study.pruner
        references = None  # read from the storage at most once per evaluation round
        for i, trial in enumerate(self.trials):
            value = float(means[i])
            self.curves[i][step] = value
            trial.report(value, step)  # decided trials too: full curves for the pruner
            if i in self.verdicts:
                continue
            if isinstance(pruner, TargetPruner):
                if step < pruner.judged_from(trial.params):
                    continue  # Γ oscillates or just stopped: not judged (no storage read)
                if references is None:
                    references = pruner.references(self.study)
                verdict = pruner.verdict(references, self.curves[i], trial.params)
            else:
                verdict = HOPELESS if trial.should_prune() else None
            if verdict is not None:
                self.verdicts[i] = (verdict, step)
        return len(self.verdicts) == len(self.trials)


@dataclass
class Outcome:
    """One trial's measurement: per-seed metrics at ``measured_step``."""

    values: list[float]  # the searched metric per seed (diverged seeds count 0)
    val_accuracy: list[float]
    train_accuracy: list[float]
    val_loss: list[float]
    diverged: list[bool]
    measured_step: int
    full_length: bool
    member_steps: int
    verdict: tuple[str, int] | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def state(self) -> TrialState:
        hopeless = self.verdict is not None and self.verdict[0] == HOPELESS
        return TrialState.PRUNED if hopeless and not self.full_length else TrialState.COMPLETE


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]


def measure(trace: Path, n_trials: int, n_seeds: int, metric: str) -> list[Outcome]:
    """Per-trial outcomes from a batch trace, at the last evaluation the run reached."""
    ds = open_trace(trace)
    last = ds.isel(eval_step=-1)
    step = int(last["eval_step"])
    total = int(ds.attrs["total_steps"])
    diverged = ds["diverged_step"].values >= 0
    searched = np.where(diverged, 0.0, np.nan_to_num(last[metric].values, nan=0.0))
    steps_done = int(ds.attrs["steps_completed"])
    outcomes = []
    for i in range(n_trials):
        rows = slice(i * n_seeds, (i + 1) * n_seeds)
        outcomes.append(
            Outcome(
                values=_floats(searched[rows]),
                val_accuracy=_floats(last["val_accuracy"].values[rows]),
                train_accuracy=_floats(last["eval_train_accuracy"].values[rows]),
                val_loss=_floats(last["val_loss"].values[rows]),
                diverged=[bool(d) for d in diverged[rows]],
                measured_step=step,
                full_length=step == total,
                member_steps=steps_done * n_seeds,
            )
        )
    return outcomes


def members_for(candidates: Sequence[Candidate], seeds: Sequence[int], lr: float) -> list[Member]:
    """Trial-major, seed-minor: trial i's seeds are consecutive members."""
    return [
        Member(seed=s, amplitude=c.amplitude, period=c.period, lr=lr)
        for c in candidates
        for s in seeds
    ]


def run_batch(
    study: optuna.Study,
    run_config: RunConfig,
    candidates: Sequence[Candidate],
    seeds: Sequence[int],
    metric: str,
    trace: Path,
    progress: bool,
    decide_early: bool = True,
) -> list[Outcome]:
    """Train the batch as one ensemble, stopping once every trial is decided (unless
    ``decide_early`` is off: confirmation rounds always train to the end); the outcomes."""
    monitor = BatchMonitor(study, candidates, metric, run_config.train.steps)
    plugins = load_plugins(run_config.plugins)  # shared by the process: lent the monitor
    members = members_for(candidates, seeds, run_config.train.lr[0])
    continues_from = resume_point(run_config, members, trace)  # a batch released by an interrupt
    if decide_early and continues_from:
        monitor.prime(open_trace(trace), continues_from)
    with plugins.registered(monitor if decide_early else None, MONITOR_NAME):
        execute(run_config, members=members, trace_path=trace, plugins=plugins, progress=progress)
    outcomes = measure(trace, len(candidates), len(seeds), metric)
    for i, outcome in enumerate(outcomes):
        outcome.verdict = monitor.verdicts.get(i)
    return outcomes


def tell(
    study: optuna.Study, candidate: Candidate, outcome: Outcome, target: float, **attrs: object
) -> None:
    """Record the outcome in the trial's user attributes and finish the trial."""
    trial = candidate.trial
    record: dict[str, object] = {
        "seed_values": outcome.values,
        "val_accuracy": outcome.val_accuracy,
        "train_accuracy": outcome.train_accuracy,
        "val_loss": outcome.val_loss,
        "diverged_seeds": [i for i, d in enumerate(outcome.diverged) if d],
        "measured_step": outcome.measured_step,
        FULL_LENGTH: outcome.full_length,
        "member_steps": outcome.member_steps,
        "verdict": None if outcome.verdict is None else outcome.verdict[0],
        "verdict_step": None if outcome.verdict is None else outcome.verdict[1],
        **attrs,
    }
    for key, value in record.items():
        trial.set_user_attr(key, value)
    if outcome.state == TrialState.PRUNED:
        study.tell(trial, state=TrialState.PRUNED)
        return
    trial.set_constraint("target", target - outcome.mean)
    study.tell(trial, outcome.mean)
