"""The objects handed to hook implementations: the run's context and each step's state."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pluggy
import torch

from dlf.config import Member, RunConfig
from dlf.curvature.helper import Curvature
from dlf.numerics.data import Dataset
from dlf.numerics.objective import EnsembleModel, Objective

if TYPE_CHECKING:
    from dlf.hooks.analyzer import Analyzer


@dataclass
class RunContext:
    """What stays fixed during a run. Tensors live on the run's device and dtype."""

    config: RunConfig
    members: list[Member]
    data: Dataset
    objective: Objective
    x_val: torch.Tensor
    y_val: torch.Tensor
    amplitude: torch.Tensor  # (member,)
    period: torch.Tensor  # (member,)
    lr: torch.Tensor  # (member,) base learning rate η
    static_from: torch.Tensor  # (member,) first step with Γ ≡ 1
    total_steps: int
    # F on the curvature batch (train.curvature_batch), the objective the curvature helper uses
    curvature_objective: Objective | None = None
    analyzers: dict[str, Analyzer] = field(default_factory=dict)
    stop_reason: str | None = None
    # the plugin manager's hook relay: announce events other plugins implement
    hook: pluggy.HookRelay = field(default_factory=pluggy.HookRelay)

    def request_stop(self, reason: str) -> None:
        """Ask the trainer to end the run early (from any hook implementation).

        From ``dlf_evaluate`` at step t the run ends at θ_t; from ``dlf_step_end`` after step t's
        update. The trace gets ``status = "stopped"`` and ``stop_reason``; the last evaluation
        before the stop is the run's final measurement.
        """
        if self.stop_reason is None:
            self.stop_reason = reason

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def model(self) -> EnsembleModel:
        return self.objective.model

    @property
    def device(self) -> torch.device:
        return self.amplitude.device

    @property
    def dtype(self) -> torch.dtype:
        return self.amplitude.dtype


@dataclass(kw_only=True)
class StepState:
    """Step t: θ_t where F was evaluated, its gradient, Γ(t); θ is updated after the hook."""

    step: int
    theta: torch.Tensor  # (member, n_params), detached
    grad: torch.Tensor  # (member, n_params)
    gamma: torch.Tensor  # (member, class)
    loss: torch.Tensor  # (member,) the dynamical F
    static_loss: torch.Tensor  # (member,)
    train_accuracy: torch.Tensor  # (member,)
    lr: torch.Tensor  # (member,) η_t used for this step's update
    active: torch.Tensor  # (member,) bool: not diverged
    run: RunContext
    _curvature: Curvature

    @property
    def curvature(self) -> Curvature:
        """The shared curvature helper, pointed at (θ_t, Γ_t); the first analyzer to ask pays."""
        return self._curvature.at(self.step, self.theta, self.gamma)


@dataclass(kw_only=True)
class EvalState:
    """Validation metrics of every member at ``step`` (θ_t, before that step's update).

    Members that diverged before ``step`` are not evaluated: their metrics are NaN and
    ``active`` is False for them (a member diverging at exactly ``step`` is still active here;
    the trace masks its evaluation at that step too).
    """

    step: int
    theta: torch.Tensor
    val_loss: torch.Tensor  # (member,) static loss on the validation set
    val_accuracy: torch.Tensor  # (member,)
    eval_train_accuracy: torch.Tensor  # (member,) on the training set, as the trace names it
    run: RunContext
    active: torch.Tensor  # (member,) bool: not diverged before this step

    @property
    def train_accuracy(self) -> torch.Tensor:
        """The old name of :attr:`eval_train_accuracy` (deprecated: it is not the step's
        ``train_accuracy`` of :class:`StepState` and the trace)."""
        warnings.warn(
            "EvalState.train_accuracy is now EvalState.eval_train_accuracy, the trace's name",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.eval_train_accuracy
