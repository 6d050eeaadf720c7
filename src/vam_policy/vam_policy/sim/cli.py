"""`vam sim record`: scripted demonstrations of the simulated arm, written as rosbag2.
`vam sim diagnose`: where a checkpoint fails on the simulated arm (see `sim/diagnose.py`).
`vam sim compare`: two diagnoses of the same layouts, layout by layout.

The sim modules (robosuite, MuJoCo, rosbags, torch) are imported when a verb runs, so other
verbs start without them. A bad profile, task, checkpoint or output folder is reported as one
line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vam_policy.sim.recording import PolicyRollIn

DEFAULT_PROFILE = Path("config/sim_panda.yaml")


def add_sim_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `sim record`, `sim diagnose` and `sim compare` to the `vam` parser."""
    sim = subparsers.add_parser("sim", help="the simulated arm: record expert demonstrations, "
                                "diagnose a checkpoint, compare two diagnoses")
    verbs = sim.add_subparsers(dest="sim_verb", required=True, metavar="VERB")
    record = verbs.add_parser(
        "record", help="run the scripted experts (no ROS, faster than real time) and write one "
        "rosbag2 per solved episode, with the topics the sim node publishes")
    record.add_argument("--tasks", required=True, type=task_list, metavar="TASK[,TASK...]",
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
    record.add_argument("--disturbance-rad", type=float, default=0.0, metavar="RAD",
                        help="disturb the arm's reach of the cube (approach and descent) by smooth "
                        "random joint offsets of this scale, faded out by the time the fingers "
                        "are at the cube; the bags keep the expert's "
                        "commands, so they show the way back (default 0: none)")
    record.add_argument("--approach-offset-m", type=float, default=0.0, metavar="M",
                        help="end each expert approach at a point drawn within this distance "
                        "(horizontal, metres) of the usual one above the cube; the descent "
                        "then corrects it, so the demos show how to correct an approach that "
                        "ended off the cube (default 0: none)")
    record.add_argument("--policy", type=Path, default=None, metavar="CHECKPOINT",
                        help="let this policy drive each episode first (DAgger): the expert takes "
                        "over at a time drawn from --policy-share of its reach, and the bags hold "
                        "the expert's commands throughout, so they show the way from the "
                        "policy's own mistakes (default: the expert drives)")
    record.add_argument("--policy-share", type=float, nargs=2, default=None,
                        metavar=("LOW", "HIGH"),
                        help="with --policy: range of the handover time as shares of the "
                        "expert's reach time (the end of its descent to the cube) (default "
                        "0.25 1.0)")
    record.set_defaults(func=run_sim_record)
    diagnose = verbs.add_parser(
        "diagnose", help="roll a checkpoint out in-process (no ROS) on held-out layouts, alone "
        "and after the expert's approach: does it fail to find the cube or to finish the task?")
    diagnose.add_argument("--checkpoint", required=True, type=Path,
                          help="policy checkpoint folder")
    diagnose.add_argument("--tasks", type=task_list, default=None, metavar="TASK[,TASK...]",
                          help="sim tasks (default: all)")
    diagnose.add_argument("--episodes", type=int, default=4, metavar="N",
                          help="layouts of each task (default %(default)s)")
    diagnose.add_argument("--noise-draws", type=int, default=1, metavar="K",
                          help="rollouts of each layout under different noise (default "
                          "%(default)s; one draw per layout is a noisy success estimate)")
    diagnose.add_argument("--seed", type=int, default=1000,
                          help="first layout seed (default %(default)s, the evaluation's)")
    diagnose.add_argument("--out", type=Path, default=None,
                          help="folder for diagnosis.json and diagnosis.md (default: print only)")
    diagnose.add_argument("--profile", type=Path, default=DEFAULT_PROFILE,
                          help="profile whose vam_sim_node section sets up the arm and whose "
                          "replan_steps and noise_scale the policy follows chunks with "
                          "(default %(default)s)")
    diagnose.add_argument("--loop", choices=("chunks", "node"), default="chunks",
                          help="chunks: follow each chunk on its time grid, as training labels "
                          "it; node: the policy node's loop on the sim's clock (camera rate, "
                          "inference latency, chunk scheduling, safety filter, the sim's "
                          "trajectory controller; the profile's settings) (default "
                          "%(default)s)")
    diagnose.add_argument("--latency-s", type=float, default=0.2, metavar="S",
                          help="with --loop node: simulated inference time, from an "
                          "observation's frames to its chunk (default %(default)s)")
    diagnose.set_defaults(func=run_sim_diagnose)
    compare = verbs.add_parser(
        "compare", help="set two `sim diagnose` reports of the same layouts side by side: the "
        "layouts the second won and lost, and a sign test of them")
    compare.add_argument("before", type=Path, help="diagnosis.json (or its folder) of the base")
    compare.add_argument("after", type=Path, help="diagnosis.json (or its folder) of the change")
    compare.set_defaults(func=run_sim_compare)


def task_list(text: str) -> list[str]:
    """argparse type of a --tasks option: comma-separated sim task names."""
    tasks = [task.strip() for task in text.split(",") if task.strip()]
    if not tasks:
        raise argparse.ArgumentTypeError("expected comma-separated task names")
    return tasks


def run_sim_record(args: argparse.Namespace) -> int:
    """Exit 0 when at least one episode was kept, 1 when none was, 2 on bad arguments."""
    from vam_policy.sim.recording import record_demonstrations

    try:
        if args.policy is None and args.policy_share is not None:
            raise ValueError("--policy-share needs --policy (the policy that drives first)")
        roll_in = None if args.policy is None else policy_roll_in(args)
        results = record_demonstrations(args.profile, args.tasks, args.episodes_per_task,
                                        args.out, seed=args.seed, storage=args.storage,
                                        disturbance_rad=args.disturbance_rad,
                                        approach_offset_m=args.approach_offset_m,
                                        roll_in=roll_in)
    except (ValueError, OSError) as error:  # e.g. no profile at the default relative path
        print(f"vam sim record: {error}", file=sys.stderr)
        return 2
    return 0 if any(r.success for r in results) else 1


def policy_roll_in(args: argparse.Namespace) -> PolicyRollIn:
    """`--policy`'s checkpoint following its chunks as the profile's node does (re-planning
    every replan_steps actions, its noise_scale)."""
    from vam_policy.model.checkpoint import load_checkpoint
    from vam_policy.ros.parameters import load_parameters_file, settings_from_parameters
    from vam_policy.sim.diagnose import follow_chunks
    from vam_policy.sim.recording import DEFAULT_REACH_SHARE, PolicyRollIn, check_reach_share

    share = DEFAULT_REACH_SHARE if args.policy_share is None else tuple(args.policy_share)
    check_reach_share(share)  # before the checkpoint takes seconds to load
    node = settings_from_parameters(load_parameters_file(args.profile))
    policy = load_checkpoint(args.policy).eval()
    drive = follow_chunks(policy, max(1, node.replan_steps), node.noise_scale)
    return PolicyRollIn(drive, str(args.policy), share)


def run_sim_diagnose(args: argparse.Namespace) -> int:
    """Exit 0 after printing the table, 2 on bad arguments or an unreadable checkpoint."""
    from vam_policy.model.checkpoint import load_checkpoint
    from vam_policy.ros.parameters import load_parameters_file, settings_from_parameters
    from vam_policy.ros.sim_parameters import load_sim_settings
    from vam_policy.sim.arm import SimArm
    from vam_policy.sim.diagnose import (
        diagnose,
        follow_chunks,
        markdown_tables,
        summarize,
        write_report,
    )
    from vam_policy.sim.node_loop import run_node_loop
    from vam_policy.sim.tasks import TASKS

    try:
        if args.episodes < 1:
            raise ValueError(f"--episodes must be at least 1, got {args.episodes}")
        node = settings_from_parameters(load_parameters_file(args.profile))
        sim = load_sim_settings(args.profile)
        policy = load_checkpoint(args.checkpoint).eval()
        if args.loop == "node":
            run = {"loop": "node", "latency_s": args.latency_s, "profile": str(args.profile)}
            drive = run_node_loop(policy, node, sim.camera_rate_hz, args.latency_s)
        else:
            replan_steps = max(1, node.replan_steps)
            run = {"loop": "chunks", "replan_steps": replan_steps,
                   "noise_scale": node.noise_scale}
            drive = follow_chunks(policy, replan_steps, node.noise_scale)
        with SimArm(sim.arm_config()) as arm:
            episodes = diagnose(arm, drive, args.tasks or sorted(TASKS), args.episodes,
                                args.seed, args.noise_draws)
    except (ValueError, KeyError, OSError) as error:
        print(f"vam sim diagnose: {error}", file=sys.stderr)
        return 2
    rows, by_row = summarize(episodes), summarize(episodes, by="row")
    print(markdown_tables(rows, by_row), end="")
    if args.out is not None:
        for path in write_report(args.out, str(args.checkpoint), run, episodes, rows, by_row):
            print(f"wrote {path}")
    return 0


def run_sim_compare(args: argparse.Namespace) -> int:
    """Exit 0 after printing the comparison, 2 on unreadable or unrelated reports."""
    import json

    from vam_policy.sim.diagnose import compare_reports, comparison_markdown

    try:
        before, after = (json.loads((path / "diagnosis.json" if path.is_dir() else path)
                                    .read_text()) for path in (args.before, args.after))
        comparison = compare_reports(before, after)
    except (ValueError, KeyError, TypeError, OSError) as error:
        print(f"vam sim compare: {error}", file=sys.stderr)
        return 2
    print(comparison_markdown(comparison), end="")
    return 0
