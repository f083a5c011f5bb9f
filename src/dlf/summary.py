"""A readable text summary of a trace, for ``dlf-study show``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr


def _mean_sem(values: np.ndarray) -> str:
    """``mean ± sem (n)`` of the finite values; one value has no error bar, so none is shown."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "n/a"
    if values.size == 1:
        return f"{values[0]:.3f} (1 seed, no error bar)"
    sem = values.std(ddof=1) / np.sqrt(values.size)
    return f"{values.mean():.3f} ± {sem:.3f} (n={values.size})"


def plural(n: int, noun: str) -> str:
    """``1 member``, ``2 members``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def is_trace(ds: xr.Dataset) -> bool:
    """Whether ``ds`` is a run's trace (by its content, whatever the file's name)."""
    return {"loss", "diverged_step", "width"} <= set(ds.variables) and "steps_completed" in ds.attrs


def summarise(ds: xr.Dataset, path: Path) -> str:
    """``dlf-study show`` for a run: the trace ``ds`` (read from ``path``) in a few lines."""
    config = json.loads(ds.attrs.get("config", "{}"))
    lines = [
        f"trace {path}",
        f"  run {config.get('name', '?')!r}: status {ds.attrs.get('status')}, "
        f"{ds.attrs.get('steps_completed')}/{ds.attrs.get('total_steps')} steps, "
        f"{plural(ds.sizes.get('member', 0), 'member')}, width {int(ds['width'])}",
        f"  data {ds.attrs.get('dataset')}, loss {ds.attrs.get('loss_name')}, "
        f"schedule {ds.attrs.get('schedule_name')}",
        f"  diverged members: {int((ds['diverged_step'] >= 0).sum())}",
    ]
    if "wall_seconds" in ds.attrs:  # traces before 0.3 did not record their cost
        attrs = ds.attrs
        lines.append(
            f"  took {float(attrs['wall_seconds']):.1f} s wall, {float(attrs['cpu_seconds']):.1f} s"
            f" CPU on {plural(int(attrs['threads']), 'thread')} ({attrs['threads_reason']}; "
            f"OpenMP wait policy {attrs['omp_wait_policy']})"
        )
    if ds.sizes.get("eval_step", 0):
        last = ds.isel(eval_step=-1)
        lines.append(f"  at step {int(last['eval_step'])} (mean ± sem over seeds):")
        groups = (
            ds[["amplitude", "period", "eta"]]
            .to_dataframe()
            .groupby(["amplitude", "period", "eta"])
            .groups
        )
        for (a, t, eta), idx in groups.items():
            sel = last.isel(member=np.asarray(idx))
            gone = int(np.isnan(sel["val_accuracy"].values).sum())  # diverged: NaN metrics
            lines.append(
                f"    A={a:g} T={t:g} η={eta:g}: "
                f"train acc {_mean_sem(sel['eval_train_accuracy'].values)}, "
                f"val acc {_mean_sem(sel['val_accuracy'].values)}"
                + (f" ({gone} of {len(idx)} diverged, excluded)" if gone else "")
            )
    extra = sorted(
        str(v)
        for v in ds.data_vars
        if v
        not in {
            "loss",
            "static_loss",
            "train_accuracy",
            "lr",
            "gamma",
            "val_loss",
            "val_accuracy",
            "eval_train_loss",
            "eval_train_accuracy",
            "diverged_step",
        }
    )
    if extra:
        lines.append(f"  analyzer variables: {', '.join(extra)}")
    return "\n".join(lines)
