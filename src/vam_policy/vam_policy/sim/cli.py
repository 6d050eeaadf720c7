"""`vam sim record`: scripted demonstrations of the simulated arm, written as rosbag2.

The recording module (robosuite, MuJoCo, rosbags) is imported when the verb runs, so other
verbs start without it. A bad profile, task or output folder is reported as one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_PROFILE = Path("config/sim_panda.yaml")


def add_sim_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `sim record` to the `vam` parser."""
    sim = subparsers.add_parser("sim", help="the simulated arm: record expert demonstrations")
    verbs = sim.add_subparsers(dest="sim_verb", required=True, metavar="VERB")
    record = verbs.add_parser(
        "record", help="run the scripted experts (no ROS, faster than real time) and write one "
        "rosbag2 per solved episode, with the topics the sim node publishes")
    record.add_argument("--tasks", required=True, type=_task_list, metavar="TASK[,TASK...]",
                        help="sim tasks, e.g. lift_red,push_blue_left")
    record.add_argument("--episodes-per-task", type=int, default=1, metavar="N",
                        help="episodes of each task, seeds S, S+1, ... (default %(default)s)")
    record.add_argument("--out", required=True, type=Path, help="folder for the bags")
    record.add_argument("--seed", type=int, default=0, help="first seed (default %(default)s)")
    record.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap",
                        help="rosbag2 storage (default %(default)s)")
    record.add_argument("--profile", type=Path, default=DEFAULT_PROFILE,
                        help="profile with vam_sim_node and vam_policy_node sections "
                        "(default %(default)s)")
    record.set_defaults(func=run_sim_record)


def _task_list(text: str) -> list[str]:
    tasks = [task.strip() for task in text.split(",") if task.strip()]
    if not tasks:
        raise argparse.ArgumentTypeError("expected comma-separated task names")
    return tasks


def run_sim_record(args: argparse.Namespace) -> int:
    """Exit 0 when at least one episode was kept, 1 when none was, 2 on bad arguments."""
    from vam_policy.sim.recording import record_demonstrations

    try:
        results = record_demonstrations(args.profile, args.tasks, args.episodes_per_task,
                                        args.out, seed=args.seed, storage=args.storage)
    except ValueError as error:
        print(f"vam sim record: {error}", file=sys.stderr)
        return 2
    return 0 if any(r.success for r in results) else 1
