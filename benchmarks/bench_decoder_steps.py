"""What fewer Euler steps cost the decoder in action error, against what they save in time.

    python benchmarks/bench_decoder_steps.py --dataset DATASET [--checkpoint DIR]
        [--cache-dir RUN/latent_cache] [--config idm:sim] [--samples N] [--repeats 50]

On validation samples of a `vam dataset build` dataset, read as stage-2 validation reads them
(`IdmStage`, evenly spread val rows, the latent cache), the checkpoint's decoder samples each
chunk from the same start noise at every step count; the action error (rad) is the mean
|predicted - expert| joint target, as `val_action_mae_rad`. Decoder time per chunk is the median
of batch-1 calls on one sample, step counts interleaved so load on the machine hits all alike.
Also reports the training's own validation metric on the same checkpoint and data (a check that
cache, statistics and checkpoint belong together). Prints a table and writes JSON under
benchmarks/results/. On a CPU only the time ratios mean much.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from results_io import write_result

from vam_policy.data.dataset import load_dataset
from vam_policy.machine import describe_machine
from vam_policy.model.checkpoint import load_checkpoint
from vam_policy.train.config import IdmTrainConfig, load_train_config
from vam_policy.train.distributed import init_distributed
from vam_policy.train.idm import IdmStage, needs_future
from vam_policy.train.latent_cache import LatentSource, LiveLatents
from vam_policy.train.loop import validation_batches
from vam_policy.train.prepare import open_latents
from vam_policy.train.samples import SampleSpec

ROOT = Path(__file__).resolve().parents[1]
STEPS = (10, 5, 3, 2, 1)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _shown(path: Path) -> str:
    """`path` relative to the repository when inside it, so results name no local folders."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def open_stage(checkpoint: Path, dataset: Path, config: IdmTrainConfig, cache_dir: Path | None,
               device: str, decoder: int = 0) -> IdmStage:
    """The checkpoint's policy (its decoder `decoder`) as stage-2 validation sees it: its
    latents (cached or live), rows and normalized inputs. The checkpoint's own normalization
    statistics are kept."""
    policy = load_checkpoint(checkpoint, device).member(decoder)
    data = load_dataset(dataset)
    future = needs_future(config, policy.config)
    if cache_dir is None:
        source: LatentSource = LiveLatents(
            data, SampleSpec.from_policy(policy.config, config.data, future), policy)
    else:
        source, _ = open_latents(policy, data, config.data, use_cache=True, cache_dir=cache_dir,
                                 dist=init_distributed(device), log=_log, future=future)
    return IdmStage(policy, source, data, config, embed_backbone=False)


@torch.no_grad()
def action_errors(stage: IdmStage, samples: int | None, batch: int,
                  seed: int) -> dict[str, Any]:
    """Per step count: mean |target - expert| (rad), each chunk started from one noise draw;
    its change from 10 steps with a standard error over val episodes (samples of one episode
    are alike; None with one episode); how far the targets land from the 10-step ones. Also
    holding still's error. `samples`: None for the whole val split."""
    policy, table = stage.policy, stage.source.table
    decoder = policy.decoder
    generator = torch.Generator(policy.device).manual_seed(seed)
    predicted: dict[int, list[np.ndarray]] = {steps: [] for steps in STEPS}
    batches = validation_batches(stage.val_rows, samples or len(stage.val_rows), batch)
    for chunk in batches:
        history, future, text, proprio, _ = stage.inputs(chunk)
        tau_v = torch.full((len(chunk),), stage.eval_tau_v, device=policy.device)
        features = policy.backbone.features(history, text, tau_v, future, generator)
        noise = torch.randn((len(chunk), decoder.config.horizon, decoder.config.action_dim),
                            device=policy.device, generator=generator)
        for steps in STEPS:
            sampled = decoder.sample(features, proprio, tau_v, steps=steps, noise=noise,
                                     text=text)
            predicted[steps].append(stage.predicted_targets(sampled, chunk))
    picked = np.concatenate(batches)
    truth = table.targets[picked]  # [N, H, J]
    chunks = {steps: np.concatenate(parts) for steps, parts in predicted.items()}
    error = {s: np.abs(chunks[s] - truth).mean(axis=(1, 2)) for s in STEPS}  # [N]
    episodes = table.episode[picked]
    rows = []
    for s in STEPS:
        change = error[s] - error[10]
        per_episode = [change[episodes == e].mean() for e in np.unique(episodes)]
        se = (float(np.std(per_episode, ddof=1) / np.sqrt(len(per_episode)))
              if len(per_episode) > 1 else None)
        rows.append({"steps": s, "action_mae_rad": float(error[s].mean()),
                     "mae_change_vs_10_rad": float(change.mean()), "mae_change_se_rad": se,
                     "target_shift_vs_10_rad": float(np.abs(chunks[s] - chunks[10]).mean())})
    return {"samples": len(picked), "episodes": len(np.unique(episodes)), "rows": rows,
            "hold_still_mae_rad": float(np.abs(truth - table.state[picked][:, None]).mean())}


@torch.no_grad()
def decoder_times(stage: IdmStage, repeats: int) -> dict[int, list[float]]:
    """Milliseconds per batch-1 chunk at each step count, on the first val sample's features;
    the step counts take turns so a change in load on the machine hits all of them."""
    policy = stage.policy
    row = stage.val_rows[:1]
    history, future, text, proprio, _ = stage.inputs(row)
    tau_v = torch.full((1,), stage.eval_tau_v, device=policy.device)
    features = policy.backbone.features(history, text, tau_v, future)
    times: dict[int, list[float]] = {steps: [] for steps in STEPS}
    for round_ in range(repeats + 1):  # round 0 warms up
        for steps in STEPS:
            if policy.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            policy.decoder.sample(features, proprio, tau_v, steps=steps, text=text)
            if policy.device.type == "cuda":
                torch.cuda.synchronize()
            if round_:
                times[steps].append((time.perf_counter() - start) * 1e3)
    return times


def run(args: argparse.Namespace) -> dict[str, Any]:
    config = load_train_config(args.config, IdmTrainConfig)
    stage = open_stage(args.checkpoint, args.dataset, config, args.cache_dir, args.device,
                       args.decoder)
    if len(stage.val_rows) == 0:
        raise SystemExit(f"{args.dataset}: no validation samples (no val split)")
    errors = action_errors(stage, args.samples, config.loop.batch_size, config.loop.seed)
    times = decoder_times(stage, args.repeats)
    reference = statistics.median(times[10])
    rows = [{**row, "median_ms_per_chunk": statistics.median(times[row["steps"]]),
             "min_ms": min(times[row["steps"]]),
             "time_vs_10_steps": statistics.median(times[row["steps"]]) / reference}
            for row in errors["rows"]]
    return {
        "benchmark": "decoder flow steps",
        "checkpoint": _shown(args.checkpoint), "decoder": args.decoder,
        "dataset": _shown(args.dataset),
        "config": args.config, "device": args.device,
        "machine": {**describe_machine(), "load_average": os.getloadavg()},
        "torch_threads": torch.get_num_threads(),
        "val_samples": errors["samples"], "val_samples_in_split": len(stage.val_rows),
        "val_episodes": errors["episodes"],
        "noise_seed": config.loop.seed, "timing": f"batch 1, median of {args.repeats}",
        "rows": rows, "hold_still_mae_rad": errors["hold_still_mae_rad"],
        "training_validation": stage.evaluate(),
        "note": "action_mae_rad: mean |target - expert| over joints (the gripper too) and "
                "chunk steps, as val_action_mae_rad; mae_change_vs_10_rad: its change from 10 "
                "steps, the same noise, with a standard error over val episodes; "
                "target_shift_vs_10_rad: mean |target - the 10-step target|.",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path,
                        default=ROOT / "models" / "sim_panda" / "policy")
    parser.add_argument("--decoder", type=int, default=0,
                        help="which decoder of an ensemble checkpoint")
    parser.add_argument("--dataset", type=Path, required=True,
                        help="a `vam dataset build` dataset with a val split")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="latent cache to read (e.g. the training run's OUT/latent_cache); "
                        "files stale for this checkpoint are re-encoded. Default: encode live")
    parser.add_argument("--config", default="idm:sim",
                        help="the idm train config of the checkpoint: sample layout, "
                        "validation batch and seed")
    parser.add_argument("--samples", type=int, default=None,
                        help="val samples, evenly spread over the split (default: all)")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per step count")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1, as bench_inference.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args)
    print(f"{result['val_samples']} val samples ({result['val_episodes']} episodes), "
          f"{result['torch_threads']} thread(s); holding still: "
          f"{result['hold_still_mae_rad']:.4f} rad")
    print(f"{'steps':>5} {'MAE rad':>8} {'change vs 10':>17} {'shift vs 10':>11} "
          f"{'ms/chunk':>9} {'time/10':>8}")
    for row in result["rows"]:
        change = f"{row['mae_change_vs_10_rad']:+.4f}"
        if row["mae_change_se_rad"] is not None:
            change += f" ± {row['mae_change_se_rad']:.4f}"
        print(f"{row['steps']:>5} {row['action_mae_rad']:>8.4f} {change:>17} "
              f"{row['target_shift_vs_10_rad']:>11.4f} {row['median_ms_per_chunk']:>9.2f} "
              f"{row['time_vs_10_steps']:>8.2f}")
    print("training's validation on this checkpoint: " + ", ".join(
        f"{k} {v:.4f}" for k, v in result["training_validation"].items()))
    write_result(f"decoder_steps_{torch.device(args.device).type}", result)


if __name__ == "__main__":
    main()
