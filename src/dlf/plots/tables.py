"""Per-member tables gathered across traces, for figures that compare runs (η, width, loss)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import pandas as pd
import xarray as xr

from dlf.errors import DlfError
from dlf.plots.style import require

MEMBER_COLUMNS = ("seed", "amplitude", "period", "eta")

Column = Callable[[xr.Dataset], xr.DataArray]


def member_table(
    datasets: Sequence[xr.Dataset], figure: str, needs: Iterable[str], **columns: Column
) -> pd.DataFrame:
    """One row per member of every trace: loss, width, seed, A, T, η and ``columns``.

    Each column function reduces a trace to a ``(member,)`` array; ``needs`` names the trace
    variables they read, so that a missing one is reported as such.
    """
    if not datasets:
        raise DlfError(f"figure {figure!r} needs at least one trace")
    needs = list(needs)
    frames = []
    for i, ds in enumerate(datasets):
        require(ds, needs, figure)
        data = {c: ds[c].values for c in MEMBER_COLUMNS}
        data |= {name: column(ds).values for name, column in columns.items()}
        frame = pd.DataFrame(data)
        frame["loss"] = ds.attrs.get("loss_name", "?")
        frame["width"] = int(ds["width"])
        frame["trace"] = i
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def label(values: pd.Series | dict[str, object], keys: Sequence[str], varying: set[str]) -> str:
    """A legend label naming only the keys whose value differs between the series."""
    parts = []
    for key in keys:
        if key in varying:
            value = values[key]
            parts.append(str(value).upper() if isinstance(value, str) else f"{key} {value:g}")
    return ", ".join(parts)


def varying(frame: pd.DataFrame, keys: Sequence[str]) -> set[str]:
    """The keys that take more than one value in ``frame``."""
    return {key for key in keys if frame[key].nunique() > 1}
