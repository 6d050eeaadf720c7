"""How precisely the policy's inputs say where the named cube is: a linear probe per input.

    python benchmarks/probe_cube_position.py --train DATASET --test DATASET \\
        [--checkpoint models/sim_panda/policy] [--backbone tiny ...] [--size 128x128 ...] \\
        [--ridge 1,10] [--anchor 0]

On each sim lift episode's first observation (the arm still, nothing occluded), ridge
regression (one per instruction colour word) maps an input to the xy of the cube that the
instruction names, fitted on `--train` and scored on `--test` (layouts from the episode seeds;
colour-swapped copies from `vam dataset augment-colors` count as more layouts, their targets
the cube the renamed word now names). Inputs, for the checkpoint's backbone and each
`--backbone` put in its place (`tiny`: the random-weight preset), at the checkpoint's frame size
and at each `--size` (one camera's view, HxW: a finer view gives the same VAE and transformer
more latents and tokens): the backbone's features of the history tokens (what the instruction
readout reads), the VAE's history latents, and the model-ready pixels of the newest frame, the
yardstick; and, as the floor, each word's mean target. A decoder that reaches the cube to
within a few cm needs features that place it at least that well; the probe bounds what a
linear read-out gets. Prints a table and writes JSON under benchmarks/results/.

`--anchor N` (N > 0) probes the observation at episode step N instead, and its target is the
arm's grip site's xy offset from the named cube there (forward kinematics through the sim
`--profile`): what a descent needs to correct. On bags recorded with `--approach-offset-m`,
`--anchor 16` asks whether the inputs say how far off the cube the approach ended.

The committed results (`--size 128x128 --backbone tiny`): --train = the shipped checkpoint's
dataset (128 demos a task, see its training.json) through `vam dataset augment-colors`;
--test = `vam sim record --tasks lift_red,lift_green,lift_blue --episodes-per-task 12 --seed
1000` (the evaluation's layouts), `vam dataset build`, `vam dataset augment-colors`.
`approach_offset_probe.json` (`--anchor 16 --ridge 1,10,100 --name approach_offset_probe`):
--train = 128 demos a task recorded with `--approach-offset-m 0.04`, `vam dataset build`;
--test = the lifts of seeds 1000-1011 recorded likewise (as for `descent_correction.json`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from results_io import write_result
from sim_lifts import lift_episodes

from vam_policy.data.dataset import load_dataset
from vam_policy.machine import describe_machine
from vam_policy.model.checkpoint import load_checkpoint
from vam_policy.model.policy import VAMPolicy
from vam_policy.ros.sim_parameters import load_sim_settings
from vam_policy.sim.arm import SimArm
from vam_policy.train.config import SampleConfig
from vam_policy.train.samples import SampleSpec, episode_clip

INPUTS = ("features", "vae_latents", "pixels")


def observations(policy: VAMPolicy, dataset: Path, anchor: int,
                 arm: SimArm) -> dict[str, np.ndarray]:
    """Each input at step `anchor` of the dataset's lift episodes, with the target (cm: the
    named cube's xy at 0, else the grip site's xy offset from it) and the colour word."""
    data = load_dataset(dataset)
    config = policy.config
    spec = SampleSpec.from_policy(config, SampleConfig(), future=False)
    tokens = config.decoder.readout_tokens or (config.backbone.history_latent_frames
                                               * int(np.prod(config.decoder.video_grid[1:])))
    rows: dict[str, list[Any]] = {name: [] for name in (*INPUTS, "xy", "word")}
    for entry, episode, cube in lift_episodes(data, arm, anchor):
        if anchor:
            cube = arm.grip_position_at(episode.state[anchor][:7])[:2] - cube
        clip = episode_clip(episode, anchor, spec)
        with torch.no_grad():
            video = policy.preprocess_frames(clip[None])
            history = policy.backbone.encode_video(video)
            text = policy.embed_instructions([entry.instruction])
            features = policy.backbone.features(history, text, 1.0,
                                                generator=torch.Generator().manual_seed(0))
        rows["features"].append(features[0, :tokens].flatten().numpy())
        rows["vae_latents"].append(history[0].flatten().numpy())
        rows["pixels"].append(video[0, :, -1].flatten().numpy())
        rows["xy"].append(100 * cube)
        rows["word"].append(entry.instruction.split()[2])
    if not rows["xy"]:
        raise SystemExit(f"{dataset}: no sim lift episodes (sources like lift_red_0007) "
                         f"longer than {anchor} steps")
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


def mean_errors(train: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> np.ndarray:
    """|predicted - true| xy (cm) of every test episode when each colour word's training mean
    is the prediction: what knowing nothing of the layout gets."""
    errors = [np.abs(train["xy"][train["word"] == word].mean(0) - test["xy"][test["word"] == word])
              for word in sorted(set(train["word"])) if (test["word"] == word).any()]
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
    parser.add_argument("--anchor", type=int, default=0,
                        help="episode step probed; above 0 the target is the grip site's "
                        "offset from the named cube")
    parser.add_argument("--profile", type=Path, default=Path("config/sim_panda.yaml"),
                        help="the sim profile the episodes were recorded with")
    parser.add_argument("--name", default="cube_position_probe", help="results JSON name")
    args = parser.parse_args()
    if args.anchor < 0:
        parser.error(f"--anchor must be >= 0, got {args.anchor}")
    torch.set_num_threads(2)
    penalties = [float(value) for value in args.ridge.split(",")]
    results = {"machine": describe_machine(), "train": str(args.train), "test": str(args.test),
               "anchor": args.anchor,
               "target": "grip site's offset from the cube" if args.anchor else "cube",
               "rows": []}
    print("| backbone | frame | input | values | ridge | x error (cm) | y error (cm) "
          "| train / test |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    shipped = load_checkpoint(args.checkpoint).eval()
    results["checkpoint"] = str(args.checkpoint)
    cameras = shipped.config.cameras
    own = (shipped.config.backbone.height, shipped.config.backbone.width // cameras)
    probes = [(name, ridge) for name in INPUTS for ridge in penalties] + [("mean", 0.0)]
    with SimArm(load_sim_settings(args.profile).arm_config()) as arm:
        for backbone in ("checkpoint's", *args.backbone):
            source = shipped.config.backbone.source if backbone == "checkpoint's" else backbone
            for height, width in dict.fromkeys([own, *args.size]):
                policy = (shipped if (backbone, (height, width)) == ("checkpoint's", own) else
                          VAMPolicy.build(shipped.config.with_backbone(
                              source=source, height=height, width=width * cameras)).eval())
                frame = f"{height}x{width * cameras}"
                train, test = (observations(policy, args.train, args.anchor, arm),
                               observations(policy, args.test, args.anchor, arm))
                for name, ridge in probes:
                    error = (mean_errors(train, test) if name == "mean" else
                             ridge_errors(train, test, name, ridge)).mean(0)
                    row = {"backbone": backbone, "frame": frame, "input": name,
                           "values": int(train[name].shape[1]) if name in INPUTS else 0,
                           "ridge": ridge,
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
