"""`vam checkpoint ensemble`: policy checkpoints joined into one that averages their chunks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_checkpoint_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `checkpoint ensemble` to a parser's subcommands."""
    checkpoint = subparsers.add_parser("checkpoint", help="work on policy checkpoints")
    verbs = checkpoint.add_subparsers(dest="checkpoint_verb", required=True, metavar="VERB")
    ensemble = verbs.add_parser(
        "ensemble", help="join checkpoints trained on the same backbone (stage-2 runs with "
        "different seeds) into one whose chunk is the mean of their decoders' chunks")
    ensemble.add_argument("members", nargs="+", type=Path, metavar="CHECKPOINT",
                          help="two or more policy checkpoint folders")
    ensemble.add_argument("--out", required=True, type=Path,
                          help="checkpoint folder to write (replaced whole, once all loaded)")
    ensemble.set_defaults(func=run_ensemble)


def run_ensemble(args: argparse.Namespace) -> int:
    """Exit 0 after printing the joined checkpoint's folder, 2 when a member cannot join."""
    from vam_policy.model.checkpoint import CheckpointError
    from vam_policy.model.ensemble import ensemble_checkpoints

    try:
        folder = ensemble_checkpoints(args.members, args.out)
    except CheckpointError as error:
        print(f"vam checkpoint ensemble: {error}", file=sys.stderr)
        return 2
    print(folder)
    return 0
