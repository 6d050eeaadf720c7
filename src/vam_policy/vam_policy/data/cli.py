"""`vam dataset build|info|augment-colors|import-lerobot|export-lerobot` and `vam record`.

`add_dataset_commands` adds the verbs to the `vam` parser; each verb's function returns an
exit code and reports a ValueError (bad bag, bad profile, bad dataset) as one line on stderr
instead of a traceback, since those are the user's to fix, not bugs. The LeRobot verbs import
their module (pyarrow, PyAV) when run, so the other verbs start without them.
"""

from __future__ import annotations

import argparse
import functools
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from vam_policy.data.augment import SWAP_SETS, ColorWords, write_color_swapped
from vam_policy.data.bag_reader import find_bags
from vam_policy.data.dataset import FRAME_CODECS, build_dataset, describe, load_dataset
from vam_policy.data.episodes import (
    ACTION_SOURCES,
    DEFAULT_FPS,
    INSTRUCTION_FILE,
    EpisodeOptions,
    RecordingProfile,
)


def add_dataset_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `dataset build|info|augment-colors|import-lerobot|export-lerobot` and `record`."""
    dataset = subparsers.add_parser(
        "dataset", help="turn rosbag2 demonstrations (or LeRobot v3.0) into an episodes dataset, "
        "inspect one, or export it to LeRobot"
    )
    verbs = dataset.add_subparsers(dest="dataset_verb", required=True, metavar="VERB")

    build = verbs.add_parser("build", help="read bags (one episode each) into a dataset folder")
    build.add_argument("--bags", nargs="+", required=True, type=Path, metavar="DIR",
                       help="bag folders, or folders of bag folders")
    build.add_argument("--profile", required=True, type=Path,
                       help="robot profile, e.g. config/ur5e.yaml")
    build.add_argument("--out", required=True, type=Path, help="dataset folder to (re)write")
    build.add_argument("--instruction", help="instruction for bags with neither an "
                       f"instruction topic nor {INSTRUCTION_FILE}")
    build.add_argument("--fps", type=float, default=DEFAULT_FPS,
                       help="frame rate of the video history (default %(default)s)")
    build.add_argument("--control-rate", type=float, default=None,
                       help="state/action rate in Hz (default: the profile's control_rate_hz)")
    build.add_argument("--action-source", choices=ACTION_SOURCES, default="auto",
                       help="action targets: future joint states, commands, or commands when "
                       "recorded (default %(default)s)")
    build.add_argument("--max-gap", type=float, default=0.5,
                       help="longest tolerated silence of a topic in s; longer gaps trim the "
                       "episode (default %(default)s)")
    build.add_argument("--val-fraction", type=float, default=0.1,
                       help="fraction of episodes held out for validation (default %(default)s)")
    build.add_argument("--seed", type=int, default=0, help="seed of the split")
    build.add_argument("--frame-codec", choices=FRAME_CODECS, default="jpeg",
                       help="how frames are stored (default %(default)s)")
    build.set_defaults(func=run_dataset_build)

    info = verbs.add_parser("info", help="summarise a dataset folder")
    info.add_argument("dir", type=Path)
    info.set_defaults(func=run_dataset_info)

    augment = verbs.add_parser(
        "augment-colors", help="add each episode's colour-swapped copies (RGB channels "
        "permuted, colour words of the instruction renamed to match)")
    augment.add_argument("--dataset", required=True, type=Path, help="dataset folder")
    augment.add_argument("--out", required=True, type=Path, help="dataset folder to (re)write")
    augment.add_argument("--colors", default="red,green,blue", metavar="R,G,B",
                         help="the instruction's words for the colours that sit mostly in the "
                         "red, green and blue channel (default %(default)s)")
    augment.add_argument("--swaps", choices=sorted(SWAP_SETS), default="all",
                         help="all: the five other channel orders; cyclic: the two cyclic "
                         "shifts, which paint each object in each colour once (default "
                         "%(default)s)")
    augment.set_defaults(func=run_dataset_augment_colors)
    _add_lerobot_verbs(verbs)

    record = subparsers.add_parser(
        "record", help="record a demonstration: run `ros2 bag record` on the profile's topics"
    )
    record.add_argument("--profile", required=True, type=Path)
    record.add_argument("--out", type=Path, default=None,
                        help="bag folder (default: <profile>_<date>_<time>)")
    record.add_argument("--instruction", help=f"written to <out>/{INSTRUCTION_FILE} afterwards")
    record.add_argument("--dry-run", action="store_true", help="print the command only")
    record.set_defaults(func=run_record)


def _add_lerobot_verbs(verbs: argparse._SubParsersAction) -> None:
    imp = verbs.add_parser("import-lerobot",
                           help="convert a LeRobot v3.0 dataset folder into a dataset folder")
    imp.add_argument("--src", required=True, type=Path, help="LeRobot dataset folder")
    imp.add_argument("--out", required=True, type=Path, help="dataset folder to (re)write")
    imp.add_argument("--camera", nargs="+", default=[], metavar="KEY",
                     help="image/video features to keep, in order (default: all)")
    imp.add_argument("--state-key", default="observation.state",
                     help="state feature (default %(default)s)")
    imp.add_argument("--action-key", default="action", help="action feature (default "
                     "%(default)s)")
    imp.add_argument("--joint-names", nargs="+", default=[], metavar="NAME",
                     help="names of the state dimensions (default: the feature's names)")
    imp.add_argument("--fps", type=float, default=None,
                     help="frame rate of the video history (default: the dataset's fps)")
    imp.add_argument("--val-fraction", type=float, default=0.1,
                     help="fraction of episodes held out for validation (default %(default)s)")
    imp.add_argument("--seed", type=int, default=0, help="seed of the split")
    imp.add_argument("--frame-codec", choices=FRAME_CODECS, default="jpeg",
                     help="how frames are stored (default %(default)s)")
    imp.set_defaults(func=run_dataset_import_lerobot)

    exp = verbs.add_parser("export-lerobot", help="write a dataset folder as LeRobot v3.0")
    exp.add_argument("--dataset", required=True, type=Path, help="dataset folder")
    exp.add_argument("--out", required=True, type=Path, help="LeRobot folder to (re)write")
    exp.add_argument("--fps", type=float, default=None,
                     help="rows per second, an integer dividing the control rate (default: "
                     "the control rate)")
    exp.add_argument("--robot-type", default=None,
                     help="robot_type in info.json (default: the dataset's profile)")
    exp.add_argument("--video-codec", choices=("av1", "h264"), default="av1",
                     help="video codec (default %(default)s, as LeRobot)")
    exp.set_defaults(func=run_dataset_export_lerobot)


def _reporting_errors(verb: Callable[[argparse.Namespace], int]
                      ) -> Callable[[argparse.Namespace], int]:
    @functools.wraps(verb)
    def run(args: argparse.Namespace) -> int:
        try:
            return verb(args)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1

    return run


@_reporting_errors
def run_dataset_build(args: argparse.Namespace) -> int:
    """`vam dataset build`: bags -> dataset folder, then its summary."""
    profile = RecordingProfile.load(args.profile)
    options = EpisodeOptions(fps=args.fps, control_rate_hz=args.control_rate,
                             action_source=args.action_source, max_gap_s=args.max_gap,
                             instruction=args.instruction)
    bags = find_bags(args.bags)
    dataset = build_dataset(bags, profile, args.out, options=options,
                            val_fraction=args.val_fraction, seed=args.seed,
                            frame_codec=args.frame_codec)
    print(describe(dataset))
    return 0


@_reporting_errors
def run_dataset_augment_colors(args: argparse.Namespace) -> int:
    """`vam dataset augment-colors`: a dataset plus its colour-swapped copies."""
    words = args.colors.split(",")
    if len(words) != 3:
        raise ValueError(f"--colors: expected three comma-separated words, got {args.colors!r}")
    dataset = write_color_swapped(load_dataset(args.dataset), args.out, ColorWords(*words),
                                  args.swaps)
    print(describe(dataset))
    return 0


@_reporting_errors
def run_dataset_info(args: argparse.Namespace) -> int:
    """`vam dataset info`: what a dataset folder holds."""
    print(describe(load_dataset(args.dir)))
    return 0


@_reporting_errors
def run_dataset_import_lerobot(args: argparse.Namespace) -> int:
    """`vam dataset import-lerobot`: LeRobot v3.0 folder -> dataset folder, then its summary."""
    from vam_policy.data.lerobot import ImportOptions, import_lerobot

    options = ImportOptions(cameras=tuple(args.camera), state_key=args.state_key,
                            action_key=args.action_key, joint_names=tuple(args.joint_names),
                            fps=args.fps)
    dataset = import_lerobot(args.src, args.out, options, val_fraction=args.val_fraction,
                             seed=args.seed, frame_codec=args.frame_codec)
    print(describe(dataset))
    return 0


@_reporting_errors
def run_dataset_export_lerobot(args: argparse.Namespace) -> int:
    """`vam dataset export-lerobot`: dataset folder -> LeRobot v3.0 folder."""
    from vam_policy.data.lerobot_export import ExportOptions, export_lerobot

    options = ExportOptions(fps=args.fps, robot_type=args.robot_type, codec=args.video_codec)
    info = export_lerobot(args.dataset, args.out, options)
    print(f"LeRobot v3.0 dataset {info.root}: {info.total_episodes} episodes at {info.fps:g} "
          f"fps, robot_type {info.robot_type!r}, cameras {', '.join(info.camera_keys)} "
          f"({args.video_codec})")
    return 0


def record_command(profile: RecordingProfile, out: Path) -> list[str]:
    """`ros2 bag record` of every topic a demonstration needs, as MCAP into `out`."""
    topics = list(dict.fromkeys(profile.topics))
    return ["ros2", "bag", "record", "-o", str(out), "-s", "mcap", *topics]


@_reporting_errors
def run_record(args: argparse.Namespace) -> int:
    """`vam record`: print the recording command, and run it where ROS 2 is installed."""
    profile = RecordingProfile.load(args.profile)
    out = args.out or Path(f"{profile.name}_{time.strftime('%Y%m%d_%H%M%S')}")
    if out.exists():
        raise ValueError(f"{out} exists; ros2 bag record needs a new folder (choose --out)")
    command = record_command(profile, out)
    print(shlex.join(command))
    if args.dry_run:
        return 0
    if shutil.which("ros2") is None:
        print("ros2 is not on PATH: printed the command only; run it where ROS 2 is "
              "sourced", file=sys.stderr)
        return 0
    process = subprocess.Popen(command)
    try:
        code = process.wait()
    except KeyboardInterrupt:  # Ctrl-C reached ros2 bag too: let it close the bag
        code = process.wait()
    if args.instruction and out.is_dir():
        (out / INSTRUCTION_FILE).write_text(args.instruction.strip() + "\n", encoding="utf-8")
    return code if code >= 0 else 128 - code
