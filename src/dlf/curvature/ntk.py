"""The empirical neural tangent kernel's top eigenvalues, for every ensemble member.

Θ(x, x') = Σ_c J_c(x) J_c(x')ᵀ, the Jacobian J_c of logit c with respect to the parameters, summed
over logits (neural-tangents' ``trace_axes=(-1,)`` convention, as the authors computed it). With
G = [J_1 … J_C] the P × C·n matrix of all logits' Jacobians, Θ = G Gᵀ (P × P, "sample" space)
and GᵀG (C·n × C·n, "parameter" space) share their non-zero eigenvalues; the smaller is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from dlf.numerics.models import MLP

Method = Literal["auto", "sample", "parameter"]
MAX_JACOBIAN_ELEMENTS = 2**25  # members are processed in chunks below this many Jacobian entries


@dataclass(frozen=True)
class NTKResult:
    """Top eigenvalues per member and which Gram matrix gave them."""

    values: torch.Tensor  # (M, k) descending
    method: str  # "sample" or "parameter"


def jacobian(model: MLP, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """∂ logits / ∂θ for every member and sample: ``(M, P, C, n)``.

    A sample's logits depend only on that sample, so each (member, sample) pair is a C-output
    reverse-mode Jacobian, vectorised over both with ``torch.func.vmap``.
    """

    def logits(theta_row: torch.Tensor, x_row: torch.Tensor) -> torch.Tensor:
        return model.forward(theta_row[None], x_row[None])[0, 0]

    per_sample = torch.func.vmap(torch.func.jacrev(logits), in_dims=(None, 0))
    return torch.func.vmap(per_sample, in_dims=(0, None))(theta, x)


def choose_method(n_samples: int, n_classes: int, n_params: int, method: Method = "auto") -> str:
    """``sample`` (P × P Gram) or ``parameter`` (C·n × C·n Gram): ``auto`` takes the smaller."""
    if method != "auto":
        return method
    return "sample" if n_samples <= n_classes * n_params else "parameter"


def gram(jac: torch.Tensor, method: str) -> torch.Tensor:
    """The Gram matrices ``(M, D, D)`` of Jacobians ``(M, P, C, n)`` in the chosen space."""
    if method == "sample":
        return torch.einsum("mpcn,mqcn->mpq", jac, jac)
    g = jac.flatten(2)  # (M, P, C·n): G = [J_1 … J_C]
    return torch.einsum("mpa,mpb->mab", g, g)


def ntk_eigenvalues(
    model: MLP, theta: torch.Tensor, x: torch.Tensor, k: int = 1, method: Method = "auto"
) -> NTKResult:
    """Top-k eigenvalues of the empirical NTK on inputs ``x (P, d)`` for every row of θ.

    Rows whose Jacobian is not finite (diverged members) give NaN.
    """
    n = theta.shape[1]
    n_classes = model.n_out
    chosen = choose_method(x.shape[0], n_classes, n, method)
    chunk = max(1, MAX_JACOBIAN_ELEMENTS // (x.shape[0] * n_classes * n))
    values = []
    for rows in torch.split(theta, chunk):
        g = gram(jacobian(model, rows, x), chosen)
        finite = torch.isfinite(g).flatten(1).all(dim=1)
        eig = torch.linalg.eigvalsh(torch.where(finite[:, None, None], g, 0.0))
        top = eig.flip(-1)[:, :k]
        values.append(torch.where(finite[:, None], top, float("nan")))
    return NTKResult(torch.cat(values), chosen)
