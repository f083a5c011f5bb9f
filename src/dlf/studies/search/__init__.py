"""Minimal-width studies: the smallest network a dynamical loss trains to a target accuracy.

``dlf-study run configs/min_width.yaml`` runs one: an Optuna search over width × amplitude ×
period whose trials are members of vectorised ensemble runs, with a static-loss baseline,
resumable storage, several workers, ``study.nc`` and ``report.md``. Read the modules top-down:
``config`` (the ``search`` section), ``storage``, ``liveness`` and ``lock`` (where trials live,
retrying lost ones, taking jobs atomically), ``confirm`` (deciding a rung on fresh seeds),
``ladder`` (the width bisection), ``proposals`` (the (A, T) slots), ``pruning`` and ``evaluate``
(one batch of trials as one run), ``tracks`` (the two Optuna studies), ``study`` (a worker's
job loop), ``processes`` (workers as processes), ``results`` and ``report`` (what comes out).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from optuna.trial import FrozenTrial, TrialState

from dlf.studies.search.config import SearchConfig, StudyConfig, load_study_config
from dlf.studies.search.confirm import is_confirmation
from dlf.studies.search.cost import plan
from dlf.studies.search.findings import Finding, findings
from dlf.studies.search.liveness import is_released
from dlf.studies.search.processes import run_workers
from dlf.studies.search.results import open_study, study_dataset, write_study
from dlf.studies.search.storage import open_storage, open_studies, storage_label, study_dir
from dlf.studies.search.study import check_study

__all__ = [
    "SearchConfig",
    "StudyConfig",
    "StudyResult",
    "cli_run",
    "load_study_config",
    "open_study",
    "run_study",
    "write_results",
]


@dataclass(frozen=True)
class StudyResult:
    """Where a study's outputs are and what it found, per track (``static``, ``dynamical``)."""

    directory: Path
    study_file: Path
    report: Path
    findings: dict[str, Finding]


def write_results(config: StudyConfig) -> StudyResult:
    """Write ``study.nc``, ``report.md`` and the figures from what the storage holds now."""
    from dlf.studies.search.report import (
        write_report,  # seaborn: imported only when a report is due
    )

    storage = open_storage(config)
    studies = open_studies(config, storage)
    found = findings(config, studies)
    directory = study_dir(config)
    ds = study_dataset(config, studies, found)
    study_file = write_study(ds, directory)
    report = write_report(config, ds, found, storage_label(config), directory)
    return StudyResult(directory, study_file, report, found)


def run_study(config: StudyConfig, out_dir: Path | None = None, workers: int = 1) -> StudyResult:
    """Run (or resume) a study under ``out_dir/<name>/`` (default: ``output.root``) with
    ``workers`` processes, then write its results."""
    if out_dir is not None:
        config = config.with_root(out_dir)
    check_study(config, workers)
    studies = open_studies(config, open_storage(config))  # refuses another setup's study
    trials = [t for study in studies.values() for t in study.get_trials(deepcopy=False)]
    if trials:
        print(
            f"resuming study {config.name!r} in {study_dir(config)}: {resume_counts(trials)} "
            "(delete that folder to start afresh)",
            file=sys.stderr,
        )
    print(plan(config, workers), file=sys.stderr, flush=True)
    try:
        run_workers(config, workers)
    except KeyboardInterrupt:
        write_results(config)  # what finished so far, then the interrupt goes on to the CLI
        raise
    return write_results(config)


def resume_counts(trials: Sequence[FrozenTrial]) -> str:
    """What a resumed study keeps and what it runs again, in words: finished search trials and
    confirmation rounds, trials released by an interrupt or a lost worker (their
    runs continue from their last checkpoints), and trials that failed with an error."""
    kept = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    rounds = sum(is_confirmation(t) for t in kept)
    parts = [f"{len(kept) - rounds} finished search trials and {rounds} confirmation rounds kept"]
    released = [t for t in trials if t.state == TrialState.FAIL and is_released(t)]
    if released:
        parts.append(
            f"{len(released)} released by an interrupt or a lost worker, to run again from "
            "their runs' last checkpoints"
        )
    errors = [t for t in trials if t.state == TrialState.FAIL and not is_released(t)]
    if errors:
        parts.append(f"{len(errors)} failed with an error (report.md says why)")
    return "; ".join(parts)


def cli_run(config_path: Path, overrides: Sequence[str], out: Path | None, workers: int) -> int:
    """``dlf-study run`` for a study config; errors are raised as :class:`dlf.DlfError`."""
    config = load_study_config(config_path, overrides)
    result = run_study(config, out, workers)
    target, metric = config.search.target, config.search.metric
    for finding in result.findings.values():
        print(finding.sentence(target, metric))
    print(f"report: {result.report}\nstudy:  {result.study_file}", file=sys.stdout)
    return 0
