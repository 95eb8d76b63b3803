"""`seem parity`: the model package's command (heavy imports stay inside the command)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("parity", help="compare this implementation with reference fixtures",
                              description="Runs every case of a parity fixture folder and prints each output's error.")
    p.add_argument("folder", help="fixture folder (config.yaml, weights.safetensors, inputs.npz, case files), "
                                  "or a folder of fixture folders (e.g. tests/fixtures/reference)")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--atol", type=float, default=2e-4)
    p.add_argument("--mask-pixels", type=int, default=5, help="differing pixels allowed in a thresholded mask")
    p.set_defaults(func=_parity)


def _parity(args: argparse.Namespace) -> int:
    from .parity import Tolerance, run

    ok = run(args.folder, Tolerance(args.rtol, args.atol, args.mask_pixels))
    return 0 if ok else 1
