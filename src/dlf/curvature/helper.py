"""The per-step curvature helper shared by analyzers: Hessian-vector products and eigenpairs.

The trainer owns one :class:`Curvature` per run and points it at (θ_t, Γ_t) at steps where an
analyzer is due. Whatever one analyzer computes there (eigenpairs, NTK eigenvalues) is cached for
the others at the same step; eigenvectors are kept across steps to warm-start the next solve.
Because members are independent rows of θ, one pass gives every member's H_m v_m at once: the C
kernel (:mod:`~dlf.curvature.kernel_hvp`) for the papers' network on a CPU, the fused torch pass
(:mod:`~dlf.curvature.fused_hvp`) for the other built-in MLPs, autograd's double backward for
plugin models and losses.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch

from dlf.curvature import fused_hvp, kernel_hvp, lanczos, ntk, top_pair
from dlf.curvature.lanczos import LanczosResult, Matvec, SpectralDensity
from dlf.curvature.ntk import Method as NTKMethod
from dlf.curvature.ntk import NTKResult
from dlf.numerics.objective import Objective

LossKind = Literal["dynamical", "static"]
Mode = Literal["lanczos", "exact"]

DEFAULT_TOL = 1e-3  # relative Ritz residual; eigenvalues are then good to about tol² · ‖H‖/gap
DEFAULT_MAX_ITER = 100


@dataclass(frozen=True)
class LatestSpectrum:
    """A solved spectrum and where it was solved: the step, and its tolerance (0 = exact)."""

    step: int
    result: LanczosResult  # values, vectors, residuals and matvecs per member (NaN: not solved)
    tol: float


class Curvature:
    """Hessian of F(·; Γ_t) at θ_t for every member, computed on demand and cached per step.

    ``loss="static"`` everywhere below means the Hessian of the static loss (Γ ≡ 1) instead.
    """

    def __init__(self, objective: Objective, seed: int = 0) -> None:
        self.objective = objective
        self.step = -1
        self.theta = torch.empty(0)
        self.gamma = torch.empty(0)
        self._grad_graphs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._products: dict[str, fused_hvp.FusedHVP | kernel_hvp.KernelHVP] = {}
        self.uses_fused_hvp = fused_hvp.supports(objective)
        self._previous_vectors: dict[str, torch.Tensor] = {}  # kept across steps: warm starts
        self._previous_ntk_vectors: dict[tuple[object, ...], torch.Tensor] = {}
        self._latest: dict[str, LatestSpectrum] = {}
        self.generator = torch.Generator().manual_seed(seed)
        self.cache: dict[object, object] = {}

    def at(self, step: int, theta: torch.Tensor, gamma: torch.Tensor) -> Curvature:
        """Point the helper at step ``step``; clears what was cached for the previous step."""
        if step != self.step:
            self.step = step
            self.theta = theta.detach()
            self.gamma = gamma.detach()
            self._grad_graphs = {}
            self._products = {}
            self.cache = {}
        return self

    # --- Hessian-vector products ------------------------------------------------------------

    def loss_rows(self, theta: torch.Tensor, loss: LossKind = "dynamical") -> torch.Tensor:
        """The loss per row of ``theta`` whose Hessian is meant: F(·; Γ_t) or the static loss."""
        if loss == "static":
            return self.objective.static_loss(theta)
        return self.objective(theta, self.gamma)

    def _gradient_with_graph(self, loss: LossKind) -> tuple[torch.Tensor, torch.Tensor]:
        if loss not in self._grad_graphs:
            theta = self.theta.clone().requires_grad_(True)
            with torch.enable_grad():
                total = self.loss_rows(theta, loss).sum()
                (grad,) = torch.autograd.grad(total, theta, create_graph=True)
            self._grad_graphs[loss] = (theta, grad)
        return self._grad_graphs[loss]

    def hvp(self, v: torch.Tensor, loss: LossKind = "dynamical") -> torch.Tensor:
        """H_m v_m for every member: ``v`` and the result are ``(member, n_params)``."""
        return self.product(loss)(v)

    def product(self, loss: LossKind = "dynamical") -> Matvec:
        """This step's HVP of every member as a function of ``v``: the R-operator for the
        built-in MLP and losses — in the C kernel where it applies (one hidden ReLU layer, few
        inputs, CPU; it also runs λmax's whole Lanczos loop, :mod:`~dlf.curvature.top_pair`),
        else as fused torch ops — else autograd."""
        if not self.uses_fused_hvp:
            return functools.partial(self.autograd_hvp, loss=loss)
        product = self._products.get(loss)
        if product is None:
            product = self._products[loss] = self._product(self.theta, self.gamma, loss)
        return product

    def matvec(self, rows: torch.Tensor, loss: LossKind = "dynamical") -> Matvec:
        """The HVP of the members ``rows`` (indices) alone, as a function of ``v (len(rows), n)``.

        A kernel or fused product costs in proportion to its rows, so a solve that only some
        members still need (a tracker's few unconverged ones) is computed for those alone.
        """
        if not self.uses_fused_hvp:  # autograd's graph is the whole ensemble's: pad and pick

            def padded(v: torch.Tensor) -> torch.Tensor:
                full = v.new_zeros(self.theta.shape)
                full[rows] = v
                return self.autograd_hvp(full, loss)[rows]

            return padded
        return self._product(self.theta[rows], self.gamma[rows], loss)

    def _product(
        self, theta: torch.Tensor, gamma: torch.Tensor, loss: LossKind
    ) -> fused_hvp.FusedHVP | kernel_hvp.KernelHVP:
        """The R-operator product bound to these rows: the C kernel where it applies, else torch."""
        static = loss == "static"
        if kernel_hvp.supports(self.objective, theta.dtype):
            return kernel_hvp.KernelHVP(self.objective, theta, gamma, static)
        return fused_hvp.FusedHVP(self.objective, theta, gamma, static)

    def autograd_hvp(self, v: torch.Tensor, loss: LossKind = "dynamical") -> torch.Tensor:
        """H_m v_m by autograd (the fallback for plugin models and losses).

        Double backward through a gradient graph built once per step (measured faster on CPU
        than torch.func's forward-over-reverse jvp of grad, which rebuilds it each call; see
        benchmarks/bench_curvature.py).
        """
        theta, grad = self._gradient_with_graph(loss)
        with torch.enable_grad():
            (hv,) = torch.autograd.grad(grad, theta, grad_outputs=v, retain_graph=True)
        return hv.detach()

    def dense_hessian(self, loss: LossKind = "dynamical") -> torch.Tensor:
        """The full Hessian ``(member, n, n)`` by ``torch.func.hessian`` (small models only)."""
        gamma = self.gamma

        def single(theta_row: torch.Tensor, gamma_row: torch.Tensor) -> torch.Tensor:
            if loss == "static":
                return self.objective.static_loss(theta_row[None])[0]
            return self.objective(theta_row[None], gamma_row[None])[0]

        hessian = torch.func.vmap(torch.func.hessian(single))
        return hessian(self.theta, gamma)

    # --- spectra ------------------------------------------------------------------------------

    def spectrum(
        self,
        k: int = 3,
        *,
        tol: float = DEFAULT_TOL,
        max_iter: int = DEFAULT_MAX_ITER,
        loss: LossKind = "dynamical",
        mode: Mode = "lanczos",
    ) -> LanczosResult:
        """Top-k Hessian eigenpairs with residuals and matvec counts, computed once per step.

        A cached result is reused when it has at least k pairs and was computed for the same loss
        with at least the requested accuracy (``exact`` beats any tolerance). Lanczos starts from
        the previous call's eigenvectors (any earlier step), so tracking costs few matvecs.
        """
        cached = self.cache.get(("spectrum", loss))
        if isinstance(cached, tuple):
            result, cached_tol = cached
            if result.values.shape[1] >= k and cached_tol <= (tol if mode == "lanczos" else 0.0):
                return result.top(k)
        if mode == "exact":
            result, used_tol = self._exact(k, loss), 0.0
        else:
            shape = (self.theta.shape[0], self.theta.shape[1])
            previous = self._previous_vectors.get(loss)
            start, warm = lanczos.warm_start(previous, shape, self.theta, self.generator)
            if previous is None or previous.shape[1] < k:  # too few old vectors: treat as cold
                warm = torch.zeros_like(warm)
            min_iter = torch.where(warm, k, lanczos.cold_min_iter(k))
            if k == 1:  # the C kernel's or NumPy's loop: per-op cost rules on a CPU (top_pair)
                result = top_pair.top_eigenpair(
                    self.product(loss), start, tol, max_iter, self.generator, min_iter
                )
            else:
                result = lanczos.top_eigenpairs(
                    functools.partial(self.hvp, loss=loss),
                    start,
                    k,
                    tol,
                    max_iter,
                    self.generator,
                    min_iter,
                )
            used_tol = tol
        self.share(result, used_tol, loss)
        return result

    def share(
        self, result: LanczosResult, tol: float, loss: LossKind = "dynamical", partial: bool = False
    ) -> None:
        """Make ``result`` (solved at this step to ``tol``, e.g. by a tracker) this step's
        spectrum: later :meth:`spectrum` calls it satisfies and :meth:`latest_spectrum` see it.

        ``partial``: only some members were solved (the others NaN): :meth:`latest_spectrum`
        sees it and their vectors warm-start later solves, but no :meth:`spectrum` call is
        answered with it."""
        vectors = result.vectors
        previous = self._previous_vectors.get(loss)
        if partial and previous is not None and previous.shape[:2] == vectors.shape[:2]:
            solved = torch.isfinite(result.values).all(dim=1)
            vectors = torch.where(solved[:, None, None], vectors, previous)
        if not partial:
            self.cache[("spectrum", loss)] = (result, tol)
        self._previous_vectors[loss] = vectors
        self._latest[loss] = LatestSpectrum(self.step, result, tol)

    def latest_spectrum(self, loss: LossKind = "dynamical") -> LatestSpectrum | None:
        """The most recent spectrum solved for ``loss`` (any step, any analyzer), or None.

        Lets an analyzer read what another one computed without replaying its options.
        """
        return self._latest.get(loss)

    def _exact(self, k: int, loss: LossKind) -> LanczosResult:
        """Dense Hessian and ``eigh``: exact top-k pairs (members with a non-finite H are NaN)."""
        h = self.dense_hessian(loss)
        finite = torch.isfinite(h).flatten(1).all(dim=1)
        values, vectors = torch.linalg.eigh(torch.where(finite[:, None, None], h, 0.0))
        values = values.flip(-1)[:, :k]
        vectors = vectors.flip(-1)[:, :, :k].transpose(1, 2)
        residuals = (torch.einsum("mij,mkj->mki", h, vectors) - values[..., None] * vectors).norm(
            dim=-1
        )
        nan = float("nan")
        return LanczosResult(
            torch.where(finite[:, None], values, nan),
            torch.where(finite[:, None, None], vectors, nan),
            torch.where(finite[:, None], residuals, nan),
            torch.zeros(h.shape[0], dtype=torch.long, device=h.device),
        )

    def eigenpairs(
        self,
        k: int = 3,
        *,
        tol: float = DEFAULT_TOL,
        max_iter: int = DEFAULT_MAX_ITER,
        loss: LossKind = "dynamical",
        mode: Mode = "lanczos",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k eigenvalues ``(M, k)`` (descending) and unit eigenvectors ``(M, k, n)``.

        The shared entry point for analyzers (see :meth:`spectrum` for the options and caching).
        """
        result = self.spectrum(k, tol=tol, max_iter=max_iter, loss=loss, mode=mode)
        return result.values, result.vectors

    def density(self, probes: int, order: int, loss: LossKind = "dynamical") -> SpectralDensity:
        """Spectral density of every member's Hessian by stochastic Lanczos quadrature."""
        key = ("density", loss, probes, order)
        if key not in self.cache:
            shape = (self.theta.shape[0], self.theta.shape[1])
            self.cache[key] = lanczos.spectral_density(
                lambda v: self.hvp(v, loss), shape, self.theta, probes, order, self.generator
            )
        result = self.cache[key]
        assert isinstance(result, SpectralDensity)
        return result

    def ntk(
        self, k: int = 1, x: torch.Tensor | None = None, method: NTKMethod = "auto"
    ) -> NTKResult:
        """Top-k eigenvalues of the empirical NTK on ``x`` (default: the training set), cached.

        ``lanczos`` (``auto`` beyond small models, see :func:`dlf.curvature.ntk.choose_method`)
        starts from the eigenvectors of the previous step's solve on the same inputs.
        """
        inputs = self.objective.x if x is None else x
        model = self.objective.model
        chosen = ntk.choose_method(inputs.shape[0], model.n_out, model.n_params, method)
        key = ("ntk", chosen, inputs.data_ptr(), tuple(inputs.shape))
        cached = self.cache.get(key)
        if not (isinstance(cached, NTKResult) and cached.values.shape[1] >= k):
            if chosen == "lanczos":
                previous = self._previous_ntk_vectors.get(key)
                solved = ntk.ntk_lanczos(
                    model, self.theta, inputs, k, previous, generator=self.generator
                )
                self._previous_ntk_vectors[key] = solved.vectors
                cached = NTKResult(solved.values, chosen)
            else:
                cached = ntk.ntk_eigenvalues(model, self.theta, inputs, k, chosen)
            self.cache[key] = cached
        return NTKResult(cached.values[:, :k], cached.method)

    def ntk_eigenvalues(
        self, k: int = 1, x: torch.Tensor | None = None, method: NTKMethod = "auto"
    ) -> torch.Tensor:
        """Top-k NTK eigenvalues ``(M, k)``, descending (see :meth:`ntk`)."""
        return self.ntk(k, x, method).values
