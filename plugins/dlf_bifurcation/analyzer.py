"""The ``bifurcation`` analyzer: finds period-doubling events in every member's loss as it trains.

It reads F_t of every member at every step into a small device buffer and hands it to
:class:`dlf.analysis.BifurcationDetector` a block at a time, so memory stays bounded and the
training loop never waits for the host. Where the ``lanczos`` analyzer (or another named by
``spectrum``) records eigenvalues, it reads them from the shared curvature cache at those steps,
after that analyzer ran. The events equal what :func:`dlf.analysis.find_bifurcations` finds on the
finished trace.
"""

from __future__ import annotations

import torch
import xarray as xr
from pydantic import Field, field_validator

from dlf import plugin
from dlf.plugin import BifurcationDetector, BifurcationSettings, events_dataset

BLOCK = 256  # steps buffered on the device before the detector sees them


class BifurcationOptions(plugin.AnalyzerOptions, BifurcationSettings):
    """The detector's thresholds (see :class:`dlf.analysis.BifurcationSettings`) and λ's source."""

    spectrum: str | None = Field(
        "lanczos", description="analyzer whose eigenvalues give λ at the onsets; null: none"
    )

    @field_validator("every")
    @classmethod
    def _every_step(cls, value: int) -> int:
        if value != 1:
            raise ValueError("bifurcation reads F at every step; only 1 is allowed")
        return value


class BifurcationAnalyzer(plugin.Analyzer):
    """Records ``bifurcation_*`` events along ``bifurcation_event`` and per-member summaries."""

    Options = BifurcationOptions
    options: BifurcationOptions

    def __init__(self, name: str, options: plugin.AnalyzerOptions, run: plugin.RunContext) -> None:
        super().__init__(name, options, run)
        self.detector = BifurcationDetector(run.n_members, self.options)
        shape = (BLOCK, run.n_members)
        self._loss = torch.empty(shape, dtype=run.dtype, device=run.device)
        self._lr = torch.empty(shape, dtype=run.dtype, device=run.device)
        self._first = 0  # step of the buffer's first row
        self._rows = 0

    def due(self, step: int) -> bool:
        return True

    def _spectrum_source(self) -> plugin.Analyzer | None:
        name = self.options.spectrum
        return None if name is None else self.run.analyzers.get(name)

    @plugin.hookimpl(trylast=True)  # after the spectrum analyzer, whose solve is then cached
    def dlf_step_end(self, state: plugin.StepState) -> None:
        if self._rows == 0:
            self._first = state.step
        nan = torch.full_like(state.loss, float("nan"))
        self._loss[self._rows] = torch.where(state.active, state.loss, nan)
        self._lr[self._rows] = state.lr
        self._rows += 1
        if self._rows == BLOCK:
            self._flush()
        source = self._spectrum_source()
        if source is not None and state.step % source.options.every == 0:
            values = _recorded_spectrum(source, state)
            if values is not None:
                values = values.masked_fill(~state.active[:, None], float("nan"))
                self.detector.add_spectrum(state.step, values.cpu().double().numpy())

    def _flush(self) -> None:
        if self._rows:
            loss = self._loss[: self._rows].cpu().double().numpy()
            lr = self._lr[: self._rows].cpu().double().numpy()
            self.detector.add_loss(self._first, loss, lr)
            self._rows = 0

    @plugin.hookimpl
    def dlf_run_end(self, run: plugin.RunContext) -> None:
        self._flush()
        self.detector.finish()

    @plugin.hookimpl
    def dlf_trace_contribute(self, run: plugin.RunContext) -> dict[str, xr.DataArray]:
        self._flush()  # a checkpoint: what the buffer holds counts too
        events = events_dataset(
            self.detector.events(),
            run.period.cpu().numpy(),
            run.objective.n_classes,
            self.options,
            prefix=self.name,
        )
        return {str(name): value for name, value in events.data_vars.items()}


def _recorded_spectrum(source: plugin.Analyzer, state: plugin.StepState) -> torch.Tensor | None:
    """The eigenvalues ``source`` computed at this step, from the shared curvature cache.

    Asking with the source's own options returns its cached solve (no new Lanczos run). Only a
    ``lanczos``-like analyzer (options k, tol, max_iter, loss, mode) is understood.
    """
    names = ("k", "tol", "max_iter", "loss", "mode")
    if not all(hasattr(source.options, name) for name in names):
        return None
    k, tol, max_iter, loss, mode = (getattr(source.options, name) for name in names)
    return state.curvature.spectrum(k, tol=tol, max_iter=max_iter, loss=loss, mode=mode).values
