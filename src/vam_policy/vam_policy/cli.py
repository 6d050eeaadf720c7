"""`vam`: the command line of the VAM workspace."""

from __future__ import annotations

import argparse
import sys

from vam_policy.data.cli import add_dataset_commands
from vam_policy.demo import add_demo_command
from vam_policy.experiment import add_experiment_commands
from vam_policy.model.cli import add_checkpoint_commands
from vam_policy.ros.eval_cli import add_eval_commands
from vam_policy.sim.cli import add_sim_commands
from vam_policy.train.cli import add_train_commands


def _selfcheck(_: argparse.Namespace) -> int:
    from vam_policy.ros.selfcheck import run_selfcheck

    return run_selfcheck()


def build_parser() -> argparse.ArgumentParser:
    """The `vam` argument parser; each verb sets `func`."""
    parser = argparse.ArgumentParser(prog="vam", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    selfcheck = verbs.add_parser(
        "selfcheck",
        help="check the installation: Python stack, a tiny policy, ROS 2 over DDS on loopback",
    )
    selfcheck.set_defaults(func=_selfcheck)
    add_dataset_commands(verbs)
    add_train_commands(verbs)
    add_checkpoint_commands(verbs)
    add_sim_commands(verbs)
    add_eval_commands(verbs)
    add_demo_command(verbs)
    add_experiment_commands(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
