"""The ensemble trainer: every member is a row of one parameter tensor, stepped together.

One step for all members is one batched forward/backward (hand-fused for the built-in MLP and
losses: :mod:`dlf.engine.gradients`). Γ and η are precomputed for blocks of steps, records go to a
device buffer, and analyzers are only called at steps where they are due, so the loop does little
Python work per step and never waits for the host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from dlf.curvature.helper import Curvature
from dlf.engine.gradients import gradient_for, why_chosen
from dlf.engine.recorder import ContributionError, Recorder
from dlf.engine.resume import Checkpoint
from dlf.hooks.analyzer import Analyzer
from dlf.hooks.calls import HookCalls
from dlf.hooks.manager import Plugins
from dlf.hooks.state import EvalState, RunContext, StepState
from dlf.numerics.schedules import Schedule, weights

BLOCK = 256  # steps whose Γ and η are computed at once


@dataclass
class Optimizer:
    """Gradient descent with optional (Nesterov) momentum, as ``torch.optim.SGD`` defines it."""

    momentum: float = 0.0
    nesterov: bool = False
    velocity: torch.Tensor | None = None

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        if self.momentum == 0:
            return grad
        if self.velocity is None:
            self.velocity = grad.clone()
        else:
            self.velocity.mul_(self.momentum).add_(grad)
        return grad + self.momentum * self.velocity if self.nesterov else self.velocity


class Minibatches:
    """Per-member minibatch indices: member m reshuffles each epoch from its own seed's stream."""

    def __init__(self, seeds: list[int], n_samples: int, batch_size: int, device: torch.device):
        self.generators = [torch.Generator().manual_seed(7919 * s + 1) for s in seeds]
        self.n, self.b, self.device = n_samples, min(batch_size, n_samples), device
        self.per_epoch = self.n // self.b
        self.order = torch.empty(0)

    def state(self) -> dict[str, Any]:
        """What continuing needs: each member's stream and the current epoch's order."""
        return {"generators": [g.get_state() for g in self.generators], "order": self.order.cpu()}

    def restore(self, state: dict[str, Any]) -> None:
        for generator, saved in zip(self.generators, state["generators"], strict=True):
            generator.set_state(saved)
        self.order = state["order"].to(self.device)

    def indices(self, step: int) -> torch.Tensor:
        k = step % self.per_epoch
        if k == 0:
            perms = [torch.randperm(self.n, generator=g) for g in self.generators]
            self.order = torch.stack(perms).to(self.device)
        return self.order[:, k * self.b : (k + 1) * self.b]


class Trainer:
    """Trains ``run``'s members from ``theta0``, reporting to ``recorder`` and the analyzers."""

    def __init__(
        self,
        run: RunContext,
        plugins: Plugins,
        schedule: Schedule,
        recorder: Recorder,
        contribute: Callable[[], dict[str, object]],
        progress: bool = False,
        save_state: Callable[[Checkpoint], None] | None = None,
    ) -> None:
        self.run = run
        self.pm = plugins.manager
        self.schedule = schedule
        self.recorder = recorder
        self.contribute = contribute
        self.progress = progress
        self.save_state = save_state  # saves what continuing needs, for resumable runs
        self.curvature = Curvature(run.curvature_objective or run.objective)
        self.gradient = gradient_for(run.objective)
        recorder.gradient_path = (self.gradient.name, why_chosen(run.objective))
        self.calls = HookCalls(self.pm)

    # --- per-block precomputation

    def gammas(self, steps: torch.Tensor) -> torch.Tensor:
        """Γ for a block of steps, ``(S, member, class)``; 1 where the loss is static."""
        run = self.run
        shape = (len(steps), run.n_members, run.objective.n_classes)
        if not run.objective.loss.dynamical:
            return torch.ones(shape, dtype=run.dtype, device=run.device)
        n_classes = run.objective.n_classes
        return weights(self.schedule, steps, run.amplitude, run.period, n_classes, run.static_from)

    def learning_rates(self, steps: torch.Tensor) -> torch.Tensor:
        """η_t for a block of steps, ``(S, member)``: base η × warm-up × decay factor."""
        cfg = self.run.config.train
        t = steps.to(self.run.dtype)
        factor = torch.ones_like(t)
        if cfg.warmup_steps > 0:
            factor = torch.clamp(t / cfg.warmup_steps, max=1.0)
        if cfg.decay == "linear":
            span = max(self.run.total_steps - cfg.warmup_steps, 1)
            frac = torch.clamp((t - cfg.warmup_steps) / span, min=0.0, max=1.0)
            factor = factor * (1 - frac * (1 - cfg.final_lr_factor))
        return factor[:, None] * self.run.lr[None, :]

    def blocks(self, first: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        for start in range(first, self.run.total_steps, BLOCK):
            stop = min(start + BLOCK, self.run.total_steps)
            steps = torch.arange(start, stop, device=self.run.device)
            yield start, self.gammas(steps), self.learning_rates(steps)

    # --- hooks

    def _call(self, hook_name: str, step: int | None, only: list[Analyzer] | None = None, **kw):
        """Call a hook (of the analyzers, only those in ``only``); a failure names the plugin."""
        idle = [] if only is None else [a for a in self.run.analyzers.values() if a not in only]
        self.calls.call(hook_name, step, skip=idle, **kw)

    # --- the loop

    def evaluate(self, step: int, theta: torch.Tensor, active: torch.Tensor) -> None:
        """Validation and training metrics at θ_t; NaN for members that are not ``active``
        (a diverged member's frozen θ would otherwise score as if it classified something:
        NaN logits argmax to class 0)."""
        run, obj = self.run, self.run.objective
        val_loss, val_accuracy = self.gradient.evaluate(theta, run.x_val, run.y_val)
        train_loss, train_accuracy = self.gradient.evaluate(theta, obj.x, obj.y)
        nan = torch.tensor(float("nan"), dtype=val_loss.dtype, device=val_loss.device)
        values = {
            name: torch.where(active, value, nan)
            for name, value in (
                ("val_loss", val_loss),
                ("val_accuracy", val_accuracy),
                ("eval_train_loss", train_loss),
                ("eval_train_accuracy", train_accuracy),
            )
        }
        self.recorder.record_eval(step, values)
        state = EvalState(
            step=step,
            theta=theta,
            val_loss=values["val_loss"],
            val_accuracy=values["val_accuracy"],
            eval_train_accuracy=values["eval_train_accuracy"],
            run=run,
            active=active,
        )
        self._call("dlf_evaluate", step, state=state)

    def train(
        self, theta: torch.Tensor, resume: Checkpoint | None = None
    ) -> tuple[torch.Tensor, str]:
        """Run all steps from ``theta (member, n)``, or those after ``resume`` (whose θ is
        ``theta``); returns the final parameters and how the run ended: ``complete``,
        ``diverged`` (every member did) or ``stopped`` (a hook asked for it through
        ``run.request_stop``). The caller records that in the trace."""
        run = self.run
        self._call("dlf_run_start", None, run=run)
        self.active = (
            torch.ones(run.n_members, dtype=torch.bool, device=run.device)
            if resume is None
            else resume.active
        )
        first = 0 if resume is None else resume.step
        with tqdm(
            total=run.total_steps,
            initial=first,
            disable=not self.progress,
            unit="step",
            leave=False,
        ) as bar:
            theta = self._steps(theta, bar, resume)
        if run.stop_reason is not None:
            ending = "stopped"
        elif not bool(self.active.any()):
            ending = "diverged"
        else:
            self.evaluate(run.total_steps, theta, self.active)
            ending = "complete"
        self._call("dlf_run_end", None, run=run)
        return theta, ending

    def _steps(self, theta: torch.Tensor, bar: tqdm, resume: Checkpoint | None) -> torch.Tensor:
        """The step loop (from ``resume``'s step, else 0); returns θ after the last step taken."""
        run, rec, obj = self.run, self.recorder, self.run.objective
        cfg = run.config.train
        analyzers = list(run.analyzers.values())
        opt, batches = self._optimizer(resume)
        gradient = self.gradient
        limit = cfg.diverge_above  # NaN compares False, so `loss <= limit` also catches NaN
        active = self.active
        # the recorder reads this tensor at every write, so diverged_step is never stale
        diverged_at = rec.track_divergence()
        for start, gamma_block, lr_block in self.blocks(0 if resume is None else resume.step):
            steps = zip(gamma_block.unbind(), lr_block.unbind(), strict=True)
            for t, (gamma, lr) in enumerate(steps, start=start):
                if batches is None:
                    x, y = obj.x, obj.y
                else:
                    idx = batches.indices(t)
                    x, y = obj.x[idx], obj.y[idx]
                if t % cfg.eval_every == 0:
                    self.evaluate(t, theta, active)
                    if run.stop_reason is not None:
                        break
                loss, grad = gradient(theta, gamma, active, x, y)
                finite = torch.isfinite(loss) if limit is None else loss <= limit
                diverged_at.masked_fill_(active > finite, t)  # active now, not finite
                active = self.active = active & finite
                due = [a for a in analyzers if a.due(t)]
                if due or rec.wants(t):
                    self._report(t, due, theta, grad, gamma, loss, lr, active)
                step = lr[:, None] * opt.direction(grad)
                theta = torch.where(active[:, None], theta - step, theta)
                rec.steps_completed = t + 1
                if run.stop_reason is not None:
                    break
                if rec.checkpoint_due():  # inside the block: slow analyzers make blocks long
                    self.checkpoint(theta, active, opt, batches)
            bar.update(rec.steps_completed - start)
            if run.stop_reason is not None:
                break
            if not bool(active.any()):
                break
        return theta

    def _optimizer(self, resume: Checkpoint | None) -> tuple[Optimizer, Minibatches | None]:
        """The optimiser and, for SGD, the minibatch streams, as ``resume`` left them."""
        run, cfg = self.run, self.run.config.train
        opt = Optimizer(cfg.momentum, cfg.nesterov)
        batches = None
        if cfg.optimizer == "sgd" and cfg.batch_size:
            seeds = [m.seed for m in run.members]
            batches = Minibatches(seeds, len(run.objective.y), cfg.batch_size, run.device)
        if resume is not None:
            opt.velocity = resume.velocity
            if batches is not None and resume.batches is not None:
                batches.restore(resume.batches)
        return opt, batches

    def _report(
        self,
        t: int,
        due: list[Analyzer],
        theta: torch.Tensor,
        grad: torch.Tensor,
        gamma: torch.Tensor,
        loss: torch.Tensor,
        lr: torch.Tensor,
        active: torch.Tensor,
    ) -> None:
        """Step ``t`` to the recorder (if it records this step) and to the ``due`` analyzers'
        ``dlf_step_end``; the static loss and accuracy are read once for both."""
        static, acc = self.gradient.metrics()
        if self.recorder.wants(t):
            self.recorder.record(loss, static, acc, lr, gamma)
        if due:
            state = StepState(
                step=t,
                theta=theta,
                grad=grad,
                gamma=gamma,
                loss=loss,
                static_loss=static,
                train_accuracy=acc,
                lr=lr,
                active=active,
                run=self.run,
                _curvature=self.curvature,
            )
            self._call("dlf_step_end", t, only=due, state=state)

    def checkpoint(
        self,
        theta: torch.Tensor,
        active: torch.Tensor,
        opt: Optimizer,
        batches: Minibatches | None,
    ) -> None:
        """Write the trace of the finished steps, with the plugins' contributions, and, for a
        resumable run, what continuing after them needs."""
        try:
            self.recorder.write(self.contribute())
        except ContributionError as exc:
            self.contribute.raise_for(exc)  # type: ignore[attr-defined]
        if self.save_state is not None:
            state = None if batches is None else batches.state()
            step = self.recorder.steps_completed
            self.save_state(Checkpoint(step, theta, active, opt.velocity, state))
