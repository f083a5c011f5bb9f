"""The curvature threshold of instabilities versus the learning rate (2024 Fig. 4, 2021 Fig. 5).

The study trains, for each learning rate η, one ensemble of A × T × seeds members on the 2024
protocol rescaled to η (period T/η, total_steps/η steps), with the ``lanczos`` and
``bifurcation`` analyzers. Each member's λmax at its first instability (or the mean over all its
instabilities) is fitted as λ = c·η^b by least squares in log-log (edge of stability predicts
b = −1, c = 2), and the ratio λ·η/2 is averaged over members.

A config file for the study is a run config (the part every η shares) with a ``threshold_study``
section, :class:`ThresholdStudySettings`. Results go to ``<root>/<name>/threshold.nc`` and
``threshold.png``; the traces to ``<root>/<name>/eta-<η>/trace.nc``, and a trace already complete
for the same config is reused, so running the study again resumes it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy import stats

from dlf.config import load_raw, validate
from dlf.errors import ConfigError, DlfError
from dlf.plots.style import new_figure, styled
from dlf.run import execute
from dlf.sweeps import SweepPoint, plan
from dlf.trace import open_trace, write_netcdf

SECTION = "threshold_study"


class StudyScale(BaseModel):
    """How much of the protocol to run: learning rates, seeds, time and spectrum cadence."""

    model_config = ConfigDict(extra="forbid")
    lrs: list[float] = Field(min_length=2, description="learning rates η, one run each")
    seeds: int = Field(ge=1, description="seeds per (A, T) member")
    time_fraction: float = Field(
        gt=0, le=1, description="fraction of the protocol's total_steps/η that each run trains"
    )
    spectrum_every: int = Field(
        ge=1, description="lanczos cadence at η = 1; a run at η uses every/η made odd"
    )

    @field_validator("lrs")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(v <= 0 for v in value) or len(set(value)) != len(value):
            raise ValueError("learning rates must be positive and distinct")
        return value


class ThresholdStudySettings(BaseModel):
    """The ``threshold_study`` section: the 2024 Fig. 4 protocol and the scale it runs at."""

    model_config = ConfigDict(extra="forbid")
    scale: Literal["reduced", "paper"] = Field(
        "reduced", description="reduced: minutes on a laptop CPU; paper: the full protocol"
    )
    amplitudes: list[float] = Field([25, 50, 75], min_length=1, description="A of the members")
    periods: list[float] = Field(
        [5000, 10000], min_length=1, description="T at η = 1; a run at η uses T/η"
    )
    total_steps: int = Field(100_000, ge=1, description="steps at η = 1; a run at η trains it/η")
    onset: Literal["first", "mean"] = Field(
        "first", description="λ per member: at its first instability (2024) or mean over all"
    )
    reduced: StudyScale = StudyScale(
        lrs=[0.5, 1.0, 2.0, 4.0], seeds=1, time_fraction=0.3, spectrum_every=25
    )
    paper: StudyScale = StudyScale(
        lrs=[0.25, 0.5, 1.0, 2.0, 4.0], seeds=30, time_fraction=1.0, spectrum_every=25
    )

    @property
    def chosen(self) -> StudyScale:
        return self.paper if self.scale == "paper" else self.reduced


# --- the fit --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdFit:
    """λ = prefactor·η^exponent fitted in log-log, and the mean of λ·η/2 with its error."""

    exponent: float
    exponent_se: float
    prefactor: float
    ratio_mean: float
    ratio_sem: float
    n: int


def fit_threshold(eta: np.ndarray, lam: np.ndarray) -> ThresholdFit:
    """Least squares of log λ on log η over the points with finite, positive λ.

    ``exponent_se`` is the usual standard error of the slope; ``ratio_sem`` the standard error
    of the mean of λ·η/2. Needs points at two or more learning rates.
    """
    eta, lam = np.asarray(eta, dtype=float), np.asarray(lam, dtype=float)
    ok = np.isfinite(lam) & (lam > 0)
    eta, lam = eta[ok], lam[ok]
    if len(np.unique(eta)) < 2:
        raise DlfError(
            f"threshold fit needs instabilities at two or more learning rates; found "
            f"{len(np.unique(eta))} among {ok.sum()} members with a measured onset"
        )
    fit = stats.linregress(np.log(eta), np.log(lam))
    ratio = lam * eta / 2
    sem = float(ratio.std(ddof=1) / np.sqrt(len(ratio))) if len(ratio) > 1 else 0.0
    return ThresholdFit(
        exponent=float(fit.slope),
        exponent_se=float(fit.stderr),
        prefactor=float(np.exp(fit.intercept)),
        ratio_mean=float(ratio.mean()),
        ratio_sem=sem,
        n=len(lam),
    )


# --- running --------------------------------------------------------------------------------------


def odd_cadence(every: float) -> int:
    """The odd number of steps nearest above ``every``: samples then alternate between even and
    odd steps, so λ at an onset sees both walls of the bounce (see dlf.analysis.bifurcation)."""
    return 2 * int(every // 2) + 1


def study_points(raw: dict[str, Any]) -> tuple[ThresholdStudySettings, list[SweepPoint]]:
    """The study's settings and one validated run per learning rate, from a raw config mapping."""
    raw = copy.deepcopy(raw)
    settings = validate(ThresholdStudySettings, raw.pop(SECTION, None) or {}, prefix=SECTION)
    scale = settings.chosen
    analyzers = dict(raw.get("analyzers") or {})
    for name in ("lanczos", "bifurcation"):
        analyzers[name] = dict(analyzers.get(name) or {})
    variants = {}
    for eta in scale.lrs:
        lanczos = {**analyzers["lanczos"], "every": odd_cadence(scale.spectrum_every / eta)}
        variants[f"eta-{eta:g}"] = {
            "schedule": {
                "amplitude": settings.amplitudes,
                "period": [t / eta for t in settings.periods],
            },
            "train": {
                "lr": [eta],
                "steps": max(1, round(settings.total_steps * scale.time_fraction / eta)),
                "seeds": scale.seeds,
            },
            "analyzers": {**analyzers, "lanczos": lanczos},
        }
    raw.pop("analyzers", None)
    return settings, plan({**raw, "variants": variants})


def _complete(path: Path, point: SweepPoint) -> bool:
    """Whether ``path`` holds a complete trace of exactly this point's config."""
    if not path.exists():
        return False
    try:
        attrs = open_trace(path).attrs
    except (OSError, ValueError):
        return False
    return (
        attrs.get("status") == "complete" and attrs.get("config") == point.config.model_dump_json()
    )


def member_onsets(trace: xr.Dataset, onset: Literal["first", "mean"]) -> xr.Dataset:
    """Per member of one trace: η, A, T, seed, λ at onset (first or mean), λ·η/2, event count."""
    if "bifurcation_start" not in trace:
        raise DlfError("trace has no bifurcation_* variables; run with the bifurcation analyzer")
    m = trace.sizes["member"]
    member = trace["bifurcation_member"].values
    start = trace["bifurcation_start"].values
    lam = trace["bifurcation_lambda_onset"].values
    eta_onset = trace["bifurcation_eta"].values
    value, ratio = np.full(m, np.nan), np.full(m, np.nan)
    for i in range(m):
        mine = np.flatnonzero(member == i)
        if mine.size == 0:
            continue
        if onset == "first":
            first = mine[np.argmin(start[mine])]
            value[i], ratio[i] = lam[first], lam[first] * eta_onset[first] / 2
        else:
            value[i] = np.nanmean(lam[mine])
            ratio[i] = np.nanmean(lam[mine] * eta_onset[mine] / 2)
    return xr.Dataset(
        {
            "lambda_onset": ("member", value, {"long_name": f"λmax at onset ({onset})"}),
            "ratio": ("member", ratio, {"long_name": "λ_onset·η/2"}),
            "n_events": ("member", np.bincount(member, minlength=m)),
            "eta": ("member", trace["eta"].values),
            "amplitude": ("member", trace["amplitude"].values),
            "period": ("member", trace["period"].values, {"units": "step"}),
            "seed": ("member", trace["seed"].values),
        }
    )


def summarise(members: xr.Dataset, settings: ThresholdStudySettings) -> xr.Dataset:
    """The study's result: per-member onsets, per-η mean ± sem, the fit and the mean ratio."""
    eta, lam = members["eta"].values, members["lambda_onset"].values
    fit = fit_threshold(eta, lam)
    etas = np.unique(eta)
    per_eta = [lam[(eta == e) & np.isfinite(lam)] for e in etas]
    mean = np.array([v.mean() if v.size else np.nan for v in per_eta])
    sem = np.array([v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else 0.0 for v in per_eta])
    out = members.rename_dims(member="study_member").rename_vars(eta="member_eta")
    out = out.assign(
        lambda_mean=("eta", mean, {"long_name": "mean λmax at onset over members"}),
        lambda_sem=("eta", sem, {"long_name": "error of that mean"}),
        n_measured=("eta", np.array([v.size for v in per_eta])),
        exponent=((), fit.exponent, {"long_name": "b in λ = c·η^b (least squares, log-log)"}),
        exponent_se=((), fit.exponent_se, {"long_name": "standard error of b"}),
        prefactor=((), fit.prefactor, {"long_name": "c in λ = c·η^b"}),
        ratio_mean=((), fit.ratio_mean, {"long_name": "mean λ_onset·η/2 over members"}),
        ratio_sem=((), fit.ratio_sem, {"long_name": "error of that mean"}),
        n_fitted=((), fit.n, {"long_name": "members with a measured onset"}),
    ).assign_coords(eta=etas)
    out.attrs.update(
        {
            "title": "λmax at the onset of instabilities versus the learning rate",
            "settings": settings.model_dump_json(),
            "scale": settings.scale,
            "onset": settings.onset,
        }
    )
    return out


def run_threshold_study(
    config: Path | str | dict[str, Any], out_dir: Path | str | None
) -> xr.Dataset:
    """Run (or resume) the study a config file or mapping describes; returns the result.

    ``out_dir`` replaces the config's ``output.root`` (None: keep it). Writes the runs' traces,
    ``threshold.nc`` and ``threshold.png`` under ``<root>/<name>/``.
    """
    raw = load_raw(Path(config)) if isinstance(config, str | Path) else copy.deepcopy(config)
    if SECTION not in raw:
        raise ConfigError(SECTION, "missing: a threshold study config needs this section")
    if out_dir is not None:
        raw["output"] = {**(raw.get("output") or {}), "root": str(out_dir)}
    settings, points = study_points(raw)
    root = points[0].config.output.root / str(raw.get("name", "sweep"))
    tables = []
    for i, point in enumerate(points, start=1):
        path = point.trace_path(root)
        if _complete(path, point):
            print(f"[{i}/{len(points)}] {point.label}: already complete in {path}")
        else:
            status = execute(point.config, trace_path=path).status
            print(f"[{i}/{len(points)}] {point.label}: {status}, trace in {path}")
        tables.append(member_onsets(open_trace(path), settings.onset))
    result = summarise(xr.concat(tables, dim="member"), settings)
    write_netcdf(result, root / "threshold.nc")
    figure(result).savefig(root / "threshold.png", dpi=150)
    print(
        f"exponent {result['exponent'].item():.3f} ± {result['exponent_se'].item():.3f}, "
        f"mean λ·η/2 {result['ratio_mean'].item():.3f} ± {result['ratio_sem'].item():.3f} "
        f"({result['n_fitted'].item()} members); results in {root / 'threshold.nc'}"
    )
    return result


# --- the figure -----------------------------------------------------------------------------------


@styled
def figure(result: xr.Dataset) -> Figure:
    """Log-log λmax at onset versus η: members, mean ± sem per η, the fit and the 2/η line."""
    fig, axes = new_figure(size=(4.8, 3.8))
    ax = axes[0, 0]
    eta, lam = result["member_eta"].values, result["lambda_onset"].values
    ax.scatter(eta, lam, s=10, alpha=0.35, color="C0", label="members")
    ax.errorbar(
        result["eta"].values,
        result["lambda_mean"].values,
        yerr=result["lambda_sem"].values,
        fmt="o",
        color="C0",
        capsize=3,
        label="mean ± sem",
    )
    grid = np.geomspace(eta.min() / 1.3, eta.max() * 1.3, 50)
    b, se, c = (result[k].item() for k in ("exponent", "exponent_se", "prefactor"))
    ax.plot(grid, c * grid**b, "C1-", lw=1, label=f"fit η$^{{{b:.2f} ± {se:.2f}}}$")
    ax.plot(grid, 2 / grid, "k--", lw=1, label="2/η")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.set_xticks(result["eta"].values)
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("learning rate η")
    ax.set_ylabel(f"Hessian λ$_{{max}}$ at onset ({result.attrs['onset']})")
    ratio, sem, n = (result[k].item() for k in ("ratio_mean", "ratio_sem", "n_fitted"))
    ax.set_title(f"mean λ·η/2 = {ratio:.2f} ± {sem:.2f} ({n} members)")
    ax.legend(fontsize="small")
    return fig
