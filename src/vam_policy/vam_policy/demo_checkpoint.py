"""`vam demo` without --train: closed-loop evaluation of a trained checkpoint, by default the
one the project ships in `models/sim_panda/`.

That folder is laid out like a `vam train idm` run folder, so `--checkpoint RUN/policy` of a
run of yours is read the same way:

    policy/          the policy checkpoint (what `vam eval --checkpoint` takes)
    metrics.jsonl    the run's training and validation records: the summary PNG's curves
    training.json    how it was made (`write_training_record`)

`scripts/train_demo_checkpoint` trains it with the demo's own code and writes training.json
with this module's command line:

    python -m vam_policy.demo_checkpoint models/sim_panda --dataset DATASET --demos 128 \\
        --steps 16000 --decoders 3 --script "..." --train-command "vam train idm ..." \\
        --commit COMMIT
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from vam_policy.demo import (
    CHECKPOINT_EPISODES,
    EVAL_SEED_OFFSET,
    DemoError,
    header,
    run_closed_loop,
    run_guarded,
    write_outputs,
)
from vam_policy.train.idm import POLICY_DIR
from vam_policy.train.loop import METRICS_FILE, read_metrics

TRAINING_RECORD = "training.json"


def shipped_checkpoint() -> Path:
    """`models/sim_panda/policy` of the workspace: what `vam demo` evaluates by default."""
    # src/vam_policy/vam_policy/demo_checkpoint.py -> repository root
    return Path(__file__).resolve().parents[3] / "models" / "sim_panda" / POLICY_DIR


@dataclass(frozen=True)
class CheckpointPlan:
    """What the checkpoint mode evaluates."""

    checkpoint: Path  # a policy checkpoint folder; its run's records lie in the folder above
    tasks: tuple[str, ...]
    episodes: int  # per task
    shipped: bool  # the project's own, `shipped_checkpoint()`


def checkpoint_plan(args: argparse.Namespace) -> CheckpointPlan:
    """What `vam demo` without --train or --quick evaluates; ValueError on a bad flag."""
    from vam_policy.model.checkpoint import CheckpointError, read_manifest
    from vam_policy.sim.tasks import TASKS, get_task  # robosuite: not for `vam --help`

    training_only = [flag for flag, value in (
        ("--demos", args.demos), ("--steps", args.steps), ("--backbone", args.backbone))
        if value is not None]
    if training_only:
        raise ValueError(f"{', '.join(training_only)}: only for training; add --train (or "
                         "--quick) to run the whole loop from scratch, or leave it out to "
                         "evaluate a trained checkpoint")
    tasks = tuple(args.tasks or sorted(TASKS))
    for task in tasks:
        get_task(task)
    episodes = CHECKPOINT_EPISODES if args.episodes is None else args.episodes
    if episodes < 1:
        raise ValueError("--episodes must be >= 1")
    if args.checkpoint is None:
        return CheckpointPlan(shipped_checkpoint(), tasks, episodes, shipped=True)
    try:
        read_manifest(args.checkpoint)
    except CheckpointError as error:
        raise ValueError(f"--checkpoint {error}") from None
    return CheckpointPlan(Path(args.checkpoint), tasks, episodes, shipped=False)


def run_checkpoint_demo(plan: CheckpointPlan, out: Path, profile: Path,
                        seed: int = 0) -> dict[str, Any]:
    """Evaluate `plan.checkpoint` in closed loop into `out`, then write the summary PNG (with
    its run's training records), the rollout video and demo.json; returns the evaluation
    results. Raises DemoError, also when the shipped checkpoint is missing."""
    if not plan.checkpoint.is_dir():
        raise DemoError(f"no checkpoint at {plan.checkpoint}: make the one the project ships "
                        "with scripts/train_demo_checkpoint (~3 h on 2 CPU cores), or run "
                        "the whole loop from scratch with `vam demo --train`")
    started = time.monotonic()
    run = plan.checkpoint.parent
    training = run_guarded("checkpoint", lambda: read_training_record(run))
    records = run_guarded("checkpoint", lambda: read_metrics(run / METRICS_FILE))
    out.mkdir(parents=True, exist_ok=True)
    whose = "the checkpoint the project ships" if plan.shipped else "checkpoint"
    print(f"vam demo: {whose}, {plan.checkpoint}\n{describe_training(training)}\n"
          f"{len(plan.tasks)} task(s) {', '.join(plan.tasks)}, {plan.episodes} episode(s) "
          f"each; outputs in {out}")

    header(1, 2, "closed-loop evaluation over ROS 2 (vam_sim_node + vam_policy_node)")
    tick = time.monotonic()
    results = run_guarded("eval", lambda: run_closed_loop(
        plan.checkpoint, out / "eval", profile, plan.tasks, plan.episodes, seed))
    timings = {"eval_s": time.monotonic() - tick}

    header(2, 2, "summary")
    summary_png, video = write_outputs(out, results, records, {
        "checkpoint": str(plan.checkpoint), "shipped": plan.shipped, "training": training,
        "tasks": list(plan.tasks), "episodes_per_task": plan.episodes, "seed": seed},
        timings, started)
    overall = results["summary"][-1]
    first = seed + EVAL_SEED_OFFSET
    print(f"\nvam demo: average success {100 * overall['success_rate']:.0f}% over "
          f"{overall['episodes']} episodes (seeds {first}..{first + plan.episodes - 1} of "
          f"each task) in {timings['total_s']:.0f} s")
    print(f"  results     {out / 'eval' / 'results.md'} (.json)\n"
          f"  summary     {summary_png}\n  rollout     {video}\n"
          f"  checkpoint  {plan.checkpoint}")
    return results


def read_training_record(run: Path) -> dict[str, Any] | None:
    """`run/training.json`, or None when the run has none."""
    path = run / TRAINING_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def describe_training(record: dict[str, Any] | None) -> str:
    """How the checkpoint was trained, from its training.json: two indented lines."""
    if record is None:
        return f"  how it was trained is not recorded (no {TRAINING_RECORD} next to it)"
    dataset = record["dataset"]
    error = record["val_action_mae_rad"]
    decoders = record.get("decoders", 1)
    ensemble = (f", an ensemble of {decoders} decoders (stage 2 with loop.seed 0..{decoders - 1}"
                "; the first's validation)" if decoders > 1 else "")
    return (f"  trained by {record['script']} on {record['date']} (code {record['commit']}):\n"
            f"  `{record['train_command']}` on {dataset['episodes']} scripted demos "
            f"({record['demos_per_task']} a task recorded, {dataset['val_episodes']} held out)"
            f"{ensemble}, validation action error "
            + ("not measured" if error is None else f"{error:.3f} rad"))


def write_training_record(folder: Path, *, script: str, train_command: str, commit: str,
                          demos_per_task: int, steps: int, dataset: Path,
                          decoders: int = 1) -> dict[str, Any]:
    """Write `folder/training.json`, how the checkpoint in `folder/policy` was made: the
    script and its training command, the code's commit, the demos and steps asked for, the
    number of decoders, the dataset's size and the last validation of `folder/metrics.jsonl`
    (the first decoder's run). Returns what it wrote."""
    from vam_policy.data.dataset import load_dataset

    data = load_dataset(dataset)
    episodes = data.episodes
    validations = [r for r in read_metrics(folder / METRICS_FILE) if "val_action_mae_rad" in r]
    last = validations[-1] if validations else {}
    record = {
        "script": script, "train_command": train_command, "commit": commit,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "demos_per_task": demos_per_task, "steps": steps, "decoders": decoders,
        "dataset": {"episodes": len(episodes), "val_episodes": len(data.split("val")),
                    "control_steps": sum(e.length for e in episodes),
                    "episodes_per_instruction": dict(Counter(e.instruction for e in episodes))},
        "val_step": last.get("step"), "val_action_mae_rad": last.get("val_action_mae_rad"),
        "val_hold_still_mae_rad": last.get("val_hold_still_mae_rad"),
    }
    (folder / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    """Write training.json for scripts/train_demo_checkpoint."""
    parser = argparse.ArgumentParser(prog="python -m vam_policy.demo_checkpoint",
                                     description=main.__doc__)
    parser.add_argument("folder", type=Path,
                        help="the shipped folder, with policy/ and metrics.jsonl of the run")
    parser.add_argument("--dataset", type=Path, required=True, help="the run's dataset")
    parser.add_argument("--demos", type=int, required=True, help="demos recorded per task")
    parser.add_argument("--steps", type=int, required=True, help="training steps")
    parser.add_argument("--decoders", type=int, default=1,
                        help="decoders in the policy (stage-2 runs joined into an ensemble)")
    parser.add_argument("--script", required=True, help="the script run, with its arguments")
    parser.add_argument("--train-command", required=True,
                        help="its training commands (stage 0, then stage 2)")
    parser.add_argument("--commit", required=True, help="the code's git commit")
    args = parser.parse_args(argv)
    record = write_training_record(args.folder, script=args.script,
                                   train_command=args.train_command, commit=args.commit,
                                   demos_per_task=args.demos, steps=args.steps,
                                   dataset=args.dataset, decoders=args.decoders)
    print(f"{args.folder / TRAINING_RECORD}:\n{describe_training(record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
