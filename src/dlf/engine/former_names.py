"""Names that traces of earlier versions used, renamed as a trace is opened so that an old
trace reads exactly as a new one.

The built-in analyzers' dimensions once had bare names (``lanczos``: ``eig_index``, ``probe``,
``node``; ``landscape``: ``slice``, ``a``, ``b``, ``k``, ``coord``, ``direction``); now, like
their variables, they carry the analyzer's prefix. A bare dimension is renamed only where a
variable of that analyzer uses it.
"""

from __future__ import annotations

import xarray as xr

FORMER_DIMS: dict[str, dict[str, str]] = {
    "lanczos_": {"eig_index": "lanczos_index", "probe": "lanczos_probe", "node": "lanczos_node"},
    "landscape_": {
        name: f"landscape_{name}" for name in ("slice", "a", "b", "k", "coord", "direction")
    },
}


def current_names(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with the former dimension names (and their coordinates) renamed; as it is when
    it has none."""
    renames: dict[str, str] = {}
    for prefix, table in FORMER_DIMS.items():
        users = [ds[v] for v in ds.data_vars if str(v).startswith(prefix)]
        for old, new in table.items():
            if new not in ds.dims and any(old in var.dims for var in users):
                renames[old] = new
    return ds.rename(renames) if renames else ds
