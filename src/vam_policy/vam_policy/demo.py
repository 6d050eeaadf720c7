"""`vam demo`: the simulated Panda in closed loop over ROS 2, on one machine with no GPU.

    vam demo                    # ~9.5 min: the shipped checkpoint, 9 episodes of each sim task
    vam demo --checkpoint DIR   # the same evaluation for a policy checkpoint of yours
    vam demo --train            # ~10 min: the whole loop from scratch, every sim task
    vam demo --quick            # ~2 min: the whole loop, one task, two demos, 150 steps

By default the demo evaluates `models/sim_panda/policy`, which `scripts/train_demo_checkpoint`
trained with this same code on more demos and steps than fit in the demo's time, on seeded
layouts its demos never saw (episodes run in real time, 10 s at most), and says how it was
trained (`training.json` next to it); see `demo_checkpoint`.

`--train` and `--quick` run the whole loop instead: demos -> dataset -> stage 2 -> closed loop,
each stage the function its own verb runs (`vam sim record`, `vam dataset build`,
`vam train idm`, `vam eval`), called in this process. Stage 2 runs `idm:sim`: the tiny preset's
architecture at 64x64. Its video backbone has RANDOM weights by default (no pretrained Cosmos
weights can be downloaded here), so these runs show that the loop closes rather than what a
trained policy reaches; `--backbone FOLDER` takes a pretrained one, e.g. what
`scripts/train_sim_backbone` makes from action-free sim videos (stages 0 and 1).

Outputs in every mode: the evaluation folder, a summary PNG (training loss, validation action
error, success per task), an MP4 (or GIF) of the first evaluation episode, recorded from the
camera topic during the closed loop, and demo.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vam_policy.sim.cli import task_list

EVAL_SEED_OFFSET = 1000  # evaluation layouts are seeds the demos never saw, as in `vam eval`
TRAIN_PRESET = "idm:sim"


@dataclass(frozen=True)
class DemoPlan:
    """How much each stage does."""

    tasks: tuple[str, ...]  # empty: every sim task
    demos_per_task: int
    train_steps: int
    eval_episodes: int  # per task
    eval_time_s: float | None  # simulated seconds per episode; None: the profile's limit


QUICK = DemoPlan(tasks=("lift_red",), demos_per_task=2, train_steps=150, eval_episodes=2,
                 eval_time_s=4.0)
# ~10 min on 2 CPU cores (record ~4, train ~2.5, eval ~3): with 16 demos a task and 3000 steps
# the validation action error falls well below holding still (0.04 vs 0.07 rad); 8 and 600 do
# not get there.
FULL = DemoPlan(tasks=(), demos_per_task=16, train_steps=3000, eval_episodes=3,
                eval_time_s=None)
TRAIN_BACKBONE = "tiny"  # --train and --quick: random weights unless --backbone
CHECKPOINT_EPISODES = 9  # per task when evaluating a checkpoint: 54 over the six sim tasks


class DemoError(RuntimeError):
    """A stage failed; the message says which and why."""


def default_profile() -> Path:
    """`config/sim_panda.yaml` of the workspace, wherever `vam demo` is run from."""
    from vam_policy.train.config import preset_dir

    return preset_dir().parent / "sim_panda.yaml"


def add_demo_command(subparsers: argparse._SubParsersAction) -> None:
    """Add `demo` to the `vam` parser."""
    parser = subparsers.add_parser(
        "demo", help="the simulated arm in closed loop over ROS 2, no GPU: evaluate the "
        "checkpoint the project ships (or --checkpoint), or run the whole loop from scratch "
        "(--train, --quick): record sim demos, build a dataset, train the action decoder, "
        "evaluate",
        description="Without --train or --quick: evaluate a trained policy checkpoint (default: "
        "models/sim_panda/policy, made by scripts/train_demo_checkpoint) in closed loop on "
        f"{CHECKPOINT_EPISODES} seeded episodes of each sim task. --train: the whole loop from "
        "scratch (record scripted demos, build a dataset, train stage 2, evaluate). --quick: "
        "the same, small. Every mode writes the success per task, a summary PNG and a rollout "
        "video.")
    parser.add_argument("--checkpoint", type=Path, default=None, metavar="DIR",
                        help="policy checkpoint to evaluate (default: the one the project "
                        "ships, models/sim_panda/policy); metrics.jsonl and training.json in "
                        "the folder above it are read when there")
    parser.add_argument("--train", action="store_true",
                        help=f"the whole loop from scratch: {FULL.demos_per_task} demos a task, "
                        f"{FULL.train_steps} steps, {FULL.eval_episodes} episodes a task")
    parser.add_argument("--quick", action="store_true",
                        help=f"the whole loop as a smoke run (~2 min): {', '.join(QUICK.tasks)}, "
                        f"{QUICK.demos_per_task} demos, {QUICK.train_steps} steps, "
                        f"{QUICK.eval_episodes} episodes of {QUICK.eval_time_s:g} s")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder, must be empty or new (default runs/demo-TIME)")
    parser.add_argument("--tasks", type=task_list, default=None, metavar="TASK[,TASK...]",
                        help="sim tasks (default: all; with --quick: "
                        f"{','.join(QUICK.tasks)})")
    parser.add_argument("--seed", type=int, default=0,
                        help=f"evaluation uses seeds from SEED+{EVAL_SEED_OFFSET}; with "
                        "--train, --quick the demos from SEED (default %(default)s)")
    parser.add_argument("--episodes", type=int, default=None, metavar="N",
                        help=f"evaluation episodes per task (default {CHECKPOINT_EPISODES}; "
                        f"with --train {FULL.eval_episodes}, with --quick {QUICK.eval_episodes})")
    parser.add_argument("--profile", type=Path, default=None,
                        help="sim profile (default: the workspace's config/sim_panda.yaml)")
    parser.add_argument("--demos", type=int, default=None, metavar="N",
                        help="--train, --quick: demos per task (default: the mode's)")
    parser.add_argument("--steps", type=int, default=None,
                        help="--train, --quick: training steps (default: the mode's)")
    parser.add_argument("--backbone", default=None, metavar="SOURCE",
                        help="--train, --quick: video backbone for stage 2, a preset (random "
                        f"weights) or a backbone folder (default {TRAIN_BACKBONE})")
    parser.set_defaults(func=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    """Exit 0 when the loop closed, 1 when a stage failed or the shipped checkpoint is
    missing, 2 on bad arguments."""
    from vam_policy.demo_checkpoint import checkpoint_plan, run_checkpoint_demo

    out = args.out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    profile = Path(args.profile or default_profile())
    try:
        plan = training_plan(args) if args.train or args.quick else checkpoint_plan(args)
        if not profile.is_file():
            raise ValueError(f"profile {profile} does not exist")
        if out.exists() and any(out.iterdir()):
            raise ValueError(f"output folder {out} is not empty; give a new --out")
    except ValueError as error:
        print(f"vam demo: {error}", file=sys.stderr)
        return 2
    try:
        if isinstance(plan, DemoPlan):
            run_demo(plan, out, profile, args.seed, args.backbone or TRAIN_BACKBONE)
        else:
            run_checkpoint_demo(plan, out, profile, args.seed)
    except DemoError as error:
        print(f"vam demo: {error}", file=sys.stderr)
        return 1
    return 0


def training_plan(args: argparse.Namespace) -> DemoPlan:
    """What --train or --quick runs, from the flags; ValueError on a bad one."""
    from vam_policy.model.backbone_config import is_preset
    from vam_policy.sim.tasks import TASKS, get_task  # robosuite: not for `vam --help`

    if args.checkpoint is not None:
        raise ValueError("--checkpoint evaluates a trained policy, --train and --quick train "
                         "one from scratch: give one or the other")
    plan = QUICK if args.quick else FULL
    overrides = {key: value for key, value in (
        ("tasks", tuple(args.tasks) if args.tasks else None), ("demos_per_task", args.demos),
        ("train_steps", args.steps), ("eval_episodes", args.episodes)) if value is not None}
    plan = replace(plan, **overrides)
    plan = replace(plan, tasks=plan.tasks or tuple(sorted(TASKS)))
    for task in plan.tasks:
        get_task(task)
    if min(plan.demos_per_task, plan.train_steps, plan.eval_episodes) < 1:
        raise ValueError("--demos, --steps and --episodes must be >= 1")
    backbone = args.backbone or TRAIN_BACKBONE
    if not (is_preset(backbone) or Path(backbone).is_dir()):
        raise ValueError(f"--backbone {backbone}: expected a backbone preset (e.g. tiny) or a "
                         "folder")
    return plan


def header(number: int, total: int, title: str) -> None:
    print(f"\n=== [{number}/{total}] {title} ===", flush=True)


def run_demo(plan: DemoPlan, out: Path, profile: Path, seed: int = 0,
             backbone: str = TRAIN_BACKBONE) -> dict[str, Any]:
    """Run the five stages into `out`; returns the evaluation results. Raises DemoError.

    `backbone`: stage 2's video backbone, a preset (random weights) or a folder."""
    from vam_policy.model.backbone_config import is_preset

    started = time.monotonic()
    timings: dict[str, float] = {}
    out.mkdir(parents=True, exist_ok=True)
    print(f"vam demo: the whole loop from scratch, {len(plan.tasks)} task(s) "
          f"{', '.join(plan.tasks)}; outputs in {out}")
    if is_preset(backbone):
        print(f"note: video backbone {backbone!r} has RANDOM weights (no pretrained video "
              "model, no GPU needed): expect a low success rate; the demo shows the loop "
              "closing.")
    else:
        print(f"video backbone: {backbone}")

    header(1, 5, f"record {plan.demos_per_task} scripted demo(s) per task in sim")
    tick = time.monotonic()
    demos = run_guarded("record", lambda: record_demos(plan, out / "demos", profile, seed))
    timings["record_s"] = time.monotonic() - tick

    header(2, 5, "build the dataset")
    tick = time.monotonic()
    dataset = run_guarded("dataset",
                          lambda: build_demo_dataset(demos, out / "dataset", profile, seed))
    timings["dataset_s"] = time.monotonic() - tick

    header(3, 5, f"train stage 2 ({TRAIN_PRESET}, {plan.train_steps} steps on CPU)")
    tick = time.monotonic()
    trained = run_guarded("train", lambda: _train(dataset, out / "train", plan.train_steps,
                                                  backbone))
    timings["train_s"] = time.monotonic() - tick

    header(4, 5, "closed-loop evaluation over ROS 2 (vam_sim_node + vam_policy_node)")
    tick = time.monotonic()
    results = run_guarded("eval", lambda: evaluate_checkpoint(plan, trained.final, out / "eval",
                                                              profile, seed))
    timings["eval_s"] = time.monotonic() - tick

    header(5, 5, "summary")
    summary_png, video = write_outputs(out, results, trained.records, {
        "plan": {**plan.__dict__, "tasks": list(plan.tasks)}, "seed": seed,
        "backbone": backbone, "checkpoint": str(trained.final)}, timings, started)
    print(f"\nvam demo: loop closed in {timings['total_s']:.0f} s ("
          + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in timings.items() if k != "total_s")
          + ")")
    print(f"  results     {out / 'eval' / 'results.md'} (.json)\n"
          f"  summary     {summary_png}\n  rollout     {video}\n"
          f"  checkpoint  {trained.final}\n  train log   {out / 'train' / 'train.log'}")
    return results


def write_outputs(out: Path, results: dict[str, Any], records: Sequence[dict[str, float]],
                  info: dict[str, Any], timings: dict[str, float],
                  started: float) -> tuple[Path, Path]:
    """Write the summary PNG, the rollout video and demo.json (`info`, `timings` with
    `total_s` added, the results' summary), then print the success per task; returns the PNG
    and the video. Raises DemoError when the loop did not close."""
    summary_png = out / "summary.png"
    plot_summary(records, results["summary"], summary_png)
    video = run_guarded("video",
                        lambda: write_rollout_video(out / "eval" / "frames", out / "rollout"))
    timings["total_s"] = time.monotonic() - started
    (out / "demo.json").write_text(json.dumps({
        **info, "timings": timings, "summary": results["summary"],
        "summary_png": str(summary_png), "video": str(video),
        "results": str(out / "eval" / "results.json"),
    }, indent=2) + "\n", encoding="utf-8")
    _check_loop_closed(results)
    for row in results["summary"]:
        print(f"  {row['task']:<18} {row['successes']}/{row['episodes']} solved "
              f"({100 * row['success_rate']:.0f}%)")
    return summary_png, video


def run_guarded(name: str, run: Any) -> Any:
    """Run a stage; its expected failures become one DemoError naming the stage."""
    from vam_policy.ros.evaluation import EvalError

    try:
        return run()
    except (ValueError, OSError, EvalError, DemoError) as error:
        raise DemoError(f"stage {name!r} failed: {error}") from error


def record_demos(plan: DemoPlan, out: Path, profile: Path, seed: int) -> list[Path]:
    from vam_policy.sim.recording import record_demonstrations

    results = record_demonstrations(profile, plan.tasks, plan.demos_per_task, out, seed=seed)
    bags = [Path(r.bag) for r in results if r.success]
    if not bags:
        raise DemoError("the scripted experts solved no episode, nothing to train on")
    return bags


def build_demo_dataset(bags: Sequence[Path], out: Path, profile: Path, seed: int) -> Path:
    from vam_policy.data.dataset import build_dataset, describe
    from vam_policy.data.episodes import RecordingProfile

    # Every demo is needed to train on; validation takes one episode (a tenth of more).
    val_fraction = max(0.1, 1.0 / len(bags)) if len(bags) > 1 else 0.0
    dataset = build_dataset(bags, RecordingProfile.load(profile), out,
                            val_fraction=val_fraction, seed=seed)
    print(describe(dataset).splitlines()[0])
    return out


def _train(dataset: Path, out: Path, steps: int, backbone: str) -> Any:
    from vam_policy.train.config import IdmTrainConfig, load_train_config
    from vam_policy.train.idm import train_idm

    config = load_train_config(TRAIN_PRESET, IdmTrainConfig)
    result = train_idm(dataset, out, config, backbone=backbone, steps=steps, device="cpu")
    if result.final is None:
        raise DemoError(f"training stopped at step {result.step} without a checkpoint")
    return result


def evaluate_checkpoint(plan: DemoPlan, checkpoint: Path, out: Path, profile: Path,
                        seed: int) -> dict[str, Any]:
    return run_closed_loop(checkpoint, out, profile, plan.tasks, plan.eval_episodes, seed,
                           plan.eval_time_s)


def run_closed_loop(checkpoint: Path, out: Path, profile: Path, tasks: Sequence[str],
                    episodes: int, seed: int, time_s: float | None = None) -> dict[str, Any]:
    """`vam eval` on CPU, `episodes` per task from seed `seed + EVAL_SEED_OFFSET`, keeping the
    first episode's camera frames; `time_s` None: the profile's episode limit."""
    from vam_policy.ros.evaluation import EvalOptions, run_evaluation

    options = EvalOptions(checkpoint=checkpoint, out=out, profile=profile, episodes=episodes,
                          seed=seed + EVAL_SEED_OFFSET, tasks=tuple(tasks), max_time_s=time_s,
                          device="cpu", record_frames=1)
    return run_evaluation(options)


def _check_loop_closed(results: dict[str, Any]) -> None:
    """Every episode ran on the policy's trajectories and the sim judged it."""
    episodes = results["episodes"]
    idle = [f"{e['task']} seed {e['seed']}" for e in episodes
            if e["trajectories_accepted"] < 1]
    if not episodes or idle:
        raise DemoError("the loop did not close: the sim executed no policy trajectory in "
                        + (", ".join(idle) or "any episode (none ran)"))


def plot_summary(records: Sequence[dict[str, float]], summary: Sequence[dict[str, Any]],
                 path: Path) -> None:
    """Training loss, validation action error and success rate per task, side by side;
    without training `records` the first two panels say so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vam_policy.train.loop import smooth

    fig, (loss_ax, error_ax, success_ax) = plt.subplots(1, 3, figsize=(15, 4))
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    if train:
        steps, losses = zip(*train, strict=True)
        loss_ax.plot(steps, losses, color="tab:blue", alpha=0.25, label="train")
        loss_ax.plot(steps, smooth(np.asarray(losses)), color="tab:blue", label="train (EMA)")
    val = [r for r in records if "val_loss" in r]
    if val:
        loss_ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-",
                     color="tab:orange", label="validation")
    loss_ax.set(xlabel="step", ylabel="flow-matching loss", yscale="log",
                title="stage 2 loss")
    if train or val:
        loss_ax.legend()
    else:
        for ax in (loss_ax, error_ax):
            ax.text(0.5, 0.5, "no training records", ha="center", transform=ax.transAxes)
    mae = [r for r in val if "val_action_mae_rad" in r]
    if mae:
        error_ax.plot([r["step"] for r in mae], [r["val_action_mae_rad"] for r in mae], "o-",
                      color="tab:green", label="decoder")
        if "val_hold_still_mae_rad" in mae[-1]:
            error_ax.axhline(mae[-1]["val_hold_still_mae_rad"], color="gray", linestyle="--",
                             label="holding still")
        error_ax.legend()
    error_ax.set(xlabel="step", ylabel="mean |error| (rad)", title="validation action error")
    tasks = [row for row in summary if row["task"] != "all"] + [
        row for row in summary if row["task"] == "all"]
    names = [row["task"] for row in tasks]
    rates = [100 * row["success_rate"] for row in tasks]
    success_ax.bar(names, rates, color=["tab:purple"] * (len(names) - 1) + ["black"])
    for x, row in enumerate(tasks):
        success_ax.text(x, rates[x] + 2, f"{row['successes']}/{row['episodes']}", ha="center")
    success_ax.set(ylim=(0, 110), ylabel="success (%)", title="closed-loop success over ROS 2")
    plt.setp(success_ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_rollout_video(frames_dir: Path, stem: Path, scale: int = 3) -> Path:
    """The first recorded episode as `stem.mp4` (OpenCV), or `stem.gif` (Pillow) where no MP4
    encoder opens; frames are upscaled `scale` times and played at the camera rate."""
    files = sorted(frames_dir.glob("*.npz"))
    if not files:
        raise DemoError(f"no camera frames were recorded during evaluation (in {frames_dir})")
    with np.load(files[0]) as data:
        frames, stamps = data["frames"], data["stamps"]
    fps = 1.0 / float(np.median(np.diff(stamps))) if len(stamps) > 1 else 15.0
    frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    height, width = frames.shape[1:3]
    import cv2

    path = stem.with_suffix(".mp4")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if writer.isOpened():
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        if path.is_file() and path.stat().st_size > 0:
            return path
    from PIL import Image

    path = stem.with_suffix(".gif")
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:],
                   duration=round(1000 / fps), loop=0)
    return path
