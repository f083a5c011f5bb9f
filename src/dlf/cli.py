"""The ``dlf-study`` command line: run, plugins, show."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from dlf.errors import ConfigError, DlfError, DlfWarning, InputError
from dlf.hooks.guard import user_interrupts


def _cmd_run(args: argparse.Namespace) -> int:
    """Dispatch on the config's kind: a search study, a threshold study, a sweep, or one run."""
    from dlf.config import RunConfig, apply_overrides, load_raw, validate

    raw = apply_overrides(load_raw(args.config), args.set)
    if "search" in raw:
        from dlf.studies.search import cli_run

        return cli_run(args.config, args.set, args.out, args.workers)
    if args.workers != 1:
        raise ConfigError("--workers", "only a study (a config with a search section) has workers")
    if "threshold_study" in raw:
        from dlf.studies.threshold import run_threshold_study

        run_threshold_study(raw, args.out)
        return 0
    from dlf.studies.sweeps import cli_sweep, is_sweep

    if is_sweep(raw):
        return cli_sweep(raw, args.out)
    from dlf.engine.run import execute

    if args.out is not None:
        raw.setdefault("output", {})["root"] = str(args.out)
    result = execute(validate(RunConfig, raw))
    print(f"{result.status}: trace written to {result.path}")
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from dlf.hooks.manager import load_plugins

    plugins = load_plugins()
    print("plugins:")
    for name, _ in plugins.manager.list_name_plugin():
        print(f"  {name:<24} {plugins.source_of(name)}")
    for name in sorted(plugins.broken):
        print(f"  {name:<24} {plugins.source_of(name)}")
    for kind, registry in plugins.registries.items():
        print(f"{kind}:")
        for name in registry:
            print(f"  {name:<24} from {registry.source(name)}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from dlf.plots import cli_plot

    return cli_plot(
        args.paths, args.figure, args.out, args.format, member=args.member, zoom=args.zoom
    )


def _cmd_show(args: argparse.Namespace) -> int:
    """Summarise a trace or a study, told apart by what the file holds, not by its name."""
    from dlf.engine.trace import TRACE_NAME, open_netcdf
    from dlf.plots.command import MALFORMED
    from dlf.studies.search.results import STUDY_FILE, is_study, study_summary
    from dlf.summary import is_trace, summarise

    path = args.trace
    if path.is_dir():
        inside = [path / name for name in (STUDY_FILE, TRACE_NAME) if (path / name).is_file()]
        if not inside:
            raise InputError(path, f"holds no {STUDY_FILE} (a study) or {TRACE_NAME} (a run)")
        path = inside[0]
    ds = open_netcdf(path)
    if not (is_study(ds) or is_trace(ds)):
        raise InputError(path, "is NetCDF but neither a dlf-study trace nor a study's study.nc")
    try:
        print(study_summary(ds, path) if is_study(ds) else summarise(ds, path))
    except MALFORMED as exc:  # a variable or attribute missing or spoiled: the file's fault
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise InputError(path, f"not a complete dlf-study file ({why})") from None
    return 0


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit code 2, as every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"dlf-study: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    top = OneLineParser(
        prog="dlf-study", description="Train and analyse ensembles on dynamical loss functions."
    )
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the training or study a YAML config describes")
    run.add_argument("config", type=Path, help="YAML config file")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.steps=500 (repeatable)",
    )
    run.add_argument("--out", type=Path, help="output root (default: the config's output.root)")
    run.add_argument(
        "--workers", type=int, default=1, help="worker processes of a search study (default 1)"
    )
    run.set_defaults(func=_cmd_run)
    plugins = sub.add_parser("plugins", help="list installed plugins and what they register")
    plugins.set_defaults(func=_cmd_plugins)
    plot = sub.add_parser("plot", help="draw the papers' figures from traces or a study")
    plot.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="trace file(s), or a directory: a sweep's traces or a study's result",
    )
    plot.add_argument(
        "--figure",
        metavar="NAME",
        help="dynamics, phase, threshold, width, landscape or sharpness (default: all that fit)",
    )
    plot.add_argument("--out", type=Path, help="output folder (default: figures/ beside PATH)")
    plot.add_argument("--format", default="png", help="png (default), svg or pdf")
    plot.add_argument("--member", type=int, default=0, help="dynamics: member shown (default 0)")
    plot.add_argument(
        "--zoom",
        metavar="START:STOP|auto",
        help="dynamics: add a column zoomed on these steps, or on the first instability",
    )
    plot.set_defaults(func=_cmd_plot)
    show = sub.add_parser("show", help="print a readable summary of a trace or a study")
    show.add_argument("trace", type=Path, help="a trace, a study's study.nc or its folder")
    show.set_defaults(func=_cmd_show)
    return top


_format_warning = warnings.formatwarning


def _one_line_warning(
    message: Warning | str, category: type[Warning], *rest: Any, **kwargs: Any
) -> str:
    """dlf's own warnings as one line; anyone else's as Python formats them."""
    if issubclass(category, DlfWarning):
        return f"dlf-study: warning: {message}\n"
    return _format_warning(message, category, *rest, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    warnings.formatwarning = _one_line_warning  # a broken plugin: one line, not a stack
    try:
        with user_interrupts():  # a plugin raising KeyboardInterrupt is not the user's Ctrl-C
            return int(args.func(args))
    except DlfError as exc:
        print(f"dlf-study: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dlf-study: interrupted; finished steps are in the trace", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
