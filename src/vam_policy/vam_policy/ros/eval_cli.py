"""`vam eval`: closed-loop evaluation of a checkpoint on the simulated arm over ROS 2.

The evaluation module (rclpy) is imported when the verb runs, so other verbs start without
ROS. Bad arguments and failed runs are reported as one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vam_policy.sim.cli import task_list

DEFAULT_PROFILE = Path("config/sim_panda.yaml")
DEFAULT_SEED = 1000  # away from `vam sim record`'s default seeds 0, 1, ...: unseen layouts


def add_eval_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `eval` to the `vam` parser."""
    parser = subparsers.add_parser(
        "eval", help="run a checkpoint in closed loop on the simulated arm (sim node + policy "
        "node over ROS 2) and report the success rate per task")
    parser.add_argument("--checkpoint", required=True, type=Path, help="policy checkpoint")
    parser.add_argument("--episodes", type=int, default=10, metavar="N",
                        help="episodes per task, seeds S, S+1, ... (default %(default)s)")
    parser.add_argument("--tasks", type=task_list, default=None, metavar="TASK[,TASK...]",
                        help="sim tasks (default: all)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="first episode seed (default %(default)s)")
    parser.add_argument("--out", required=True, type=Path,
                        help="folder for results.json, results.md and the nodes' logs")
    parser.add_argument("--max-time-s", type=float, default=None, metavar="T",
                        help="simulated seconds per episode (default: the profile's "
                        "episode_time_limit_s)")
    parser.add_argument("--profile", type=Path, default=DEFAULT_PROFILE,
                        help="profile with vam_sim_node and vam_policy_node sections "
                        "(default %(default)s)")
    parser.add_argument("--device", default=None,
                        help="torch device of the policy node (default: the profile's)")
    parser.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    """Exit 0 when every episode ran to its end, 1 when the loop failed, 2 on bad arguments."""
    from vam_policy.ros.evaluation import EvalError, EvalOptions, run_evaluation

    try:
        options = EvalOptions(
            checkpoint=args.checkpoint, out=args.out, profile=args.profile,
            tasks=tuple(args.tasks) if args.tasks else None, episodes=args.episodes,
            seed=args.seed, max_time_s=args.max_time_s, device=args.device,
        )
    except ValueError as error:
        print(f"vam eval: {error}", file=sys.stderr)
        return 2
    try:
        run_evaluation(options)
    except EvalError as error:
        print(f"vam eval: {error}", file=sys.stderr)
        return 1
    return 0
