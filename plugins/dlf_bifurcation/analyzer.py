"""The ``bifurcation`` analyzer: finds period-doubling events in every member's loss as it trains.

It reads F_t of every member at every step into a small device buffer and hands it to
:class:`dlf.analysis.BifurcationDetector` a block at a time, so memory stays bounded and the
training loop never waits for the host. Where the ``lanczos`` analyzer (or another named by
``spectrum``) solves the spectrum, it reads the eigenvalues from the curvature helper
(``latest_spectrum``) at those steps, after that analyzer ran. The events equal what
:func:`dlf.analysis.find_bifurcations` finds on the finished trace; each new onset is announced
to other plugins through the ``dlf_instability`` event (:mod:`dlf_bifurcation.hookspecs`).
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
        "lanczos",
        description="analyzer whose spectrum (of F, read from the curvature helper) gives λ at "
        "the onsets; null: none",
    )

    @field_validator("every")
    @classmethod
    def _every_step(cls, value: int) -> int:
        if value != 1:
            raise ValueError("bifurcation reads F at every step; only 1 is allowed")
        return value


class BifurcationAnalyzer(plugin.Analyzer[BifurcationOptions]):
    """Records ``bifurcation_*`` events along ``bifurcation_event`` and per-member summaries."""

    def __init__(self, name: str, options: BifurcationOptions, run: plugin.RunContext) -> None:
        super().__init__(name, options, run)
        self.detector = BifurcationDetector(run.n_members, self.options)
        shape = (BLOCK, run.n_members)
        self._loss = torch.empty(shape, dtype=run.dtype, device=run.device)
        self._lr = torch.empty(shape, dtype=run.dtype, device=run.device)
        self._first = 0  # step of the buffer's first row
        self._rows = 0
        self._announced: set[tuple[int, int]] = set()  # (member, onset) told to other plugins

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
        if self.options.spectrum in self.run.analyzers:
            latest = state.curvature.latest_spectrum()
            if latest is not None and latest.step == state.step:  # solved at this step
                values = latest.result.values.masked_fill(~state.active[:, None], float("nan"))
                self.detector.add_spectrum(state.step, values.cpu().double().numpy())

    def _flush(self) -> None:
        if self._rows:
            loss = self._loss[: self._rows].cpu().double().numpy()
            lr = self._lr[: self._rows].cpu().double().numpy()
            self.detector.add_loss(self._first, loss, lr)
            self._announce(self._first + self._rows - 1)
            self._rows = 0

    def _announce(self, step: int) -> None:
        """Tell other plugins (``dlf_instability``) about onsets the detector newly found."""
        for event in self.detector.events():
            onset = (event.member, event.start)
            if onset not in self._announced:
                self._announced.add(onset)
                self.run.hook.dlf_instability(
                    run=self.run, member=event.member, onset=event.start, step=step
                )

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
            factor=plugin.stability_factor(run.config.train.momentum, run.config.train.nesterov),
        )
        return {str(name): value for name, value in events.data_vars.items()}
