"""The ``landscape`` analyzer: 2D slices of F around θ_t with the trajectory that follows.

At a slice step t, for each chosen member, the analyzer takes two directions d₁, d₂ (by default
the top-2 Hessian eigenvectors from the shared curvature helper, so no second eigen-solve),
evaluates F(θ_t + a·d₁ + b·d₂; Γ(t)) on a grid of a, b ∈ [−radius, radius] with Γ frozen at its
value at t, and then, during the next ``future`` steps, records where training goes in that
plane: the coordinates (a, b) of θ_{t+j} − θ_t, how far it is off the plane, F(θ_{t+j}; Γ(t))
(the value on the frozen landscape drawn in the background) and F(θ_{t+j}; Γ(t+j)) (the loss
training actually saw). It only reads θ: training is the same with or without it.

Slices are taken at listed steps, every n steps (``slice_every``, optionally only within
``[slice_start, slice_stop)``: the frames of ``dlf-study plot --figure landscape-movie``), and, with
``at_bifurcations``, for a member as soon as the ``bifurcation`` analyzer announces a new onset of
it (its ``dlf_instability`` event). Hessian directions keep their sign from one slice of a member
to the next (an eigenvector's sign is arbitrary), so that consecutive slices, the movie's frames,
do not flip.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from pydantic import Field, field_validator, model_validator

from dlf import plugin
from dlf.plugin import DEFAULT_TOL

from .directions import curvature_along, filter_normalized_pair, principal_plane
from .grid import evaluate_plane, plane_coordinates, rows_per_chunk

COORDS = ("a", "b")  # the labels of a trajectory point's two coordinates in the plane
# A slice's variables in the trace: (name, Slice attribute, dims after landscape_slice, long name);
# every dim is prefixed landscape_ in the trace.
VARIABLES = (
    ("loss", "loss", ("a", "b"), "F(θ_t + a·d1 + b·d2; Γ(t)) with Γ frozen at the slice step"),
    ("member", "member", (), "the member sliced"),
    ("onset", "onset", (), "bifurcation onset that triggered the slice (-1: none)"),
    ("listed", "listed", (), "taken at one of the listed steps"),
    ("cadence", "cadence", (), "taken on the every-n cadence (the landscape movie's frames)"),
    (
        "eigenvalues",
        "curvature",
        ("direction",),
        "curvature along d1, d2 (Hessian eigenvalues, or Rayleigh quotients dᵀHd/dᵀd)",
    ),
    (
        "trajectory",
        "trajectory",
        ("k", "coord"),
        "(a, b) of θ_{t+k} − θ_t in the slice's plane (least squares)",
    ),
    ("trajectory_loss", "trajectory_loss", ("k",), "F(θ_{t+k}; Γ(t)) on the frozen landscape"),
    ("trajectory_current_loss", "trajectory_current_loss", ("k",), "F(θ_{t+k}; Γ(t+k)) as trained"),
    ("trajectory_residual", "trajectory_residual", ("k",), "distance of θ_{t+k} from the plane"),
)
BIFURCATION = "bifurcation"  # the analyzer whose announced onsets trigger slices
FORMER_NAMES = {"every": "slice_every", "every_start": "slice_start", "every_stop": "slice_stop"}


class LandscapeOptions(plugin.AnalyzerOptions):
    """When to slice, which members, along which directions, and how fine."""

    every: int = Field(
        1,
        ge=1,
        le=1,
        description="always 1: the slicer picks its steps itself; `every: n` in a config is read "
        "as slice_every, its former name",
    )
    slice_every: int | None = Field(
        None, ge=0, description="also slice every n steps (formerly `every`); 0 or null: off"
    )
    slice_start: int = Field(
        0, ge=0, description="slice_every: first step of the cadence (formerly `every_start`)"
    )
    slice_stop: int | None = Field(
        None,
        ge=1,
        description="slice_every: the cadence stops before this step; null: at the end "
        "(formerly `every_stop`)",
    )
    steps: list[int] = Field(default_factory=list, description="slice at these steps")
    at_bifurcations: bool = Field(
        False, description="also slice a member when the bifurcation analyzer reports an onset"
    )
    members: list[int] = Field([0], min_length=1, description="member indices to slice")
    directions: Literal["hessian", "random", "pca"] = Field(
        "hessian",
        description="hessian: top-2 eigenvectors; random: filter-normalised (Li et al. 2018); "
        "pca: top-2 principal components of the recent trajectory",
    )
    radius: float = Field(1.0, gt=0, description="a and b range over [-radius, radius]")
    grid: int = Field(41, ge=2, description="grid points per axis")
    future: int = Field(20, ge=0, description="steps of trajectory recorded after each slice")
    chunk: int | None = Field(
        None, ge=1, description="grid points per forward pass; null: as many as fit in 64 MiB"
    )
    solver: Literal["lanczos", "exact"] = Field(
        "lanczos",
        description="how the curvature helper finds eigenvectors (exact: dense, tiny nets)",
    )
    tol: float = Field(DEFAULT_TOL, gt=0, description="Lanczos relative residual for hessian")
    seed: int = Field(0, description="seed of the random directions")
    pca_every: int = Field(5, ge=1, description="pca: θ of the members is kept every n steps")
    pca_window: int = Field(40, ge=2, description="pca: the last n kept θ before a slice are used")

    @model_validator(mode="before")
    @classmethod
    def _former_names(cls, data: Any) -> Any:
        """The cadence's former keys (``every``, ``every_start``, ``every_stop``) still work:
        ``every`` now means for every analyzer the multiples of which it runs at, and the
        landscape decides its own steps (:meth:`LandscapeAnalyzer.due`)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new in FORMER_NAMES.items():
            if old in data:
                if new in data:
                    raise ValueError(f"give {new} or its former name {old}, not both")
                data[new] = data.pop(old)
        return data

    @field_validator("steps", "members")
    @classmethod
    def _non_negative_unique(cls, value: list[int]) -> list[int]:
        if any(v < 0 for v in value) or len(set(value)) != len(value):
            raise ValueError("must be distinct integers >= 0")
        return sorted(value)

    @model_validator(mode="after")
    def _something_to_do(self) -> LandscapeOptions:
        if not (self.steps or self.slice_every or self.at_bifurcations):
            raise ValueError(
                "set steps, slice_every or at_bifurcations: the analyzer would never slice"
            )
        if self.slice_stop is not None and self.slice_stop <= self.slice_start:
            raise ValueError("slice_stop must be greater than slice_start")
        if self.directions == "pca" and self.steps and self.steps[0] <= self.pca_every:
            raise ValueError(
                f"pca needs two trajectory snapshots before a slice: steps must be > pca_every "
                f"({self.pca_every})"
            )
        return self


@dataclass
class Slice:
    """One slice: where and when, the grid of F, and the trajectory after it (NaN until seen)."""

    step: int
    member: int
    onset: int  # the bifurcation onset that triggered the slice; -1: a scheduled slice
    listed: bool  # its step is one of the listed ``steps``
    cadence: bool  # its step is on the ``slice_every`` cadence
    curvature: np.ndarray  # (2,) eigenvalues, or Rayleigh quotients of non-eigen directions
    loss: np.ndarray  # (grid, grid), indexed [a, b]
    trajectory: np.ndarray  # (future, 2): (a, b) of θ_{t+j} − θ_t, j = 1..future
    trajectory_loss: np.ndarray  # (future,) F(θ_{t+j}; Γ(t))
    trajectory_current_loss: np.ndarray  # (future,) F(θ_{t+j}; Γ(t+j))
    trajectory_residual: np.ndarray  # (future,) distance of θ_{t+j} from the plane


@dataclass
class Plane:
    """The plane of a slice whose future is still being recorded, in parameter space."""

    center: torch.Tensor  # (n,) θ_t
    directions: torch.Tensor  # (2, n)
    gamma: torch.Tensor  # (C,) Γ(t)


class LandscapeAnalyzer(plugin.Analyzer[LandscapeOptions]):
    """Slices F at configured steps and follows the trajectory for ``future`` steps after each."""

    def __init__(self, name: str, options: LandscapeOptions, run: plugin.RunContext) -> None:
        super().__init__(name, options, run)
        out_of_range = [m for m in options.members if m >= run.n_members]
        if out_of_range:
            raise plugin.ConfigError(
                f"analyzers.{name}.members",
                f"no member {out_of_range[0]}; allowed: 0..{run.n_members - 1}",
            )
        late = [s for s in options.steps if s >= run.total_steps]
        if late:
            raise plugin.ConfigError(
                f"analyzers.{name}.steps",
                f"step {late[0]} is not < train.steps ({run.total_steps})",
            )
        if options.at_bifurcations and BIFURCATION not in run.config.analyzers:
            raise plugin.ConfigError(
                f"analyzers.{name}.at_bifurcations",
                f"needs the {BIFURCATION} analyzer: add `{BIFURCATION}: {{}}` under analyzers",
            )
        self.slice_steps = set(options.steps)
        self.coords = torch.linspace(
            -options.radius, options.radius, options.grid, dtype=run.dtype, device=run.device
        )
        self.chunk = options.chunk or rows_per_chunk(run.objective)
        self.slices: list[Slice] = []
        self._pending: list[tuple[Slice, Plane]] = []
        self._recording_until = -1
        self._history: deque[torch.Tensor] = deque(maxlen=options.pca_window)
        self._generator = torch.Generator().manual_seed(options.seed)
        self._known_onsets: set[tuple[int, int]] = set()  # (member, onset step)
        self._new_onsets: list[tuple[int, int]] = []  # reported but not sliced yet
        self._last_directions: dict[int, torch.Tensor] = {}  # member → (2, n) of its last slice

    # --- schedule ---------------------------------------------------------------------------

    def on_cadence(self, step: int) -> bool:
        """Whether ``step`` is on the ``slice_every`` cadence, within its start and stop."""
        o = self.options
        inside = o.slice_start <= step and (o.slice_stop is None or step < o.slice_stop)
        return bool(o.slice_every and inside and (step - o.slice_start) % o.slice_every == 0)

    def memory(self) -> dict[str, float]:
        """A slice keeps its grid × grid losses (float64) for each member sliced."""
        opts = self.options
        return {"grid": 8.0 * opts.grid**2 * len(opts.members)}

    def slicing_at(self, step: int) -> bool:
        return step in self.slice_steps or self.on_cadence(step)

    def _snapshot_at(self, step: int) -> bool:
        return self.options.directions == "pca" and step % self.options.pca_every == 0

    def due(self, step: int) -> bool:
        """At slice steps, on the ``future`` steps after each, at pca snapshot steps, and at the
        first step after the bifurcation detector reports an onset (``at_bifurcations``)."""
        return (
            step <= self._recording_until
            or self.slicing_at(step)
            or self._snapshot_at(step)
            or bool(self._new_onsets)
        )

    # --- events -----------------------------------------------------------------------------

    @plugin.hookimpl
    def dlf_instability(self, run: plugin.RunContext, member: int, onset: int, step: int) -> None:
        """An onset announced by the bifurcation analyzer: slice that member at the next step."""
        known = (member, onset) in self._known_onsets
        if self.options.at_bifurcations and member in self.options.members and not known:
            self._known_onsets.add((member, onset))
            self._new_onsets.append((member, onset))

    @plugin.hookimpl
    def dlf_step_end(self, state: plugin.StepState) -> None:
        self._follow(state)
        onsets: dict[int, int] = {}  # member → earliest newly reported onset
        for member, start in self._new_onsets:
            onsets.setdefault(member, start)
        self._new_onsets = []
        members = self.options.members if self.slicing_at(state.step) else sorted(onsets)
        if members:
            self._slice(state, members, onsets)
        if self._snapshot_at(state.step):
            self._history.append(state.theta[self.options.members].clone())

    def _follow(self, state: plugin.StepState) -> None:
        """Record θ_t of the slices whose future is being followed, in their planes."""
        still = []
        for record, plane in self._pending:
            j = state.step - record.step - 1
            theta = state.theta[record.member]
            ab, off_plane = plane_coordinates(theta - plane.center, plane.directions)
            with torch.no_grad():
                frozen = self.run.objective(theta[None], plane.gamma[None])[0]
            record.trajectory[j] = ab.cpu().numpy()
            record.trajectory_residual[j] = float(off_plane)
            record.trajectory_loss[j] = float(frozen)
            record.trajectory_current_loss[j] = float(state.loss[record.member])
            if j + 1 < self.options.future:
                still.append((record, plane))
        self._pending = still

    def _slice(self, state: plugin.StepState, members: list[int], onsets: dict[int, int]) -> None:
        members = [m for m in members if bool(state.active[m])]
        planes = self._directions(state, members) if members else None
        if planes is None:
            return
        directions, curvature = planes
        k = self.options.future
        for i, m in enumerate(members):
            if self.options.directions == "hessian":
                directions[i] = self._keep_sign(m, directions[i])
            loss = evaluate_plane(
                self.run.objective,
                state.theta[m],
                directions[i],
                state.gamma[m],
                self.coords,
                self.chunk,
            )
            record = Slice(
                step=state.step,
                member=m,
                onset=onsets.get(m, -1),
                listed=state.step in self.slice_steps,
                cadence=self.on_cadence(state.step),
                curvature=curvature[i].cpu().numpy(),
                loss=loss.cpu().numpy(),
                trajectory=np.full((k, 2), np.nan),
                trajectory_loss=np.full(k, np.nan),
                trajectory_current_loss=np.full(k, np.nan),
                trajectory_residual=np.full(k, np.nan),
            )
            self.slices.append(record)
            if k:
                plane = Plane(state.theta[m].clone(), directions[i], state.gamma[m].clone())
                self._pending.append((record, plane))
        self._recording_until = max(self._recording_until, state.step + k)

    def _keep_sign(self, member: int, directions: torch.Tensor) -> torch.Tensor:
        """``directions (2, n)`` with each one's sign chosen to agree with the member's last
        slice (positive overlap), so that consecutive slices are drawn the same way round."""
        last = self._last_directions.get(member)
        if last is not None:
            signs = torch.where((directions * last).sum(dim=-1) < 0, -1.0, 1.0).to(directions)
            directions = directions * signs[:, None]
        self._last_directions[member] = directions.clone()
        return directions

    def _directions(
        self, state: plugin.StepState, members: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Directions ``(L, 2, n)`` and the curvature along them ``(L, 2)`` for ``members``.

        None for pca slices before two trajectory snapshots exist (``slice_every`` slices at
        step 0).
        """
        options = self.options
        if options.directions == "hessian":
            values, vectors = state.curvature.eigenpairs(2, tol=options.tol, mode=options.solver)
            return vectors[members], values[members]
        if options.directions == "random":
            directions = torch.stack(
                [
                    filter_normalized_pair(self.run.model, state.theta[m], self._generator)
                    for m in members
                ]
            )
        else:
            if len(self._history) < 2:
                return None
            history = torch.stack(list(self._history))  # (snapshot, option member, n)
            directions = torch.stack(
                [
                    principal_plane(history[:, options.members.index(m)] - state.theta[m])
                    for m in members
                ]
            )
        return directions, curvature_along(state.curvature, members, directions, self.run.n_members)

    # --- trace ------------------------------------------------------------------------------

    @plugin.hookimpl
    def dlf_trace_contribute(self, run: plugin.RunContext) -> dict[str, xr.DataArray]:
        """The slices so far (trajectories NaN where not reached yet); nothing before the first."""
        if not self.slices:
            return {}
        grid = self.coords.cpu().numpy()
        future = np.arange(1, self.options.future + 1)
        labels = {
            "a": grid,
            "b": grid,
            "k": future,
            "coord": list(COORDS),
            "direction": ["d1", "d2"],
        }
        slc = self.var("slice")  # its dims carry its name, as its variables do
        steps = np.array([s.step for s in self.slices])
        out = {self.var("step"): xr.DataArray(steps, dims=slc, attrs={"units": "step"})}
        for name, key, dims, long_name in VARIABLES:
            out[self.var(name)] = xr.DataArray(
                np.stack([getattr(s, key) for s in self.slices]),
                dims=(slc, *map(self.var, dims)),
                coords={self.var(d): labels[d] for d in dims},
                attrs={"long_name": long_name, "directions": self.options.directions},
            )
        return out
