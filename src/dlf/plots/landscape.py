"""Landscape slices with the trajectory drawn on them (2024 Fig. 2, right; captions Fig. 3).

Each panel is F(x_t + a·v1 + b·v2) with Γ frozen at the slice's step t, around x_t (red cross),
with the next positions x_{t+1}, x_{t+2}, … projected on (v1, v2) as green dots joined by arrows:
a period-2 bounce between the valley walls shows as points alternating across the valley.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from dlf.plots.style import new_figure, require, styled

NEEDED = ("landscape_loss", "landscape_step", "landscape_member", "landscape_trajectory")
MAX_COLUMNS = 5


@styled
def landscape(ds: xr.Dataset) -> Figure:
    """One panel per recorded slice, in step order."""
    require(ds, NEEDED, "landscape")
    n = ds.sizes["slice"]
    ncols = min(n, MAX_COLUMNS)
    nrows = -(-n // ncols)
    fig, axes = new_figure(nrows, ncols, size=(3.2 * ncols, 2.9 * nrows))
    hessian = ds["landscape_loss"].attrs.get("directions", "hessian") == "hessian"
    d1, d2 = ("v$_1$", "v$_2$") if hessian else ("d$_1$", "d$_2$")
    order = np.argsort(ds["landscape_step"].values, kind="stable")
    for ax, i in zip(axes.flat, order, strict=False):
        s = ds.isel(slice=i)
        grid = s["landscape_loss"]
        mesh = ax.pcolormesh(
            s["a"], s["b"], grid.transpose("b", "a"), shading="auto", cmap="magma", rasterized=True
        )
        fig.colorbar(mesh, ax=ax, label="F", shrink=0.85)
        path = np.vstack([[0.0, 0.0], s["landscape_trajectory"].transpose("k", "coord").values])
        steps = np.diff(path, axis=0)
        ax.quiver(
            path[:-1, 0],
            path[:-1, 1],
            steps[:, 0],
            steps[:, 1],
            angles="xy",
            scale_units="xy",
            scale=1,
            color="tab:green",
            alpha=0.45,
            width=0.006,
        )
        ax.plot(path[1:, 0], path[1:, 1], "o", color="tab:green", ms=3)
        ax.plot(0, 0, "x", color="red", ms=8, mew=2)
        ax.grid(False)
        ax.set_title(f"t = {int(s['landscape_step'])}, member {int(s['landscape_member'])}")
        ax.set_xlabel(f"a (along {d1})")
        ax.set_ylabel(f"b (along {d2})")
    for ax in axes.flat[n:]:
        ax.remove()
    return fig
