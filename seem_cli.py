"""The `seem` command: one entry point, sub-commands registered by each package.

Each package's `cli.py` adds its sub-commands with `register(subparsers)` and keeps heavy
imports (torch, Ray) inside the command functions, so `seem --help` stays instant.
"""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys

# Order is the order of `seem --help`.
_COMMAND_MODULES = ("pipeline.cli", "pipeline.video_cli", "serving.cli", "training.cli", "model.cli")


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


#: Run by `_start_reaper` in its own process. While the driver (its parent) lives, it notes
#: the driver's descendants every second (pid and start time); when the driver's end of the
#: pipe closes, however the driver died (SIGKILL included), it kills those still running.
#: The process tree is the record because Ray renames its processes, which can overwrite
#: what /proc shows of their command line and environment.
_REAPER = r"""
import os, select, signal, sys

def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), fields[19]  # parent pid, start time

def descendants(root):
    children, started = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent, started[int(entry)] = stat(int(entry))
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child != os.getpid():
                found[child] = started[child]
                todo.append(child)
    return found

driver, seen = os.getppid(), {}
while not select.select([0], [], [], 1.0)[0]:
    seen.update(descendants(driver))
while os.read(0, 4096):
    pass
for pid, started in seen.items():
    try:
        if stat(pid)[1] == started:
            os.kill(pid, signal.SIGKILL)
    except (OSError, IndexError, ValueError):
        pass
"""
#: The reapers' pipes stay open exactly as long as this process lives.
_reapers: list[subprocess.Popen] = []


def _start_reaper() -> None:
    """Make every process this command starts (a local Ray: GCS, raylet, agents, workers)
    end with it, also when it is SIGKILLed.

    A small process in its own session (group signals do not reach it) records this
    process's descendants and kills them when this process is gone (see `_REAPER`). Ray's
    own agents otherwise outlive a killed driver (they wait up to a minute to report the
    raylet's death to a GCS that is gone too). Processes of a cluster this command only
    joins (--address) are not its descendants and are never touched.
    """
    if _reapers or not os.path.isdir("/proc"):  # one per process (tests call main() many times)
        return
    # Never waited for: it outlives this process on purpose and exits by itself.
    _reapers.append(subprocess.Popen([sys.executable, "-S", "-c", _REAPER], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _start_reaper()
    try:
        result = args.func(args)
    except KeyboardInterrupt:  # Ctrl-C: what was finished is kept; no traceback for a user's own stop
        print(f"seem {args.command}: interrupted", file=sys.stderr, flush=True)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
