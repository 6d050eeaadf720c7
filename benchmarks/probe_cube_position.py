"""How precisely the policy's inputs say where the named cube is: a linear probe per input.

    python benchmarks/probe_cube_position.py --train DATASET --test DATASET \\
        [--checkpoint models/sim_panda/policy] [--backbone tiny ...] [--size 128x128 ...] \\
        [--ridge 1,10]

On each sim lift episode's first observation (the arm still, nothing occluded), ridge
regression (one per instruction colour word) maps an input to the xy of the cube that the
instruction names, fitted on `--train` and scored on `--test` (layouts from the episode seeds;
colour-swapped copies from `vam dataset augment-colors` count as more layouts, their targets
the cube the renamed word now names). Inputs, for the checkpoint's backbone and each
`--backbone` put in its place (`tiny`: the random-weight preset), at the checkpoint's frame size
and at each `--size` (one camera's view, HxW: a finer view gives the same VAE and transformer
more latents and tokens): the backbone's features of the history tokens (what the instruction
readout reads), the VAE's history latents, and the model-ready pixels of the newest frame, the
yardstick. A decoder that reaches the cube to
within a few cm needs features that place it at least that well; the probe bounds what a
linear read-out gets. Prints a table and writes JSON under benchmarks/results/.

The committed results (`--size 128x128 --backbone tiny`): --train = the shipped checkpoint's
dataset (128 demos a task, see its training.json) through `vam dataset augment-colors`;
--test = `vam sim record --tasks lift_red,lift_green,lift_blue --episodes-per-task 12 --seed
1000` (the evaluation's layouts), `vam dataset build`, `vam dataset augment-colors`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from results_io import write_result

from vam_policy.data.dataset import load_dataset
from vam_policy.machine import describe_machine
from vam_policy.model.checkpoint import load_checkpoint
from vam_policy.model.policy import VAMPolicy
from vam_policy.sim.tasks import LiftTask, parse_episode_name
from vam_policy.train.config import SampleConfig
from vam_policy.train.samples import SampleSpec, episode_clip

INPUTS = ("features", "vae_latents", "pixels")


def first_observations(policy: VAMPolicy, dataset: Path) -> dict[str, np.ndarray]:
    """Each input at t = 0 of the dataset's lift episodes, with the named cube's xy (cm) and
    the instruction's colour word."""
    data = load_dataset(dataset)
    config = policy.config
    spec = SampleSpec.from_policy(config, SampleConfig(), future=False)
    tokens = config.decoder.readout_tokens or (config.backbone.history_latent_frames
                                               * int(np.prod(config.decoder.video_grid[1:])))
    rows: dict[str, list[Any]] = {name: [] for name in (*INPUTS, "xy", "word")}
    for index, episode in enumerate(data.episodes):
        recorded = parse_episode_name(episode.source)
        if recorded is None or not isinstance(recorded[0], LiftTask):
            continue
        task, seed = recorded
        layout = task.sample_layout(task.episode_rng(seed))
        clip = episode_clip(data.load_episode(index), 0, spec)
        with torch.no_grad():
            video = policy.preprocess_frames(clip[None])
            history = policy.backbone.encode_video(video)
            text = policy.embed_instructions([episode.instruction])
            features = policy.backbone.features(history, text, 1.0,
                                                generator=torch.Generator().manual_seed(0))
        rows["features"].append(features[0, :tokens].flatten().numpy())
        rows["vae_latents"].append(history[0].flatten().numpy())
        rows["pixels"].append(video[0, :, -1].flatten().numpy())
        cube = layout[task.cube]
        rows["xy"].append([100 * cube.x, 100 * cube.y])
        rows["word"].append(episode.instruction.split()[2])
    if not rows["xy"]:
        raise SystemExit(f"{dataset}: no sim lift episodes (sources like lift_red_0007)")
    return {name: np.asarray(values) for name, values in rows.items()}


def view_size(text: str) -> tuple[int, int]:
    """argparse type of --size: one camera's view as HxW pixels, each a multiple of 16."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 128x128, got {text!r}") from None
    if min(height, width) < 16 or height % 16 or width % 16:
        raise argparse.ArgumentTypeError(f"expected multiples of 16 pixels, got {text!r}")
    return height, width


def ridge_errors(train: dict[str, np.ndarray], test: dict[str, np.ndarray], name: str,
                 ridge: float) -> np.ndarray:
    """|predicted - true| xy (cm) of every test episode, one ridge fit per colour word (dual
    form: fewer episodes than input values). The penalty is `ridge` per 100 input values."""
    errors = []
    for word in sorted(set(train["word"])):
        a, b = train[name][train["word"] == word], test[name][test["word"] == word]
        if not len(b):
            continue
        y = train["xy"][train["word"] == word]
        mean, std = a.mean(0), a.std(0) + 1e-6
        a, b = (a - mean) / std, (b - mean) / std
        alpha = np.linalg.solve(a @ a.T + ridge * a.shape[1] / 100 * np.eye(len(a)),
                                y - y.mean(0))
        errors.append(np.abs(b @ (a.T @ alpha) + y.mean(0) - test["xy"][test["word"] == word]))
    return np.concatenate(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, required=True, help="dataset the probes fit on")
    parser.add_argument("--test", type=Path, required=True, help="dataset of new layouts")
    parser.add_argument("--checkpoint", type=Path, default=Path("models/sim_panda/policy"),
                        help="policy checkpoint whose inputs are probed")
    parser.add_argument("--backbone", action="append", default=[],
                        help="also probe the checkpoint's policy on this backbone (a preset "
                        "such as tiny, or a folder; repeatable)")
    parser.add_argument("--size", action="append", default=[], type=view_size,
                        metavar="HxW", help="also probe at this frame size of one camera's "
                        "view, e.g. 128x128 (repeatable)")
    parser.add_argument("--ridge", default="1,10", help="ridge penalties to try")
    parser.add_argument("--name", default="cube_position_probe", help="results JSON name")
    args = parser.parse_args()
    torch.set_num_threads(2)
    penalties = [float(value) for value in args.ridge.split(",")]
    results = {"machine": describe_machine(), "train": str(args.train), "test": str(args.test),
               "rows": []}
    print("| backbone | frame | input | values | ridge | x error (cm) | y error (cm) "
          "| train / test |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    shipped = load_checkpoint(args.checkpoint).eval()
    results["checkpoint"] = str(args.checkpoint)
    cameras = shipped.config.cameras
    own = (shipped.config.backbone.height, shipped.config.backbone.width // cameras)
    for backbone in ("checkpoint's", *args.backbone):
        source = shipped.config.backbone.source if backbone == "checkpoint's" else backbone
        for height, width in dict.fromkeys([own, *args.size]):
            policy = (shipped if (backbone, (height, width)) == ("checkpoint's", own) else
                      VAMPolicy.build(shipped.config.with_backbone(
                          source=source, height=height, width=width * cameras)).eval())
            frame = f"{height}x{width * cameras}"
            train, test = (first_observations(policy, args.train),
                           first_observations(policy, args.test))
            for name in INPUTS:
                for ridge in penalties:
                    error = ridge_errors(train, test, name, ridge).mean(0)
                    row = {"backbone": backbone, "frame": frame, "input": name,
                           "values": int(train[name].shape[1]), "ridge": ridge,
                           "x_error_cm": float(error[0]), "y_error_cm": float(error[1]),
                           "train_episodes": len(train["xy"]),
                           "test_episodes": len(test["xy"])}
                    results["rows"].append(row)
                    print(f"| {backbone} | {frame} | {name} | {row['values']} | {ridge:g} | "
                          f"{error[0]:.2f} | {error[1]:.2f} | {len(train['xy'])} / "
                          f"{len(test['xy'])} |", flush=True)
    write_result(args.name, results)


if __name__ == "__main__":
    main()
