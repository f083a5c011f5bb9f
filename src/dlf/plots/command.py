"""``dlf-study plot``: open traces (or a directory of them), draw the figures, save the files."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import xarray as xr
from matplotlib.figure import Figure

from dlf.config import MAX_NAME
from dlf.engine.trace import TRACE_NAME, open_trace
from dlf.errors import ConfigError, DlfError, InputError, first_line
from dlf.plots.dynamics import Zoom, dynamics
from dlf.plots.landscape import landscape
from dlf.plots.movie import Movie, landscape_movie
from dlf.plots.phase import phase
from dlf.plots.sharpness import sharpness
from dlf.plots.style import run_name
from dlf.plots.threshold import threshold
from dlf.plots.width import width

FORMATS = ("png", "svg", "pdf")
UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")  # characters a figure's file name may not take over
#: What drawing raises on a file that lacks what its kind always holds (no steps, no
#: members, a variable missing, an attribute that is not JSON): the file's fault, one line.
MALFORMED = (KeyError, ValueError, IndexError, TypeError, AttributeError)
DPI = 110  # PNG resolution: sharp on screen, a few hundred kB at most
#: Result files that stand for their directory: a min-width study, a threshold study.
RESULT_NAMES = ("study.nc", "threshold.nc")


@dataclass(frozen=True)
class FigureKind:
    """A figure drawn from one trace at a time (``per_trace``) or from all traces together;
    ``by_default``: drawn when no ``--figure`` is named (not the slower movie)."""

    draw: Callable[..., Figure | Movie]
    per_trace: bool
    by_default: bool = True


FIGURES = {
    "dynamics": FigureKind(dynamics, per_trace=True),
    "phase": FigureKind(phase, per_trace=True),
    "threshold": FigureKind(threshold, per_trace=False),
    "width": FigureKind(width, per_trace=False),
    "landscape": FigureKind(landscape, per_trace=True),
    "sharpness": FigureKind(sharpness, per_trace=False),
    "landscape-movie": FigureKind(landscape_movie, per_trace=True, by_default=False),
}


def trace_files(paths: Sequence[Path]) -> list[Path]:
    """The files named; for a directory, its study result (``study.nc`` of a min-width study,
    ``threshold.nc`` of a threshold study) if it holds one, else every ``trace.nc`` below it."""
    files: list[Path] = []
    for path in paths:
        results = [path / name for name in RESULT_NAMES if (path / name).is_file()]
        if results:
            files.extend(results)
        elif path.is_dir():
            found = sorted(path.rglob(TRACE_NAME))
            if not found:
                raise InputError(path, f"holds no {TRACE_NAME} (looked in every sub-directory)")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(path, "no such file or directory")
    return files


def load_traces(paths: Sequence[Path]) -> list[xr.Dataset]:
    """Open every trace (or min-width study) that ``paths`` names."""
    return [open_trace(file) for file in trace_files(paths)]


def diverged_note(ds: xr.Dataset) -> str | None:
    """How many of a trace's members diverged, which every mean drawn leaves out (their
    evaluated metrics are NaN); None when none did."""
    if "diverged_step" not in ds:
        return None
    gone = int((ds["diverged_step"].values >= 0).sum())
    if gone == 0:
        return None
    members = ds.sizes["member"]
    return f"{run_name(ds)}: {gone} of {members} members diverged, left out of the figures' means"


def _file_stem(name: str) -> str:
    """A run name read from a file, made one safe file-name component: it is untrusted, and
    a name like ``../../x`` must not write outside ``--out``."""
    stem = UNSAFE.sub("_", name).lstrip(".-")[:MAX_NAME]
    return stem or "trace"


def _stems(datasets: Sequence[xr.Dataset]) -> list[str]:
    """A distinct file-name stem per trace: its run name, numbered where names repeat."""
    names = [_file_stem(run_name(ds)) for ds in datasets]
    return [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]


def parse_zoom(text: str) -> Zoom:
    """The ``--zoom`` option's text: ``START:STOP`` (steps) or ``auto``."""
    if text == "auto":
        return "auto"
    start, sep, stop = text.partition(":")
    try:
        window = (int(start), int(stop))
    except ValueError:
        window = None
    if not sep or window is None or window[0] >= window[1]:
        raise ConfigError("--zoom", f"expected START:STOP with START < STOP or auto, got {text!r}")
    if window[0] < 0:
        raise ConfigError("--zoom", f"steps are >= 0, got {text!r}")
    return window


def save(drawn: Figure | Movie, out: Path, stem: str, fmt: str) -> Path:
    """Write a figure in ``fmt``, or a movie in its writer's format, into ``out`` (made as
    needed); a folder that cannot be written is --out's one-line error."""
    path = out / f"{stem}.{drawn.suffix if isinstance(drawn, Movie) else fmt}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        if isinstance(drawn, Movie):
            drawn.save(path)
        else:
            drawn.savefig(path, dpi=DPI if fmt == "png" else None)
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise ConfigError("--out", f"cannot write figures in {out}: {why}") from None
    return path


def cli_plot(
    paths: list[Path],
    figure: str | None,
    out: Path | None,
    fmt: str = "png",
    *,
    member: int = 0,
    zoom: str | None = None,
) -> int:
    """Draw ``figure`` (or every figure the data supports) from ``paths`` into ``out``.

    ``out`` defaults to ``figures/`` beside the first path. ``member`` and ``zoom`` (the
    ``--zoom`` text) apply to ``dynamics``. A figure the data cannot support is skipped with a
    one-line note; if none can be drawn, the notes become the error.
    """
    matplotlib.use("Agg")
    if fmt not in FORMATS:
        raise ConfigError("--format", f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if figure is not None and figure not in FIGURES:
        raise ConfigError("--figure", f"unknown figure {figure!r}; allowed: {', '.join(FIGURES)}")
    window = None if zoom is None else parse_zoom(zoom)
    files = trace_files(paths)
    datasets = [open_trace(file) for file in files]
    if out is None:
        first = paths[0]
        out = (first if first.is_dir() else first.parent) / "figures"
    traces = [ds for ds in datasets if "member" in ds.dims]  # not the studies' results
    source = {id(ds): str(file) for ds, file in zip(datasets, files, strict=True)}
    stems = _stems(traces)
    written: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for name in [figure] if figure else [n for n, k in FIGURES.items() if k.by_default]:
        kind = FIGURES[name]
        options = {"member": member, "zoom": window} if name == "dynamics" else {}
        options |= {"member": member} if name == "landscape-movie" else {}
        jobs = _jobs(name, datasets, traces, stems)
        for data, stem in jobs:
            try:
                fig = kind.draw(data, **options)
            except DlfError as exc:
                skipped.append((stem, str(exc)))
                continue
            except MALFORMED as exc:
                named = source.get(id(data), ", ".join(map(str, files)))
                why = first_line(exc)
                skipped.append((stem, f"{named}: not a complete dlf-study file ({why})"))
                continue
            written.append(save(fig, out, stem, fmt))
    _report(written, skipped, files, traces)
    return 0


def _jobs(
    name: str, datasets: list[xr.Dataset], traces: list[xr.Dataset], stems: list[str]
) -> list[tuple[xr.Dataset | list[xr.Dataset], str]]:
    """What figure ``name`` is drawn from, and the file stem of each drawing: every trace on
    its own (named after it where there are several), or all files together."""
    if not FIGURES[name].per_trace:
        return [(datasets, name)]
    return [
        (ds, f"{name}-{stem}" if len(traces) > 1 else name)
        for ds, stem in zip(traces, stems, strict=True)
    ]


def _report(
    written: list[Path], skipped: list[tuple[str, str]], files: list[Path], traces: list[xr.Dataset]
) -> None:
    """Say what was written and skipped, and which traces have diverged members; with nothing
    written, the skips are the error (one line)."""
    if not written:
        if len(skipped) == 1:
            raise DlfError(skipped[0][1])
        where = ", ".join(map(str, files))
        why = "; ".join(f"{s}: {m}" for s, m in skipped)
        raise InputError(where, f"no figure could be drawn: {why}")
    for stem, message in skipped:
        print(f"skipped {stem}: {message}", file=sys.stderr)
    for ds in traces:
        note = diverged_note(ds)
        if note is not None:
            print(note, file=sys.stderr)
    for path in written:
        print(f"wrote {path}")
