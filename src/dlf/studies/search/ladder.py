"""Bisection over the width ladder, recomputed from the stored trials every time it is asked.

A width *reaches* the target once one of its finished trials has a value at the target; it is
*out of reach* once ``trials_per_width`` trials finished below it. Accuracy is taken to grow with
width, so the answer w* lies above the widest rung out of reach and at the narrowest rung that
reaches. Because the state is derived from the storage alone, a resumed study or a second
worker continues exactly where the others are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from dlf.studies.search.liveness import WIDTH

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PENDING = (TrialState.RUNNING, TrialState.WAITING)


def trial_width(trial: FrozenTrial) -> int | None:
    """The width a trial evaluates (a waiting retry carries it as a user attribute)."""
    width = trial.params.get(WIDTH, trial.user_attrs.get(WIDTH))
    return None if width is None else int(width)


@dataclass(frozen=True)
class Rung:
    """What the trials at one width say so far."""

    finished: int = 0
    pending: int = 0
    best: float | None = None

    def reaches(self, target: float) -> bool:
        return self.best is not None and self.best >= target

    def out_of_reach(self, target: float, trials_per_width: int) -> bool:
        return self.finished >= trials_per_width and not self.reaches(target)


def rungs(trials: Iterable[FrozenTrial]) -> dict[int, Rung]:
    """Finished and pending trial counts and the best completed value, per width."""
    counts: dict[int, list[int]] = {}
    best: dict[int, float] = {}
    for trial in trials:
        width = trial_width(trial)
        if width is None or trial.state not in (*FINISHED, *PENDING):
            continue
        count = counts.setdefault(width, [0, 0])
        if trial.state in PENDING:
            count[1] += 1
            continue
        count[0] += 1
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            best[width] = max(best.get(width, trial.value), trial.value)
    return {w: Rung(f, p, best.get(w)) for w, (f, p) in counts.items()}


@dataclass(frozen=True)
class Bracket:
    """``ladder[lo]`` is out of reach (lo = -1: none known) and ``ladder[hi]`` reaches
    (hi = len(ladder): none known); w* is in (ladder[lo], ladder[hi]]."""

    ladder: tuple[int, ...]
    lo: int
    hi: int

    @property
    def converged(self) -> bool:
        return self.hi - self.lo <= 1

    @property
    def w_star(self) -> int | None:
        """The answer once converged: the narrowest width that reaches (None: none does)."""
        return self.ladder[self.hi] if self.converged and self.hi < len(self.ladder) else None

    @property
    def probe(self) -> int:
        """The rung to try next: the middle of the open interval."""
        return (self.lo + self.hi + 1) // 2

    def describe(self) -> str:
        low = "?" if self.lo < 0 else str(self.ladder[self.lo])
        high = "?" if self.hi >= len(self.ladder) else str(self.ladder[self.hi])
        return f"w* in ({low}, {high}]"


def bracket(
    ladder: Sequence[int], table: dict[int, Rung], target: float, trials_per_width: int
) -> Bracket:
    reaching = [i for i, w in enumerate(ladder) if w in table and table[w].reaches(target)]
    hi = min(reaching, default=len(ladder))
    below = [
        i
        for i, w in enumerate(ladder[:hi])
        if w in table and table[w].out_of_reach(target, trials_per_width)
    ]
    return Bracket(tuple(ladder), max(below, default=-1), hi)


def next_width(
    ladder: Sequence[int], table: dict[int, Rung], target: float, trials_per_width: int
) -> tuple[int, int] | None:
    """The width to evaluate next and how many more trials it may take, or None when there is
    nothing to start now (converged, or the probed width's trials are all under way)."""
    b = bracket(ladder, table, target, trials_per_width)
    if b.converged:
        return None
    width = ladder[b.probe]
    rung = table.get(width, Rung())
    room = trials_per_width - rung.finished - rung.pending
    return (width, room) if room > 0 else None
