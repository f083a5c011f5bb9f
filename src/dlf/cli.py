"""The ``dlf-study`` command line: run, plugins, show."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dlf.errors import DlfError


def _cmd_run(args: argparse.Namespace) -> int:
    from dlf.config import load_config
    from dlf.run import execute

    config = load_config(args.config, args.set)
    if args.out is not None:
        config = config.model_copy(
            update={"output": config.output.model_copy(update={"root": args.out})}
        )
    result = execute(config)
    print(f"{result.status}: trace written to {result.path}")
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from dlf.plugin_manager import load_plugins

    plugins = load_plugins()
    print("plugins:")
    for name, _ in plugins.manager.list_name_plugin():
        print(f"  {name:<24} {plugins.source_of(name)}")
    for kind, registry in plugins.registries.items():
        print(f"{kind}:")
        for name in registry:
            print(f"  {name:<24} from {registry.source(name)}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from dlf.summary import summarise

    print(summarise(args.trace))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
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
    run.set_defaults(func=_cmd_run)
    plugins = sub.add_parser("plugins", help="list installed plugins and what they register")
    plugins.set_defaults(func=_cmd_plugins)
    show = sub.add_parser("show", help="print a readable summary of a trace")
    show.add_argument("trace", type=Path)
    show.set_defaults(func=_cmd_show)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DlfError as exc:
        print(f"dlf-study: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dlf-study: interrupted; finished steps are in the trace", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
