"""The `seem` command: one entry point, sub-commands registered by each package.

Each package's `cli.py` adds its sub-commands with `register(subparsers)` and keeps heavy
imports (torch, Ray) inside the command functions, so `seem --help` stays instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order of `seem --help`.
_COMMAND_MODULES = ("pipeline.cli", "serving.cli", "training.cli", "model.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seem",
        description="SEEM (Segment Everything Everywhere All at Once) on Ray: bulk jobs, HTTP serving, training.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a package not built yet in this checkout
            if exc.name == name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except KeyboardInterrupt:  # Ctrl-C: what was finished is kept; no traceback for a user's own stop
        print(f"seem {args.command}: interrupted", file=sys.stderr, flush=True)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
