"""The ``dlf-study`` command line: run, plugins, show."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from dlf.errors import ConfigError, DlfError, DlfWarning, InputError, first_line
from dlf.hooks.guard import user_interrupts


def _cmd_run(args: argparse.Namespace) -> int:
    """Dispatch on the config's kind: a search study, a threshold study, a sweep, or one run."""
    from dlf import threads
    from dlf.config import RunConfig, apply_overrides, load_raw, validate

    threads.apply(threads.choose(args.threads))
    raw = apply_overrides(load_raw(args.config), args.set)
    if "search" in raw:
        from dlf.studies.search import cli_run

        _refuse_fresh(args)
        args.kept = "finished trials are kept; the same command resumes the study"
        return cli_run(args.config, args.set, args.out, args.workers)
    if args.workers != 1:
        raise ConfigError("--workers", "only a study (a config with a search section) has workers")
    if "threshold_study" in raw:
        from dlf.studies.threshold import run_threshold_study

        _refuse_fresh(args)
        args.kept = "finished runs are kept; the same command resumes the study"
        run_threshold_study(raw, args.out)
        return 0
    from dlf.studies.sweeps import cli_sweep, is_sweep

    if is_sweep(raw):
        args.kept = "finished points are kept; the same command resumes the sweep"
        return cli_sweep(raw, args.out, fresh=args.fresh)
    from dlf.engine.resume import FINISHED, earlier_status
    from dlf.engine.run import default_trace_path, execute

    if args.out is not None:
        raw.setdefault("output", {})["root"] = str(args.out)
    config = validate(RunConfig, raw)
    path = default_trace_path(config)
    status = None if args.fresh else earlier_status(path, config)
    if status in FINISHED:
        print(f"already {status}: {path} holds this run (--fresh runs it again)")
        return 0
    args.kept = "finished steps are in the trace"
    result = execute(config, trace_path=path, fresh=args.fresh)
    since = f" (continued from step {result.resumed_from})" if result.resumed_from else ""
    print(f"{result.status}: trace written to {result.path}{since}")
    return 0


def _refuse_fresh(args: argparse.Namespace) -> None:
    """Studies resume what matches and refuse what does not; starting afresh is deleting."""
    if args.fresh:
        why = "a study resumes its own runs; remove its folder to start afresh"
        raise ConfigError("--fresh", why)


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
        why = first_line(exc)
        raise InputError(path, f"not a complete dlf-study file ({why})") from None
    return 0


def _thread_count(text: str) -> int:
    """``--threads``: a positive integer (argparse prints the one-line usage error otherwise)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return int(text)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dlf-study")
    except PackageNotFoundError:
        return "unknown (not installed)"


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit code 2, as every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"dlf-study: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    """The ``dlf-study`` command line: run, plugins, plot, show."""
    top = OneLineParser(
        prog="dlf-study", description="Train and analyse ensembles on dynamical loss functions."
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the training or study a YAML config describes")
    _run_arguments(run)
    run.set_defaults(func=_cmd_run)
    plugins = sub.add_parser("plugins", help="list installed plugins and what they register")
    plugins.set_defaults(func=_cmd_plugins)
    plot = sub.add_parser("plot", help="draw the papers' figures from traces or a study")
    _plot_arguments(plot)
    plot.set_defaults(func=_cmd_plot)
    show = sub.add_parser("show", help="print a readable summary of a trace or a study")
    show.add_argument("trace", type=Path, help="a trace, a study's study.nc or its folder")
    show.set_defaults(func=_cmd_show)
    return top


def _run_arguments(run: argparse.ArgumentParser) -> None:
    """``run``'s options: the config, overrides, where to write, workers, fresh, threads."""
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
    run.add_argument(
        "--fresh",
        action="store_true",
        help="run again and replace the traces of an earlier run (default: a finished run is "
        "skipped, one with other settings refused)",
    )
    run.add_argument(
        "--threads",
        type=_thread_count,
        metavar="N",
        help="compute threads (default: $DLF_THREADS, else the idle share of the usable CPUs)",
    )


def _plot_arguments(plot: argparse.ArgumentParser) -> None:
    """``plot``'s options: the traces or folders, which figure, where, format, member, zoom."""
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
        help="dynamics, phase, threshold, width, landscape, sharpness (default: all that fit) "
        "or landscape-movie (MP4/GIF, only when named)",
    )
    plot.add_argument("--out", type=Path, help="output folder (default: figures/ beside PATH)")
    plot.add_argument("--format", default="png", help="png (default), svg or pdf")
    plot.add_argument(
        "--member", type=int, default=0, help="dynamics, landscape-movie: member shown (default 0)"
    )
    plot.add_argument(
        "--zoom",
        metavar="START:STOP|auto",
        help="dynamics: add a column zoomed on these steps, or on the first instability",
    )


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
        kept = getattr(args, "kept", None)  # what the interrupted command leaves, if anything
        print("dlf-study: interrupted" + (f"; {kept}" if kept else ""), file=sys.stderr)
        return 130
    except BrokenPipeError:  # `dlf-study show … | head` closed the pipe: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit flush
        return 0


if __name__ == "__main__":
    sys.exit(main())
