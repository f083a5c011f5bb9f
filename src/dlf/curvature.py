"""The per-step curvature helper shared by analyzers: Hessian-vector products and eigenpairs.

The trainer owns one :class:`Curvature` per run and points it at (θ_t, Γ_t) at steps where an
analyzer is due. Whatever one analyzer computes there (eigenpairs, NTK eigenvalues) is cached for
the others at the same step; eigenvectors are kept across steps to warm-start the next solve.
Because members are independent rows of θ, one double-backward of Σ_m F_m gives every member's
H_m v_m at once.
"""

from __future__ import annotations

import torch

from dlf.objective import Objective


class Curvature:
    """Hessian of F(·; Γ_t) at θ_t for every member, computed on demand and cached per step."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.step = -1
        self.theta = torch.empty(0)
        self.gamma = torch.empty(0)
        self._grad_graph: tuple[torch.Tensor, torch.Tensor] | None = None
        self.cache: dict[str, object] = {}

    def at(self, step: int, theta: torch.Tensor, gamma: torch.Tensor) -> Curvature:
        """Point the helper at step ``step``; clears what was cached for the previous step."""
        if step != self.step:
            self.step = step
            self.theta = theta.detach()
            self.gamma = gamma.detach()
            self._grad_graph = None
            self.cache = {}
        return self

    def _gradient_with_graph(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._grad_graph is None:
            theta = self.theta.clone().requires_grad_(True)
            with torch.enable_grad():
                total = self.objective(theta, self.gamma).sum()
                (grad,) = torch.autograd.grad(total, theta, create_graph=True)
            self._grad_graph = (theta, grad)
        return self._grad_graph

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H_m v_m for every member: ``v`` and the result are ``(member, n_params)``."""
        theta, grad = self._gradient_with_graph()
        with torch.enable_grad():
            (hv,) = torch.autograd.grad(grad, theta, grad_outputs=v, retain_graph=True)
        return hv.detach()

    def dense_hessian(self) -> torch.Tensor:
        """The full Hessian ``(member, n, n)`` by ``torch.func.hessian`` (small models only)."""
        objective, gamma = self.objective, self.gamma

        def single(theta_row: torch.Tensor, gamma_row: torch.Tensor) -> torch.Tensor:
            return objective(theta_row[None], gamma_row[None])[0]

        hessian = torch.func.vmap(torch.func.hessian(single))
        return hessian(self.theta, gamma)
