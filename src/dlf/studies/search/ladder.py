"""Bisection over the width ladder, recomputed from the stored trials every time it is asked.

A width's search ends once one of its trials has a value at the target on the search seeds, or
``trials_per_width`` trials finished; its best trial is then confirmed on fresh seeds
(:mod:`~dlf.studies.search.confirm`), which decide whether the width *reaches* the target,
*does not reach* it, or is *within noise*. Accuracy is taken to grow with width, so the answer
w* is the narrowest rung confirmed to reach, above the widest rung decided not to. Because the
state is derived from the storage alone, a resumed study or a second worker continues exactly
where the others are (a confirmation round cut short is simply trained again).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from dlf.studies.search.confirm import (
    CONFIRMS,
    NOT_REACHED,
    REACHES,
    SEEDS,
    WITHIN_NOISE,
    SequentialRule,
    is_confirmation,
)
from dlf.studies.search.liveness import WIDTH

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PENDING = (TrialState.RUNNING, TrialState.WAITING)
MIN_SEEDS_TO_REJECT = 5  # search seeds below which a rung is always confirmed on fresh ones


def trial_width(trial: FrozenTrial) -> int | None:
    """The width a trial evaluates (a waiting retry carries it as a user attribute)."""
    width = trial.params.get(WIDTH, trial.user_attrs.get(WIDTH))
    return None if width is None else int(width)


@dataclass(frozen=True)
class Rung:
    """What the trials at one width say so far: the search's trials, the best of them (the
    selected (A, T)), and the confirmation rounds of that selection on fresh seeds."""

    finished: int = 0
    pending: int = 0
    best: float | None = None
    best_number: int | None = None
    best_values: tuple[float, ...] = ()  # the best trial's per-seed values (search seeds)
    confirm_values: tuple[float, ...] = ()  # per fresh seed, over the finished rounds
    confirm_seeds: tuple[int, ...] = ()  # those seeds
    confirm_member_steps: int = 0
    confirm_pending: int = 0

    def search_done(self, target: float, trials_per_width: int) -> bool:
        """No trial under way, and one at the target on the search seeds or all tried."""
        reached = self.best is not None and self.best >= target
        return self.pending == 0 and (reached or self.finished >= trials_per_width)

    def verdict(self, rule: SequentialRule, trials_per_width: int) -> str | None:
        """REACHES, NOT_REACHED or WITHIN_NOISE once decided; None while searching or
        confirming."""
        if not self.search_done(rule.target, trials_per_width):
            return None
        if self.best is None or self.rejected_by_search(rule):
            return NOT_REACHED  # every trial hopeless, or clearly below even at its best
        return rule.confirmed(self.confirm_values).verdict

    def rejected_by_search(self, rule: SequentialRule) -> bool:
        """The best search trial's upper bound lies below the target (no confirmation due);
        only with enough search seeds that their spread means something."""
        if self.confirm_values or len(self.best_values) < MIN_SEEDS_TO_REJECT:
            return False
        return rule.estimate(self.best_values, final=False).verdict == NOT_REACHED


def rungs(trials: Iterable[FrozenTrial]) -> dict[int, Rung]:
    """Per width: finished and pending search trials, the best completed one, and the
    confirmation rounds (of the trial they confirm, the best one when they started)."""
    search: dict[int, list[FrozenTrial]] = {}
    confirms: dict[int, list[FrozenTrial]] = {}
    for trial in trials:
        width = trial_width(trial)
        if width is None or trial.state not in (*FINISHED, *PENDING):
            continue
        (confirms if is_confirmation(trial) else search).setdefault(width, []).append(trial)
    table = {}
    for width in search.keys() | confirms.keys():
        table[width] = _rung(search.get(width, []), confirms.get(width, []))
    return table


def _rung(search: list[FrozenTrial], confirms: list[FrozenTrial]) -> Rung:
    complete = [t for t in search if t.state == TrialState.COMPLETE and t.value is not None]
    done = [t for t in confirms if t.state == TrialState.COMPLETE]
    selected = done[0].user_attrs.get(CONFIRMS) if done else None
    chosen = [t for t in complete if t.number == selected]
    if not chosen and complete:
        chosen = [max(complete, key=lambda t: (float(t.value), -t.number))]  # type: ignore[arg-type]
    top = chosen[0] if chosen else None
    rounds = [t for t in done if top is not None and t.user_attrs.get(CONFIRMS) == top.number]
    rounds.sort(key=lambda t: min(t.user_attrs.get(SEEDS, [0])))
    values = [float(v) for t in rounds for v in t.user_attrs.get("seed_values", [])]
    return Rung(
        finished=sum(t.state in FINISHED for t in search),
        pending=sum(t.state in PENDING for t in search),
        best=max((float(t.value) for t in complete), default=None),  # type: ignore[arg-type]
        best_number=None if top is None else top.number,
        best_values=() if top is None else tuple(top.user_attrs.get("seed_values", [])),
        confirm_values=tuple(values),
        confirm_seeds=tuple(int(s) for t in rounds for s in t.user_attrs.get(SEEDS, [])),
        confirm_member_steps=sum(int(t.user_attrs.get("member_steps", 0)) for t in confirms),
        confirm_pending=sum(t.state in PENDING for t in confirms),
    )


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
    ladder: Sequence[int], table: dict[int, Rung], rule: SequentialRule, trials_per_width: int
) -> Bracket:
    """hi: the narrowest rung confirmed to reach; lo: the widest rung below it decided not to
    (does not reach, or within noise)."""
    verdicts = {w: r.verdict(rule, trials_per_width) for w, r in table.items()}
    reaching = [i for i, w in enumerate(ladder) if verdicts.get(w) == REACHES]
    hi = min(reaching, default=len(ladder))
    below = [i for i, w in enumerate(ladder[:hi]) if verdicts.get(w) in (NOT_REACHED, WITHIN_NOISE)]
    return Bracket(tuple(ladder), max(below, default=-1), hi)


@dataclass(frozen=True)
class Job:
    """What to start now at ``width``: ``room`` more search trials, or (``confirm`` set)
    one confirmation round of search trial ``confirm`` on the fresh seeds ``seeds``
    (indices into the confirmation seed sequence)."""

    width: int
    room: int = 0
    confirm: int | None = None
    seeds: range = range(0)


def next_job(
    ladder: Sequence[int], table: dict[int, Rung], rule: SequentialRule, trials_per_width: int
) -> Job | None:
    """The job at the probed width, or None when there is nothing to start now (converged,
    or the probed width's trials or confirmation round are all under way)."""
    b = bracket(ladder, table, rule, trials_per_width)
    if b.converged:
        return None
    width = ladder[b.probe]
    rung = table.get(width, Rung())
    if not rung.search_done(rule.target, trials_per_width):
        room = trials_per_width - rung.finished - rung.pending
        return Job(width, room=room) if room > 0 else None
    if rung.confirm_pending or rung.best_number is None:
        return None
    seeds = rule.next_round(len(rung.confirm_values))
    return Job(width, confirm=rung.best_number, seeds=seeds) if len(seeds) else None
