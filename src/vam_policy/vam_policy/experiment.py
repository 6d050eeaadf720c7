"""`vam experiment sample-efficiency`: video vs static-image pretraining, in miniature, on CPU.

    vam experiment sample-efficiency --quick    # ~5 min smoke run: one task, 2 and 4 demos
    vam experiment sample-efficiency            # the full plan, ~60-90 min on 2 CPU cores

The project's claim is that a backbone pretrained on video needs far fewer action-labelled
demonstrations than one pretrained on static images. This measures it apples to apples on the
simulated Panda with the tiny 64x64 backbone (`*:sim` presets):

1. pretraining videos: expert episodes at seeds from 10000 (disjoint from the labelled demos
   at 0.. and the evaluation layouts at 1000..); their actions are never read;
2. stage 0 (`train_vae`): one VAE for both arms;
3. stage 1 (`train_video`) twice from that backbone, identical but for `objective`: "video"
   (future frames from the history) and "image" (single frames, the static baseline);
4. labelled demos: the first N successful demos of each task, for each N of the plan, all
   for training; plus held-out demos at seeds from 20000, the validation split of every
   dataset alike;
5. stage 2 (`train_idm`) on each arm's backbone for every N and seed, then closed-loop
   evaluation over ROS 2 (`run_evaluation`); the held-out action error is the final
   validation's `val_action_mae_rad` (it still tells the arms apart where both solve nothing);
6. convergence: the step checkpoints of the largest N's first seed, evaluated too;
7. the report: `sample_efficiency.json` (command, plan, machine, wall times, every run),
   `.md` (success and held-out error per arm and N, mean +- std over seeds; the demos ratio)
   and `.png`.

The demos ratio: how many demos per task each arm needs to reach one success level (the
video arm's at its smallest N, at most 50%), interpolated linearly in log N; image / video.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vam_policy.demo import (
    EVAL_SEED_OFFSET,
    DemoError,
    DemoPlan,
    build_demo_dataset,
    default_profile,
    evaluate_checkpoint,
    record_demos,
    run_guarded,
)
from vam_policy.machine import describe_machine
from vam_policy.sim.cli import task_list

ARMS = ("video", "image")
PRETRAIN_SEED = 10_000  # pretraining videos: seeds neither the labelled demos nor eval use
HELDOUT_SEED = 20_000  # held-out labelled demos, for the action error
MAX_LEVEL = 0.5  # the demos ratio compares arms at no higher a success level than this
RESULTS_STEM = "sample_efficiency"


@dataclass(frozen=True)
class SampleEfficiencyPlan:
    """How much each stage of the experiment does."""

    tasks: tuple[str, ...]
    demos_per_task: tuple[int, ...]  # labelled demos per task, one stage-2 dataset each
    seeds: tuple[int, ...]  # stage-2 training seeds
    eval_episodes: int  # per task and run
    eval_time_s: float | None  # simulated seconds per episode; None: the profile's limit
    pretrain_demos_per_task: int  # action-free pretraining videos per task (stages 0 and 1)
    heldout_demos_per_task: int  # labelled demos no run trains on: its action error
    vae_steps: int
    pretrain_steps: int  # stage 1, each arm
    idm_steps: int  # stage 2, each run
    convergence_points: int  # step checkpoints (the final one included) of the convergence run


QUICK = SampleEfficiencyPlan(
    tasks=("lift_red",), demos_per_task=(2, 4), seeds=(0,), eval_episodes=1, eval_time_s=4.0,
    pretrain_demos_per_task=2, heldout_demos_per_task=1, vae_steps=10, pretrain_steps=10,
    idm_steps=40, convergence_points=2)
# ~75 min on 2 idle CPU cores, from the step times of quick runs: record 80 demos ~3.5 min,
# stage 0 ~10 (~1.2 s a step), stage 1 ~4 for both arms, stage 2 12 x (~0.12 s a step + cache
# and set-up) ~30, evaluation 16 x (~15 s of node start-up + 8 episodes of up to 10 s) ~25.
FULL = SampleEfficiencyPlan(
    tasks=("lift_red", "push_red_left"), demos_per_task=(5, 10, 20), seeds=(0, 1),
    eval_episodes=4, eval_time_s=None, pretrain_demos_per_task=20, heldout_demos_per_task=4,
    vae_steps=500, pretrain_steps=500, idm_steps=900, convergence_points=3)


def add_experiment_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `experiment sample-efficiency` to the `vam` parser."""
    experiment = subparsers.add_parser(
        "experiment", help="experiments behind the project's claims, in miniature on the sim")
    verbs = experiment.add_subparsers(dest="experiment_verb", required=True, metavar="NAME")
    parser = verbs.add_parser(
        "sample-efficiency", help="success vs number of labelled demos for a video- and an "
        "image-pretrained backbone (same VAE, data, steps and seeds); the demos ratio")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run (~5 min): {','.join(QUICK.tasks)}, demos "
                        f"{_ints_text(QUICK.demos_per_task)}, seed {_ints_text(QUICK.seeds)}, "
                        f"{QUICK.eval_episodes} episode of {QUICK.eval_time_s:g} s")
    parser.add_argument("--out", type=Path, default=None,
                        help="working folder (demos, datasets, runs, evaluations), must be "
                        "empty or new (default runs/sample-efficiency-TIME)")
    parser.add_argument("--results", type=Path, default=None, metavar="DIR",
                        help=f"where {RESULTS_STEM}.json/.md/.png go (default: the "
                        "workspace's benchmarks/results/; with --quick: --out)")
    parser.add_argument("--tasks", type=task_list, default=None, metavar="TASK[,TASK...]",
                        help=f"sim tasks (default {','.join(FULL.tasks)}; with --quick "
                        f"{','.join(QUICK.tasks)})")
    parser.add_argument("--demos", type=_int_list, default=None, metavar="N[,N...]",
                        help=f"labelled demos per task (default {_ints_text(FULL.demos_per_task)})")
    parser.add_argument("--seeds", type=_int_list, default=None, metavar="S[,S...]",
                        help=f"stage-2 training seeds (default {_ints_text(FULL.seeds)})")
    parser.add_argument("--episodes", type=int, default=None, metavar="N",
                        help=f"evaluation episodes per task and run (default "
                        f"{FULL.eval_episodes}); layouts from seed {EVAL_SEED_OFFSET}")
    parser.add_argument("--pretrain-demos", type=int, default=None, metavar="N",
                        help=f"pretraining videos per task (default "
                        f"{FULL.pretrain_demos_per_task}), seeds from {PRETRAIN_SEED}")
    parser.add_argument("--heldout-demos", type=int, default=None, metavar="N",
                        help=f"held-out labelled demos per task for the action error (default "
                        f"{FULL.heldout_demos_per_task}), seeds from {HELDOUT_SEED}")
    parser.add_argument("--vae-steps", type=int, default=None, metavar="N",
                        help=f"stage 0 steps (default {FULL.vae_steps})")
    parser.add_argument("--pretrain-steps", type=int, default=None, metavar="N",
                        help=f"stage 1 steps of each arm (default {FULL.pretrain_steps})")
    parser.add_argument("--idm-steps", type=int, default=None, metavar="N",
                        help=f"stage 2 steps of each run (default {FULL.idm_steps})")
    parser.add_argument("--profile", type=Path, default=None,
                        help="sim profile (default: the workspace's config/sim_panda.yaml)")
    parser.add_argument("--report", type=Path, default=None, metavar="RESULTS_JSON",
                        help=f"run nothing: rewrite the report (to --results) from an earlier "
                        f"run's {RESULTS_STEM}.json with this version's analysis")
    parser.set_defaults(func=run_sample_efficiency_command)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}"
                                         ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected comma-separated integers")
    return values


def _ints_text(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values)


def plan_from_args(args: argparse.Namespace) -> SampleEfficiencyPlan:
    """The mode's plan with the command line's overrides; ValueError when it makes no sense."""
    from vam_policy.sim.tasks import get_task  # robosuite: not for `vam --help`

    plan = QUICK if args.quick else FULL
    overrides = {key: value for key, value in (
        ("tasks", tuple(args.tasks) if args.tasks else None),
        ("demos_per_task", tuple(sorted(set(args.demos))) if args.demos else None),
        ("seeds", tuple(dict.fromkeys(args.seeds)) if args.seeds else None),
        ("eval_episodes", args.episodes), ("pretrain_demos_per_task", args.pretrain_demos),
        ("heldout_demos_per_task", args.heldout_demos),
        ("vae_steps", args.vae_steps), ("pretrain_steps", args.pretrain_steps),
        ("idm_steps", args.idm_steps)) if value is not None}
    plan = replace(plan, **overrides)
    for task in plan.tasks:
        get_task(task)
    if min(plan.demos_per_task) < 1 or min(plan.seeds) < 0:
        raise ValueError("--demos must be >= 1 and --seeds >= 0")
    if min(plan.eval_episodes, plan.pretrain_demos_per_task, plan.heldout_demos_per_task,
           plan.vae_steps, plan.pretrain_steps, plan.idm_steps, plan.convergence_points) < 1:
        raise ValueError("--episodes, --pretrain-demos, --heldout-demos and the step counts "
                         "must be >= 1")
    if (max(plan.demos_per_task) > EVAL_SEED_OFFSET
            or EVAL_SEED_OFFSET + plan.eval_episodes > PRETRAIN_SEED
            or PRETRAIN_SEED + plan.pretrain_demos_per_task > HELDOUT_SEED):
        raise ValueError(f"labelled demos (seeds 0..), evaluation (from {EVAL_SEED_OFFSET}), "
                         f"pretraining videos (from {PRETRAIN_SEED}) and held-out demos (from "
                         f"{HELDOUT_SEED}) would share seeds")
    return plan


def run_sample_efficiency_command(args: argparse.Namespace) -> int:
    """Exit 0 when every stage ran, 1 when one failed, 2 on bad arguments."""
    if args.report is not None:
        return rewrite_report_command(args.report, args.results or workspace_results_dir())
    out = args.out or Path("runs") / time.strftime("sample-efficiency-%Y%m%d-%H%M%S")
    results_dir = args.results or (out if args.quick else workspace_results_dir())
    profile = args.profile or default_profile()
    try:
        plan = plan_from_args(args)
        if not Path(profile).is_file():
            raise ValueError(f"profile {profile} does not exist")
        if out.exists() and any(out.iterdir()):
            raise ValueError(f"output folder {out} is not empty; give a new --out")
    except ValueError as error:
        print(f"vam experiment: {error}", file=sys.stderr)
        return 2
    command = shlex.join(["vam", *sys.argv[1:]])
    try:
        run_sample_efficiency(plan, out, results_dir, Path(profile), command)
    except DemoError as error:
        print(f"vam experiment: {error}", file=sys.stderr)
        return 1
    return 0


def rewrite_report_command(source: Path, results_dir: Path) -> int:
    """`--report`: the report of `source`'s runs, analysed again; exit 2 when unreadable."""
    try:
        results = json.loads(Path(source).read_text(encoding="utf-8"))
        paths = write_report(reanalysed(results), results_dir)
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"vam experiment: cannot rewrite the report from {source}: {error!r}",
              file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def reanalysed(results: Mapping[str, Any]) -> dict[str, Any]:
    """`results` with the table and both ratios computed again from its runs, and a note of
    the revision that did it (the runs themselves are kept as they are)."""
    return {**results, **analysis(results["runs"]),
            "report_rewritten": {"git": _git_revision(),
                                 "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}


def workspace_results_dir() -> Path:
    """`benchmarks/results/` of the workspace, wherever the command is run from."""
    from vam_policy.train.config import preset_dir

    return preset_dir().parents[1] / "benchmarks" / "results"


# ---- the experiment ------------------------------------------------------------------------

_STAGES = 7


def _header(number: int, title: str) -> None:
    print(f"\n=== [{number}/{_STAGES}] {title} ===", flush=True)


class _Clock:
    """Wall seconds per named stage, summed over repeats."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.seconds: dict[str, float] = {}

    def run(self, name: str, stage: str, work: Callable[[], Any]) -> Any:
        tick = time.monotonic()
        try:
            return run_guarded(stage, work)
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - tick


def run_sample_efficiency(plan: SampleEfficiencyPlan, out: Path, results_dir: Path,
                          profile: Path, command: str = "") -> dict[str, Any]:
    """Run every stage into `out` and write the report to `results_dir`; returns the results
    (what sample_efficiency.json holds). Raises DemoError naming the stage that failed."""
    clock = _Clock()
    out = out.resolve()  # checkpoints reference their backbone folder by this path
    out.mkdir(parents=True, exist_ok=True)
    runs = len(ARMS) * len(plan.demos_per_task) * len(plan.seeds)
    print(f"vam experiment sample-efficiency: {', '.join(plan.tasks)}; demos per task "
          f"{_ints_text(plan.demos_per_task)}; seeds {_ints_text(plan.seeds)}; {runs} "
          f"stage-2 runs of {plan.idm_steps} steps; working folder {out}")
    results: dict[str, Any] = {
        "experiment": "sample-efficiency", "command": command,
        "plan": plan_dict(plan), "machine": machine(), "profile": str(profile),
        "out": str(out), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "timings_s": clock.seconds, "pretraining": {}, "runs": [], "convergence": [],
    }

    _header(1, f"record {plan.pretrain_demos_per_task} pretraining video(s) per task "
            f"(seeds from {PRETRAIN_SEED})")
    pretrain = _demo_plan(plan, plan.pretrain_demos_per_task)
    bags = clock.run("pretrain_record", "pretrain record", lambda: record_demos(
        pretrain, out / "pretrain" / "demos", profile, PRETRAIN_SEED))
    videos = clock.run("pretrain_dataset", "pretrain dataset", lambda: build_demo_dataset(
        bags, out / "pretrain" / "dataset", profile, 0))
    results["pretraining"]["episodes"] = len(bags)

    _header(2, f"stage 0: the VAE both arms share (vae:sim, {plan.vae_steps} steps)")
    vae = clock.run("vae", "vae", lambda: train_stage0(plan, videos, out / "vae"))
    results["pretraining"]["vae"] = _last_metrics(vae.records)

    _header(3, f"stage 1 twice from that VAE: objective video and image (video:sim, "
            f"{plan.pretrain_steps} steps each)")
    backbones = {}
    for arm in ARMS:
        print(f"\n--- stage 1, objective {arm!r} ---", flush=True)
        trained = clock.run(f"pretrain_{arm}", f"pretrain {arm}", lambda arm=arm: train_stage1(
            plan, videos, vae.final, arm, out / f"pretrain_{arm}"))
        backbones[arm] = trained.final
        results["pretraining"][arm] = {"wall_s": clock.seconds[f"pretrain_{arm}"],
                                       "backbone": str(trained.final),
                                       **_last_metrics(trained.records)}

    _header(4, f"record {max(plan.demos_per_task)} labelled demo(s) per task (seeds from 0); "
            f"datasets of {_ints_text(plan.demos_per_task)} per task")
    labelled = clock.run("labelled_record", "labelled record", lambda: record_demos(
        _demo_plan(plan, max(plan.demos_per_task)), out / "labelled" / "demos", profile, 0))
    heldout = clock.run("heldout_record", "held-out record", lambda: record_demos(
        _demo_plan(plan, plan.heldout_demos_per_task), out / "heldout" / "demos", profile,
        HELDOUT_SEED))
    datasets = clock.run("labelled_dataset", "labelled dataset", lambda: labelled_datasets(
        plan, labelled, heldout, out / "labelled", profile))

    _header(5, f"stage 2 + closed-loop evaluation: {runs} runs (idm:sim, {plan.idm_steps} "
            f"steps; {plan.eval_episodes} episode(s) per task)")
    convergence_run: dict[str, Path] = {}
    count = 0
    for n in plan.demos_per_task:
        for seed in plan.seeds:
            for arm in ARMS:
                count += 1
                print(f"\n--- run {count}/{runs}: {arm} backbone, {n} demos per task, seed "
                      f"{seed} ---", flush=True)
                folder = out / "runs" / f"{arm}_n{n:03d}_s{seed}"
                run = train_and_evaluate(plan, clock, arm, backbones[arm], datasets[n], n,
                                         seed, folder, profile)
                results["runs"].append(run)
                if n == max(plan.demos_per_task) and seed == plan.seeds[0]:
                    convergence_run[arm] = folder
                _write_json(out / "progress.json", results)
                print(f"{arm} n={n} seed={seed}: {100 * run['success_rate']:.0f}% "
                      f"({run['successes']}/{run['episodes']}), held-out action error "
                      f"{run['heldout_action_mae_rad']:.3f} rad", flush=True)

    _header(6, f"convergence: step checkpoints of {max(plan.demos_per_task)} demos, seed "
            f"{plan.seeds[0]}")
    for arm in ARMS:
        final = next(r for r in results["runs"] if r["arm"] == arm and r["seed"] == plan.seeds[0]
                     and r["demos_per_task"] == max(plan.demos_per_task))
        results["convergence"] += evaluate_convergence(plan, clock, arm, convergence_run[arm],
                                                       profile, final["heldout_curve"])
        results["convergence"].append({key: final[key] for key in (
            "arm", "demos_per_task", "seed", "step", "success_rate", "successes", "episodes",
            "per_task", "heldout_action_mae_rad")})
        _write_json(out / "progress.json", results)

    _header(7, "report")
    results.update(analysis(results["runs"]))
    clock.seconds["total"] = time.monotonic() - clock.started
    paths = write_report(results, results_dir)
    _write_json(out / f"{RESULTS_STEM}.json", results)
    print("\n" + markdown_table(results["table"], plan.demos_per_task))
    print(results["demos_ratio"]["text"])
    print("\nheld-out action error (rad):\n"
          + markdown_table(results["table"], plan.demos_per_task, "error"))
    print(results["error_ratio"]["text"])
    print(f"\nvam experiment sample-efficiency: done in {clock.seconds['total']:.0f} s ("
          + ", ".join(f"{k} {v:.0f} s" for k, v in clock.seconds.items() if k != "total")
          + ")")
    for path in paths:
        print(f"  {path}")
    return results


def _demo_plan(plan: SampleEfficiencyPlan, demos: int) -> DemoPlan:
    """What `vam demo`'s record and eval helpers read: tasks, demos, eval episodes and time."""
    return DemoPlan(tasks=plan.tasks, demos_per_task=demos, train_steps=plan.idm_steps,
                    eval_episodes=plan.eval_episodes, eval_time_s=plan.eval_time_s)


def train_stage0(plan: SampleEfficiencyPlan, dataset: Path, out: Path) -> Any:
    from vam_policy.train.config import VaeTrainConfig, load_train_config
    from vam_policy.train.vae import train_vae

    config = load_train_config("vae:sim", VaeTrainConfig)
    return _finished(train_vae(dataset, out, config, steps=plan.vae_steps, device="cpu"))


def train_stage1(plan: SampleEfficiencyPlan, dataset: Path, vae_backbone: Path, objective: str,
                 out: Path) -> Any:
    """`train_video` from the stage-0 backbone; the arms differ in `objective` alone."""
    from vam_policy.train.config import VideoTrainConfig, load_train_config
    from vam_policy.train.video import train_video

    config = replace(load_train_config("video:sim", VideoTrainConfig), objective=objective)
    return _finished(train_video(dataset, out, config, backbone=str(vae_backbone),
                                 steps=plan.pretrain_steps, device="cpu"))


def _finished(result: Any) -> Any:
    if result.final is None:
        raise DemoError(f"training in {result.out} stopped at step {result.step} without its "
                        "product")
    return result


def first_per_task(bags: Sequence[Path], count: int) -> dict[str, list[Path]]:
    """The first `count` bags (lowest seeds) of each task; bags are named `<task>_<seed>`."""
    by_task: dict[str, list[tuple[int, Path]]] = {}
    for bag in bags:
        task, _, seed = Path(bag).name.rpartition("_")
        by_task.setdefault(task, []).append((int(seed), Path(bag)))
    return {task: [bag for _, bag in sorted(pairs)[:count]] for task, pairs in by_task.items()}


def labelled_datasets(plan: SampleEfficiencyPlan, bags: Sequence[Path], heldout: Sequence[Path],
                      out: Path, profile: Path) -> dict[int, Path]:
    """One dataset per N of the plan: the first N demos of each task for training, every
    `heldout` demo for validation."""
    from vam_policy.data.dataset import build_dataset, describe
    from vam_policy.data.episodes import RecordingProfile

    datasets = {}
    for n in plan.demos_per_task:
        chosen = first_per_task(bags, n)
        short = {task: len(found) for task, found in chosen.items() if len(found) < n}
        missing = [task for task in plan.tasks if task not in chosen]
        if missing:
            raise DemoError(f"the experts solved no episode of {', '.join(missing)}")
        if short:
            print(f"warning: the experts solved fewer than {n} demos of " + ", ".join(
                f"{task} ({found})" for task, found in short.items()), flush=True)
        folder = out / f"dataset_n{n:03d}"
        train = [bag for task in plan.tasks for bag in chosen[task]]
        dataset = build_dataset([*train, *heldout], RecordingProfile.load(profile), folder,
                                val_fraction=len(heldout) / (len(train) + len(heldout)),
                                splits=["train"] * len(train) + ["val"] * len(heldout))
        print(f"{n} per task: {describe(dataset).splitlines()[0]}")
        datasets[n] = folder
    return datasets


def idm_config(plan: SampleEfficiencyPlan, seed: int) -> Any:
    """idm:sim with the run's seed; step checkpoints, each with a validation on the held-out
    demos, every idm_steps / convergence_points kept (every run alike: saving and validating
    draw no random numbers from the training's generator, so they cannot change it)."""
    from vam_policy.train.config import IdmTrainConfig, load_train_config

    config = load_train_config("idm:sim", IdmTrainConfig)
    every = math.ceil(plan.idm_steps / plan.convergence_points)
    return replace(config, loop=replace(config.loop, seed=seed, save_every=every,
                                        eval_every=every,
                                        keep_checkpoints=plan.convergence_points + 1))


def train_and_evaluate(plan: SampleEfficiencyPlan, clock: _Clock, arm: str, backbone: Path,
                       dataset: Path, n: int, seed: int, out: Path,
                       profile: Path) -> dict[str, Any]:
    """One stage-2 run on `arm`'s backbone and its closed-loop evaluation."""
    from vam_policy.train.idm import train_idm

    tick = time.monotonic()
    trained = clock.run("idm_train", f"idm {arm} n={n} seed={seed}", lambda: _finished(train_idm(
        dataset, out / "train", idm_config(plan, seed), backbone=str(backbone),
        steps=plan.idm_steps, device="cpu",
        cache_dir=out.parent / f"cache_{arm}_n{n:03d}")))  # shared by the seeds
    train_s = time.monotonic() - tick
    last = _last_metrics(trained.records)
    tick = time.monotonic()
    evaluation = clock.run("eval", f"eval {arm} n={n} seed={seed}", lambda: evaluate_checkpoint(
        _demo_plan(plan, n), trained.final, out / "eval", profile, 0))
    return {"arm": arm, "demos_per_task": n, "seed": seed, "step": plan.idm_steps,
            "train_wall_s": train_s, "eval_wall_s": time.monotonic() - tick,
            "train_samples": trained.train_samples, "checkpoint": str(trained.final),
            "final_loss": last.get("loss"), "heldout_action_mae_rad": last["val_action_mae_rad"],
            "heldout_curve": [[r["step"], r["val_action_mae_rad"]] for r in trained.records
                              if "val_action_mae_rad" in r],
            **_success(evaluation)}


def evaluate_convergence(plan: SampleEfficiencyPlan, clock: _Clock, arm: str, run: Path,
                         profile: Path, heldout_curve: Sequence[Sequence[float]]
                         ) -> list[dict[str, Any]]:
    """Closed-loop success of the run's intermediate step checkpoints (`step_N/policy`), with
    the held-out action error at that step (from `heldout_curve`, [step, error] pairs)."""
    from vam_policy.train.loop import CHECKPOINTS

    heldout = {int(step): error for step, error in heldout_curve}
    points = []
    demo_plan = _demo_plan(plan, max(plan.demos_per_task))
    for folder in sorted(run.glob(f"train/{CHECKPOINTS}/step_*")):
        step = int(folder.name.removeprefix("step_"))
        if step >= plan.idm_steps:
            continue  # the final policy: evaluated already
        print(f"\n--- {arm}: checkpoint at step {step} ---", flush=True)
        evaluation = clock.run("convergence_eval", f"eval {arm} step {step}", lambda f=folder,
                               s=step: evaluate_checkpoint(demo_plan, f / "policy",
                                                 run / f"eval_step_{s:07d}", profile, 0))
        points.append({"arm": arm, "demos_per_task": max(plan.demos_per_task),
                       "seed": plan.seeds[0], "step": step, **_success(evaluation),
                       "heldout_action_mae_rad": heldout.get(step)})
    return points


def _success(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    rows = {row["task"]: row for row in evaluation["summary"]}
    overall = rows["all"]
    return {"success_rate": overall["success_rate"], "successes": overall["successes"],
            "episodes": overall["episodes"],
            "per_task": {task: row["success_rate"] for task, row in rows.items()
                         if task != "all"},
            "trajectories_accepted": sum(e["trajectories_accepted"]
                                         for e in evaluation["episodes"])}


def _last_metrics(records: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The last value of each metric (final training loss, last validation)."""
    last: dict[str, float] = {}
    for record in records:
        last.update({k: v for k, v in record.items() if k not in ("lr", "grad_norm")})
    return last


def plan_dict(plan: SampleEfficiencyPlan) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(plan).items()}


def machine() -> dict[str, Any]:
    """Where it ran: every stage on the CPU."""
    import torch

    return {"device": "cpu", **describe_machine(), "torch_threads": torch.get_num_threads(),
            "git": _git_revision()}


def _git_revision() -> str | None:
    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# ---- analysis ------------------------------------------------------------------------------


def analysis(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the report reads from the runs: the arm x N table and both demos ratios."""
    table = summary_table(runs)
    return {"table": table, "demos_ratio": asdict(ratio_of(table)),
            "error_ratio": asdict(error_ratio_of(table))}


def summary_table(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation (over seeds, ddof 1; 0 for one seed) of the success rate
    (`mean`, `std`) and of the held-out action error (`error_mean`, `error_std`), one row per
    arm and N."""
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["arm"], run["demos_per_task"]), []).append(run)
    rows = []
    for arm in ARMS:
        for (group_arm, n), group in sorted(groups.items(), key=lambda item: item[0][1]):
            if group_arm == arm:
                rates = [run["success_rate"] for run in group]
                errors = [run["heldout_action_mae_rad"] for run in group]
                rows.append({"arm": arm, "demos_per_task": n, "runs": len(group),
                             "mean": float(np.mean(rates)), "std": _std(rates),
                             "error_mean": float(np.mean(errors)), "error_std": _std(errors)})
    return rows


def _std(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def demos_needed(curve: Sequence[tuple[float, float]], level: float) -> float | None:
    """Demos per task at which the curve of (N, success) first reaches `level`: linear in
    log N between the last point below and the first at or above it; the smallest N when that
    one reaches it already (the arm may need fewer); None when no point reaches it."""
    points = sorted(curve)
    for i, (n, success) in enumerate(points):
        if success >= level:
            if i == 0:
                return float(n)
            n0, s0 = points[i - 1]
            fraction = (level - s0) / (success - s0)
            return float(math.exp(math.log(n0) + fraction * (math.log(n) - math.log(n0))))
    return None


@dataclass(frozen=True)
class DemosRatio:
    """How many more labelled demos the image-pretrained arm needs than the video one."""

    level: float | None
    """The success level both arms are compared at."""
    video_demos: float | None
    image_demos: float | None
    ratio: float | None
    """image_demos / video_demos; a lower bound when `bound` is ">="; None when undefined."""
    bound: str | None
    """"=" (both arms reach the level), ">=" (the image arm never does), None (undefined)."""
    text: str
    """One line that says it, or why there is no ratio."""


def demos_ratio(video: Sequence[tuple[float, float]], image: Sequence[tuple[float, float]],
                level: float | None = None, max_level: float = MAX_LEVEL) -> DemosRatio:
    """Compare the arms' curves of (demos per task, mean success) at one success level.

    `level` None: the video arm's success at its smallest N, capped at `max_level` (or, when
    it solved nothing there, its best success, capped alike). Each arm's demos are
    interpolated linearly in log N (`demos_needed`). When the image arm never reaches the
    level, its largest N gives a lower bound on the ratio.
    """
    if not video or not image:
        raise ValueError("expected a curve of (demos, success) points for each arm")
    video, image = sorted(video), sorted(image)
    if level is None:
        first, best = video[0][1], max(success for _, success in video)
        level = min(first if first > 0 else best, max_level)
    if level <= 0:
        return DemosRatio(None, None, None, None, None,
                          "no demos ratio: the video arm solved no episode")
    nv, ni = demos_needed(video, level), demos_needed(image, level)
    reach = f"{100 * level:.0f}% success"
    max_image, max_video = image[-1][0], video[-1][0]
    if nv is None and ni is None:
        return DemosRatio(level, None, None, None, None,
                          f"no demos ratio: neither arm reaches {reach} (with up to "
                          f"{max(max_image, max_video):g} demos per task)")
    if nv is None:
        return DemosRatio(level, None, ni, None, None,
                          f"no demos ratio: the video arm does not reach {reach} with up to "
                          f"{max_video:g} demos per task, the image arm does with {ni:.1f}")
    at_least = " (at most: reached at the smallest N)" if nv == video[0][0] else ""
    if ni is None:
        ratio = max_image / nv
        return DemosRatio(level, nv, None, ratio, ">=",
                          f"demos ratio (image / video) >= {ratio:.1f}x at {reach}: the video "
                          f"arm needs {nv:.1f} demos per task{at_least}, the image arm does not "
                          f"reach it with up to {max_image:g}")
    return DemosRatio(level, nv, ni, ni / nv, "=",
                      f"demos ratio (image / video) {ni / nv:.1f}x at {reach}: the video arm "
                      f"needs {nv:.1f} demos per task{at_least}, the image arm {ni:.1f}")


def ratio_of(table: Sequence[Mapping[str, Any]]) -> DemosRatio:
    curves = {arm: [(row["demos_per_task"], row["mean"]) for row in table if row["arm"] == arm]
              for arm in ARMS}
    return demos_ratio(curves["video"], curves["image"])


def error_demos_ratio(video: Sequence[tuple[float, float]],
                      image: Sequence[tuple[float, float]]) -> DemosRatio:
    """Compare the arms' curves of (demos per task, held-out action error) at the error the
    video arm reaches with its smallest N: the demos the image arm needs to get as low,
    interpolated linearly in log N (`demos_needed` on the negated error). An upper bound
    ("<=") when the image arm is that low already at its smallest N, a lower bound (">=")
    when it never gets there."""
    if not video or not image:
        raise ValueError("expected a curve of (demos, error) points for each arm")
    video, image = sorted(video), sorted(image)
    nv, level = video[0]
    ni = demos_needed([(n, -error) for n, error in image], -level)
    at = f"the video arm's held-out error with {nv:g} demos per task, {level:.3f} rad"
    if ni is None:
        ratio = image[-1][0] / nv
        return DemosRatio(level, nv, None, ratio, ">=",
                          f"demos ratio at equal held-out error (image / video) >= "
                          f"{ratio:.1f}x: the image arm does not reach {at}, with up to "
                          f"{image[-1][0]:g}")
    bound = "<=" if ni == image[0][0] else "="
    return DemosRatio(level, nv, ni, ni / nv, bound,
                      f"demos ratio at equal held-out error (image / video) "
                      f"{'<= ' if bound == '<=' else ''}{ni / nv:.1f}x: the image arm needs "
                      f"{ni:.1f} demos per task to reach {at}")


def error_ratio_of(table: Sequence[Mapping[str, Any]]) -> DemosRatio:
    curves = {arm: [(row["demos_per_task"], row["error_mean"]) for row in table
                    if row["arm"] == arm] for arm in ARMS}
    return error_demos_ratio(curves["video"], curves["image"])


# ---- report --------------------------------------------------------------------------------


def markdown_table(table: Sequence[Mapping[str, Any]], demos: Sequence[int],
                   metric: str = "success") -> str:
    """Arm x N: mean +- std over the seeds of the success rate, or with `metric` "error" of
    the held-out action error (rad)."""
    cells = {(row["arm"], row["demos_per_task"]): row for row in table}
    lines = ["| pretraining | " + " | ".join(f"N={n}" for n in demos) + " |",
             "|---|" + "---:|" * len(demos)]
    for arm in ARMS:
        values = []
        for n in demos:
            row = cells.get((arm, n))
            if row is None:
                values.append("-")
            elif metric == "error":
                values.append(f"{row['error_mean']:.3f} ± {row['error_std']:.3f}")
            else:
                values.append(f"{100 * row['mean']:.0f} ± {100 * row['std']:.0f}%")
        lines.append(f"| {arm} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def markdown_report(results: Mapping[str, Any]) -> str:
    plan, machine_info = results["plan"], results["machine"]
    demos = plan["demos_per_task"]
    timings = results.get("timings_s", {})
    lines = [
        "# Sample efficiency: video vs static-image pretraining",
        "",
        f"`{results.get('command') or 'vam experiment sample-efficiency'}` on "
        f"{machine_info['device']} ({machine_info['cpu']}, {machine_info['cpu_count']} cores), "
        f"{results.get('started', '')}.",
        "",
        f"Closed-loop success rate (mean ± std over seeds {_ints_text(plan['seeds'])}; "
        f"{plan['eval_episodes']} episode(s) per task of {', '.join(plan['tasks'])}) after "
        f"{plan['idm_steps']} stage-2 steps on N labelled demos per task:",
        "",
        markdown_table(results["table"], demos),
        f"**{results['demos_ratio']['text']}.**",
        "",
        f"Held-out action error (rad, mean absolute, mean ± std over the seeds; "
        f"{plan['heldout_demos_per_task']} demo(s) per task that no run trains on):",
        "",
        markdown_table(results["table"], demos, "error"),
        f"**{results['error_ratio']['text']}.**",
        "",
        f"Both arms share the stage-0 VAE ({plan['vae_steps']} steps) and their stage 1 "
        f"({plan['pretrain_steps']} steps, same seed) on {plan['pretrain_demos_per_task']} "
        "action-free videos per task; they differ in the stage-1 objective alone (future "
        "frames from the history vs single frames).",
        "",
    ]
    if results.get("convergence"):
        lines += ["Success vs stage-2 steps (N = "
                  f"{max(demos)}, seed {plan['seeds'][0]}):", "",
                  "| pretraining | step | success | held-out error (rad) |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {p['arm']} | {p['step']} | {100 * p['success_rate']:.0f}% | "
                  f"{_error_text(p.get('heldout_action_mae_rad'))} |"
                  for p in sorted(results["convergence"], key=lambda p: (p["arm"], p["step"]))]
        lines.append("")
    rewritten = results.get("report_rewritten")
    if rewritten:
        lines += [f"This report was rewritten from the run's JSON by revision "
                  f"{rewritten['git']} on {rewritten['date']} (`--report`): same runs, that "
                  "revision's analysis.", ""]
    if timings:
        lines += ["Wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items())
                  + ".", ""]
    lines += ["Every run: `sample_efficiency.json`; plot: `sample_efficiency.png`.", ""]
    return "\n".join(lines)


def _error_text(error: float | None) -> str:
    return "-" if error is None else f"{error:.3f}"


def plot_sample_efficiency(results: Mapping[str, Any], path: Path) -> None:
    """Success and held-out action error vs demos per task (log x, std bars); success vs
    stage-2 steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"video": "tab:blue", "image": "tab:orange"}
    fig, (demos_ax, error_ax, steps_ax) = plt.subplots(1, 3, figsize=(17, 4.5))
    demos = results["plan"]["demos_per_task"]
    for arm in ARMS:
        rows = sorted((r for r in results["table"] if r["arm"] == arm),
                      key=lambda r: r["demos_per_task"])
        if rows:
            demos_ax.errorbar([r["demos_per_task"] for r in rows],
                              [100 * r["mean"] for r in rows],
                              yerr=[100 * r["std"] for r in rows], marker="o", capsize=4,
                              color=colors[arm], label=f"{arm} pretraining")
            error_ax.errorbar([r["demos_per_task"] for r in rows],
                              [r["error_mean"] for r in rows],
                              yerr=[r["error_std"] for r in rows], marker="o", capsize=4,
                              color=colors[arm], label=f"{arm} pretraining")
        points = sorted((p for p in results.get("convergence", ()) if p["arm"] == arm),
                        key=lambda p: p["step"])
        if points:
            steps_ax.plot([p["step"] for p in points], [100 * p["success_rate"] for p in points],
                          "o-", color=colors[arm], label=f"{arm} pretraining")
    ratio = results.get("demos_ratio") or {}
    if ratio.get("level") is not None:
        demos_ax.axhline(100 * ratio["level"], color="gray", linestyle="--", linewidth=1,
                         label=f"level {100 * ratio['level']:.0f}%")
    for ax in (demos_ax, error_ax):
        ax.set_xscale("log")
        ax.set_xticks(demos, [str(n) for n in demos])
        ax.minorticks_off()
        ax.legend()
    demos_ax.set(xlabel="labelled demos per task", ylabel="closed-loop success (%)",
                 ylim=(-5, 105), title="success vs labelled demos")
    error_ax.set(xlabel="labelled demos per task", ylabel="held-out action error (rad)",
                 ylim=(0, None), title="held-out action error vs labelled demos")
    steps_ax.set(xlabel="stage-2 steps", ylabel="closed-loop success (%)", ylim=(-5, 105),
                 title=f"success vs training steps ({max(demos)} demos per task)")
    if steps_ax.lines:
        steps_ax.legend()
    lines = [text for text in (ratio.get("text"), results.get("error_ratio", {}).get("text"))
             if text]
    if lines:
        fig.suptitle("\n".join(textwrap.fill(text, 150) for text in lines), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(results: Mapping[str, Any], folder: Path) -> list[Path]:
    """`sample_efficiency.json`, `.md` and `.png` in `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / RESULTS_STEM
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    _write_json(paths[0], results)
    paths[1].write_text(markdown_report(results), encoding="utf-8")
    plot_sample_efficiency(results, paths[2])
    return paths
