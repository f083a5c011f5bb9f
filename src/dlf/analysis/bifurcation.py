"""Edge-of-stability bifurcations in loss series: where F(t) starts to bounce and how far it splits.

Gradient descent in a valley whose sharpest curvature λmax exceeds 2/η overshoots: the system
bounces between the valley's walls and F(t) − F(t−1) alternates in sign from step to step (a
period-2 orbit); further eigenvalues crossing the threshold split it into periods 4, 8, … and
chaos (2021 paper, Fig. 4 and supplement Fig. 1; 2024 paper, Fig. 2). The detector works on the
loss of every ensemble member:

* step t *bounces* when the second difference e_t = d_t − d_{t−1} of d_t = F_t − F_{t−1}
  alternates in sign (e_t·e_{t−1} < 0) and the alternating amplitude |e_t|/2 is at least
  ``trend_ratio`` times the smooth trend |d_t + d_{t−1}|/2. With the default ratio 1 this says
  "d alternates in sign": the bounce outweighs the descent.
* an *event* starts at the first step of a run of at least ``min_length`` bouncing steps and ends
  at its last bouncing step followed by more than ``max_gap`` calm steps (short calm stretches
  inside a cascade do not split it).
* the *period* at a step is 2p for the largest p in 2, 4, …, max_period/2 such that the lag-q
  second differences |F_t − 2F_{t−q} + F_{t−2q}| for q = 2, 4, …, p, averaged over the last
  ``window`` steps, each reach ``split_ratio`` times the lag-1 one (a period-2q orbit leaves a
  lag-q second difference, a period-q orbit does not); otherwise 2. Only a period held for
  ``window`` steps in a row counts (transients between orbits are not periodic), and an event's
  ``max_period`` is the largest one held at its bouncing steps whose whole look-back lies inside
  the event. Chaos reads as ``max_period``, the largest period looked for.
* where a spectrum analyzer ran (λmax, λ2, λ3 every few steps), the eigenvalues at the onset are
  the mean over the two walls of the bounce: the curvature alternates from step to step with the
  side of the valley the system is on, and splits well before F visibly bounces (on the 2021
  Fig. 4 run λmax reads 1.63 and 2.26 on steps 3990 and 3991, mean 1.95 ≈ 2/η). Even and odd
  steps' samples are each interpolated linearly to the onset, and the two values averaged; an
  analyzer running at an even cadence only sees one wall. Samples more than ``lambda_window``
  steps from the onset are not used. The 2021 criterion is applied too: the first sample of an
  event (from ``lambda_window`` steps before its start) where λmax changed by more than
  ``lambda_jump`` since the previous sample is the event's ``jump_step``.

Every quantity at step t depends only on the losses of steps t − :func:`history_length` … t, so
:class:`BifurcationDetector`, fed block by block during training with bounded memory, and
:func:`find_bifurcations`, run on a finished trace, find exactly the same events.

Over 400 lines on purpose: the definition above, the online detector and the offline one are
kept in one module so that one reading checks they agree.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dlf.analysis.stability import threshold_label, trace_stability_factor


class BifurcationSettings(BaseModel):
    """The detector's thresholds; the defaults were tuned on the 2021 Fig. 4 run (see module)."""

    model_config = ConfigDict(extra="forbid")
    trend_ratio: float = Field(
        1.0, gt=0, description="bounce amplitude |e_t|/2 must reach this × trend |d_t + d_{t−1}|/2"
    )
    min_length: int = Field(10, ge=2, description="bouncing steps in a row that start an event")
    max_gap: int = Field(50, ge=0, description="calm steps tolerated inside one event")
    split_ratio: float = Field(
        0.1, gt=0, description="lag-p over lag-1 second-difference ratio that means period 2p"
    )
    window: int = Field(32, ge=4, description="steps averaged when measuring the period")
    max_period: int = Field(16, ge=2, description="largest period looked for (a power of 2)")
    rel_floor: float = Field(
        1e-12, ge=0, description="bounces smaller than this × |F_t| are rounding noise"
    )
    lambda_jump: float = Field(
        0.1, gt=0, description="2021 criterion: change of λmax between spectrum samples"
    )
    lambda_window: int = Field(
        250, ge=1, description="spectrum samples this close to an onset give λ and the jump"
    )

    @field_validator("max_period")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of 2 (2, 4, 8, 16, ...)")
        return value


def history_length(settings: BifurcationSettings) -> int:
    """How many earlier losses the indicators of one step need (see :func:`periods`)."""
    return 2 * (settings.window - 1) + settings.max_period


# --- per-step indicators -------------------------------------------------------------------------


def _lagged_second_difference(loss: np.ndarray, lag: int) -> np.ndarray:
    """|F_t − 2F_{t−lag} + F_{t−2·lag}| / 2 for each row t (NaN without enough history)."""
    out = np.full_like(loss, np.nan)
    out[2 * lag :] = np.abs(loss[2 * lag :] - 2 * loss[lag:-lag] + loss[: -2 * lag]) / 2
    return out


def _trailing(values: np.ndarray, window: int, reduce: np.ufunc, empty: float) -> np.ndarray:
    """``reduce`` over each row and the ``window − 1`` before it, in the same order for every row.

    Rows without a full window get ``empty``. The fixed order makes the result independent of
    where a block starts, so online and offline detection agree to the last bit.
    """
    out = np.full_like(values, empty)
    n = len(values)
    if n >= window:
        total = values[window - 1 :].copy()
        for lag in range(1, window):
            total = reduce(total, values[window - 1 - lag : n - lag])
        out[window - 1 :] = total
    return out


def bouncing(loss: np.ndarray, settings: BifurcationSettings) -> np.ndarray:
    """Rows (consecutive steps) of ``loss (step, member)`` where F bounces; the first 3 are not."""
    d = np.full_like(loss, np.nan)
    d[1:] = loss[1:] - loss[:-1]
    e = np.full_like(loss, np.nan)
    e[1:] = d[1:] - d[:-1]
    trend = np.full_like(loss, np.nan)
    trend[1:] = np.abs(d[1:] + d[:-1]) / 2
    amplitude = np.abs(e) / 2
    alternating = np.zeros(loss.shape, dtype=bool)
    alternating[1:] = e[1:] * e[:-1] < 0
    with np.errstate(invalid="ignore"):
        return (
            alternating
            & (amplitude >= settings.trend_ratio * trend)
            & (amplitude > settings.rel_floor * np.abs(loss))
        )


def periods(loss: np.ndarray, settings: BifurcationSettings) -> np.ndarray:
    """The period (2, 4, …, max_period) held at each row of ``loss (step, member)``; see the module.

    Each row needs :func:`history_length` rows before it; rows with less read as period 2.
    """
    w = settings.window
    base = _trailing(_lagged_second_difference(loss, 1), w, np.add, np.nan)
    period = np.full(loss.shape, 2.0)
    still = np.ones(loss.shape, dtype=bool)
    lag = 2
    with np.errstate(invalid="ignore"):
        while 2 * lag <= settings.max_period:
            split = _trailing(_lagged_second_difference(loss, lag), w, np.add, np.nan)
            still &= split >= settings.split_ratio * base
            period[still] = 2 * lag
            lag *= 2
    return _trailing(period, w, np.minimum, 2.0).astype(np.int64)


# --- events --------------------------------------------------------------------------------------


@dataclass
class Event:
    """One instability of one member: bouncing steps ``start`` … ``end``, highest period reached."""

    member: int
    start: int
    end: int
    max_period: int
    eta: float  # learning rate η_t at the onset
    lambdas: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))  # λmax, λ2, λ3
    jump_step: int = -1


@dataclass
class _Tracker:
    """One member's current run of bouncing steps and open event, carried across blocks."""

    run_start: int = -1  # first step of the run that reached the last step seen; -1: none
    run_eta: float = float("nan")
    run_period: int = 2
    event: Event | None = None


@dataclass
class _Spectral:
    """How far an event's λ fields have got through the spectrum samples."""

    event: Event
    onset_done: bool = False
    jump_done: bool = False
    scanned: int = -1  # step of the last sample compared for the jump; -1: none yet


class BifurcationDetector:
    """Online detector for ``n_members`` loss series, fed block by block; see the module.

    ``add_loss`` takes consecutive steps; ``add_spectrum`` takes samples in increasing step order,
    at any cadence and ahead of or behind the losses. Call :meth:`finish` after the last step.
    λ at an onset is the two walls' mean (see the module; NaN without samples around it); the jump
    step is the first sample in [start − lambda_window, end] whose λmax differs from the previous
    sample's by more than ``lambda_jump``. Both are worked out as samples arrive, so memory stays
    bounded: the last :func:`history_length` losses, the samples since the earliest step still in
    question (at most ``lambda_window`` before a run or an onset), and the events found.
    """

    def __init__(self, n_members: int, settings: BifurcationSettings | None = None) -> None:
        self.settings = settings or BifurcationSettings()
        self.n_members = n_members
        self._history = np.full((history_length(self.settings), n_members), np.nan)
        self.steps_seen = 0
        self._trackers = [_Tracker() for _ in range(n_members)]
        self._events: list[Event] = []
        self._watched: list[_Spectral] = []  # events whose λ fields may still change
        self._samples: deque[tuple[int, np.ndarray]] = deque()
        self._finished = False

    @property
    def samples_held(self) -> int:
        """Spectrum samples kept in memory now (for tests of the memory bound)."""
        return len(self._samples)

    # --- input ---------------------------------------------------------------------------------

    def add_loss(self, first_step: int, loss: np.ndarray, lr: np.ndarray) -> None:
        """Losses ``(step, member)`` of consecutive steps from ``first_step``, and η_t alike.

        Non-finite losses (diverged members) never bounce.
        """
        if self._finished:
            raise ValueError("the detector has finished")
        if first_step != self.steps_seen:
            raise ValueError(f"expected losses from step {self.steps_seen}, got {first_step}")
        if len(loss) == 0:
            return
        data = np.concatenate([self._history, np.asarray(loss, dtype=np.float64)])
        n_hist = len(self._history)
        bounce = bouncing(data, self.settings)[n_hist:]
        period = periods(data, self.settings)[n_hist:]
        self._history = data[-n_hist:]
        lr = np.asarray(lr, dtype=np.float64)
        for m, tracker in enumerate(self._trackers):
            self._advance(m, tracker, first_step, bounce[:, m], period[:, m], lr[:, m])
        self.steps_seen = first_step + len(loss)
        self._update_spectral()

    def add_spectrum(self, step: int, values: np.ndarray) -> None:
        """Top Hessian eigenvalues ``(member, k)``, descending, measured at ``step``."""
        if self._samples and step <= self._samples[-1][0]:
            raise ValueError(f"spectrum samples must come in increasing steps, got {step}")
        row = np.full((self.n_members, 3), np.nan)
        k = min(3, values.shape[1])
        row[:, :k] = values[:, :k]
        self._samples.append((step, row))
        self._update_spectral()

    def finish(self) -> None:
        """Close open events: no more losses or samples will come."""
        for tr in self._trackers:
            tr.event = None
        self._finished = True
        self._update_spectral()

    # --- the state machine -----------------------------------------------------------------------

    def _advance(
        self,
        member: int,
        tr: _Tracker,
        first: int,
        bounce: np.ndarray,
        period: np.ndarray,
        lr: np.ndarray,
    ) -> None:
        """Step one member through a block, one run of consecutive bouncing steps at a time."""
        s = self.settings
        look_back = history_length(s) - s.max_period  # steps behind a held period's reading
        edges = np.diff(np.concatenate([[0], bounce.astype(np.int8), [0]]))
        for i, j in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
            a, b = first + int(i), first + int(j) - 1  # first and last step of this run piece
            if not (i == 0 and tr.run_start >= 0):  # a new run, not one continued from a block
                tr.run_start, tr.run_eta, tr.run_period = a, float(lr[i]), 2
                if tr.event is not None and a - tr.event.end - 1 > s.max_gap:
                    tr.event = None
            anchor = tr.event.start if tr.event is not None else tr.run_start
            counted = period[max(int(i), anchor + look_back - first) : int(j)]
            top = int(counted.max()) if counted.size else 2
            if tr.event is not None:
                tr.event.end = b
                tr.event.max_period = max(tr.event.max_period, top)
                continue
            tr.run_period = max(tr.run_period, top)
            if b - tr.run_start + 1 >= s.min_length:
                tr.event = Event(member, tr.run_start, b, tr.run_period, tr.run_eta)
                self._events.append(tr.event)
                self._watched.append(_Spectral(tr.event))
        last = first + len(bounce) - 1
        if not bounce[-1]:
            tr.run_start = -1
        if tr.event is not None and last - tr.event.end > s.max_gap:
            tr.event = None

    # --- spectrum bookkeeping ------------------------------------------------------------------

    def _update_spectral(self) -> None:
        """Advance every watched event through the samples; drop samples no longer needed."""
        steps = np.array([t for t, _ in self._samples], dtype=np.int64)
        open_events = {id(tr.event) for tr in self._trackers if tr.event is not None}
        still = []
        for watch in self._watched:
            self._follow(watch, steps, closed=id(watch.event) not in open_events)
            if not (watch.onset_done and watch.jump_done):
                still.append(watch)
        self._watched = still
        window = self.settings.lambda_window
        needed = [self.steps_seen - window]
        needed += [  # a run in progress may yet become an event
            tr.run_start - window for tr in self._trackers if tr.run_start >= 0 and not tr.event
        ]
        for watch in self._watched:
            if not watch.onset_done:
                needed.append(watch.event.start - window)
            if not watch.jump_done:
                needed.append(watch.scanned if watch.scanned >= 0 else watch.event.start - window)
        # keep the last sample before the earliest step in question: it brackets or precedes
        while len(self._samples) >= 2 and self._samples[1][0] <= min(needed):
            self._samples.popleft()

    def _follow(self, watch: _Spectral, steps: np.ndarray, closed: bool) -> None:
        ev, m = watch.event, watch.event.member
        window = self.settings.lambda_window
        if not watch.onset_done and (
            (len(steps) and steps[-1] > ev.start + window) or self._finished
        ):
            near = np.flatnonzero(np.abs(steps - ev.start) <= window)
            values = np.array([self._samples[i][1][m] for i in near]).reshape(len(near), 3)
            ev.lambdas = two_walls(steps[near], values, ev.start)
            watch.onset_done = True
        if watch.jump_done:
            return
        lo = ev.start - window
        mine = self._sampled(m, steps, max(watch.scanned + 1, lo))
        for before, i in itertools.pairwise(mine):  # samples that left m out: skipped
            t = int(steps[i])
            if t <= watch.scanned or t < lo:
                continue
            if t > ev.end:
                break
            change = abs(self._samples[i][1][m, 0] - self._samples[before][1][m, 0])
            watch.scanned = t
            if change > self.settings.lambda_jump:
                ev.jump_step, watch.jump_done = t, True
                return
        if closed and ((len(steps) and steps[-1] >= ev.end) or self._finished):
            watch.jump_done = True

    def _sampled(self, m: int, steps: np.ndarray, first: int) -> list[int]:
        """Indices of the samples of member ``m`` from step ``first`` on, after the last one
        before it: what the jump scan has not seen (scanning all each time was quadratic)."""
        begin = int(np.searchsorted(steps, first))
        back = begin - 1
        while back >= 0 and not np.isfinite(self._samples[back][1][m, 0]):
            back -= 1
        later = [i for i in range(begin, len(steps)) if np.isfinite(self._samples[i][1][m, 0])]
        return [back, *later] if back >= 0 else later

    # --- output ----------------------------------------------------------------------------------

    def events(self) -> list[Event]:
        """All events so far, by member and start; an open one ends at its last bouncing step."""
        return sorted(self._events, key=lambda ev: (ev.member, ev.start))


def two_walls(steps: np.ndarray, values: np.ndarray, step: int) -> np.ndarray:
    """λ ``(3,)`` at ``step`` as the mean over even and odd steps' samples, each interpolated.

    ``steps (S,)`` increasing, ``values (S, 3)`` (rows with NaN λmax are not samples of this
    member). A parity contributes where it has a sample at ``step`` or on both sides of it; NaN
    where neither parity does.
    """
    walls = []
    for parity in (0, 1):
        mine = (steps % 2 == parity) & np.isfinite(values[:, 0])  # NaN: this member not sampled
        t, v = steps[mine], values[mine]
        k = int(np.searchsorted(t, step))
        if k < len(t) and t[k] == step:
            walls.append(v[k])
        elif 0 < k < len(t):
            w = (step - t[k - 1]) / (t[k] - t[k - 1])
            walls.append((1 - w) * v[k - 1] + w * v[k])
    return np.mean(walls, axis=0) if walls else np.full(3, np.nan)


# --- datasets ------------------------------------------------------------------------------------


def events_dataset(
    events: list[Event],
    period: np.ndarray,
    n_classes: int,
    settings: BifurcationSettings,
    prefix: str = "bifurcation",
    factor: float = 2.0,
) -> xr.Dataset:
    """Events along ``<prefix>_event`` and per-member summaries, as the trace stores them.

    ``period (member,)`` and ``n_classes`` place each onset in its Γ cycle
    (floor(start / (C·T))) and name the class emphasised then (floor(start / T) mod C).
    Summaries: ``mean_lambda_onset`` (mean λmax at the onsets), ``ratio`` (mean λ_onset·η_t/c,
    1 at the optimiser's edge of stability c/η, :mod:`dlf.analysis.stability`) and ``count``;
    NaN or 0 for members without events.
    """
    n_members = len(period)
    member = np.array([ev.member for ev in events], dtype=np.int64)
    lambdas = np.array([ev.lambdas for ev in events]).reshape(len(events), 3)
    eta = np.array([ev.eta for ev in events], dtype=np.float64)
    t = np.asarray(period, dtype=np.float64)[member]
    data = _event_variables(events, lambdas, eta, t, n_classes, settings, f"{prefix}_event")
    summaries = {
        "mean_lambda_onset": (
            _member_nanmean(member, lambdas[:, 0], n_members),
            "mean λmax at the onsets",
        ),
        "ratio": (
            _member_nanmean(member, lambdas[:, 0] * eta / factor, n_members),
            f"mean λ_onset·η/{factor:g} (1: the {threshold_label(factor)} threshold)",
        ),
        "count": (np.bincount(member, minlength=n_members), "number of events"),
    }
    for key, (values, long_name) in summaries.items():
        data[key] = xr.DataArray(
            values, dims=("member",), attrs={"long_name": long_name, "units": "1"}
        )
    used = settings.model_dump_json(include=set(BifurcationSettings.model_fields))
    for value in data.values():
        value.attrs["detector_settings"] = used
    return xr.Dataset({f"{prefix}_{key}": value for key, value in data.items()})


def _event_variables(
    events: list[Event],
    lambdas: np.ndarray,
    eta: np.ndarray,
    period: np.ndarray,
    n_classes: int,
    settings: BifurcationSettings,
    dim: str,
) -> dict[str, xr.DataArray]:
    """One value per event along ``dim``: member, onset and end, Γ cycle and class at the
    onset, highest period, λ1..3 and η at the onset, the 2021 criterion's jump step."""

    def per_event(values: np.ndarray, long_name: str, units: str = "1") -> xr.DataArray:
        return xr.DataArray(values, dims=(dim,), attrs={"long_name": long_name, "units": units})

    def steps(attribute: str) -> np.ndarray:
        return np.array([getattr(ev, attribute) for ev in events], dtype=np.int64)

    start = steps("start")
    jump = f"first sample where λmax moved by > {settings.lambda_jump} (2021 criterion; -1: none)"
    return {
        "member": per_event(steps("member"), "ensemble member"),
        "start": per_event(start, "first bouncing step (onset)", "step"),
        "end": per_event(steps("end"), "last bouncing step", "step"),
        "cycle": per_event(
            (start // (n_classes * period)).astype(np.int64), "Γ cycle of the onset"
        ),
        "class": per_event(
            (start // period).astype(np.int64) % n_classes, "class emphasised at onset"
        ),
        "max_period": per_event(
            steps("max_period"),
            f"highest period held ({settings.max_period}: that or more, or chaos)",
            "step",
        ),
        "lambda_onset": per_event(lambdas[:, 0], "Hessian λmax at the onset (interpolated)"),
        "lambda2": per_event(lambdas[:, 1], "second Hessian eigenvalue at the onset"),
        "lambda3": per_event(lambdas[:, 2], "third Hessian eigenvalue at the onset"),
        "eta": per_event(eta, "learning rate η_t at the onset"),
        "jump_step": per_event(steps("jump_step"), jump, "step"),
    }


def _member_nanmean(member: np.ndarray, values: np.ndarray, n_members: int) -> np.ndarray:
    """Mean of the finite ``values`` of each member (NaN where it has none)."""
    finite = np.isfinite(values)
    total = np.bincount(member[finite], weights=values[finite], minlength=n_members)
    count = np.bincount(member[finite], minlength=n_members)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def find_bifurcations(
    trace: xr.Dataset,
    settings: BifurcationSettings | None = None,
    spectrum: str | None = "lanczos",
    prefix: str = "bifurcation",
) -> xr.Dataset:
    """The events in a finished trace, exactly as the ``bifurcation`` analyzer records them online.

    Needs ``loss`` and ``lr`` at every step (``train.record_every: 1``); losses from a member's
    ``diverged_step`` on are ignored. λ comes from ``<spectrum>_eigenvalues`` where present.
    """
    settings = settings or BifurcationSettings()
    steps = trace["step"].values
    if not np.array_equal(steps, np.arange(len(steps))):
        raise ValueError("bifurcation detection needs the loss at every step (record_every: 1)")
    loss = trace["loss"].transpose("member", "step").values.astype(np.float64)
    diverged = trace["diverged_step"].values
    after = (diverged[:, None] >= 0) & (steps[None, :] >= diverged[:, None])
    loss = np.where(after, np.nan, loss)
    lr = trace["lr"].transpose("member", "step").values
    detector = BifurcationDetector(loss.shape[0], settings)
    detector.add_loss(0, loss.T, lr.T)
    name = f"{spectrum}_eigenvalues"
    if spectrum is not None and name in trace:
        eig = trace[name].transpose("member", f"{spectrum}_step", ...)
        for i, step in enumerate(eig[f"{spectrum}_step"].values):
            detector.add_spectrum(int(step), eig.values[:, i, :].astype(np.float64))
    detector.finish()
    return events_dataset(
        detector.events(),
        trace["period"].values,
        trace.sizes["class_index"],
        settings,
        prefix,
        trace_stability_factor(trace),
    )
