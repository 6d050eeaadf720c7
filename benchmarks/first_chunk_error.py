"""How precisely a checkpoint's chunk reaches the named cube, open loop, on new layouts.

    python benchmarks/first_chunk_error.py --test DATASET [--checkpoint models/sim_panda/policy]
        [--anchor 0] [--step 15] [--name first_chunk_error]

On each sim lift episode of `--test` (a `vam dataset build` of `vam sim record` bags on seeds
the checkpoint was not trained on), the policy predicts its deterministic chunk (`noise_scale`
0) from the episode's observation at step `--anchor` (0: its first chunk), and so does its
instruction readout alone (the mean chunk the flow starts from). Forward kinematics of the
simulated arm puts the grip site of the chunk's step `--step` beside the grip site of the
expert's commanded target at that step of the episode. Defaults: the first chunk at 1.6 s (step
15 at 0.1 s a step), the end of the scripted expert's approach above the cube. `--anchor 16
--step 10` on bags recorded with `--approach-offset-m`: from where such an approach ended off
the cube, to where the fingers close on it (the descent's correction).

Reported: the mean absolute error along x (the cubes' rows) and y (across the table), and the
slope of each error on two offsets: the named cube's from the table's centre (0 places every
cube alike, -1 always reaches the centre, -0.5 reaches half-way from the centre to the cube:
regression to the mean), and the arm's grip site's from above the cube at the anchor (0
corrects wherever the arm is, +1 keeps the arm's offset all the way). Unlike closed-loop
success, which flips many layouts both ways between two similar checkpoints, this is a smooth
measure of the decoder's aim. Prints a table and writes JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
from vam_policy.sim.tasks import ROW_X, START_Y_RANGE
from vam_policy.train.config import SampleConfig
from vam_policy.train.samples import SampleSpec, episode_clip

CENTRE_XY = (ROW_X[1], sum(START_Y_RANGE) / 2)  # the middle row, the middle of the y range
CHUNKS = ("chunk", "readout")


@torch.no_grad()
def chunks(policy: VAMPolicy, clip: np.ndarray, state: np.ndarray,
           instruction: str) -> dict[str, np.ndarray]:
    """The policy's deterministic chunk and its readout's mean chunk (absolute targets [H, J])
    from one observation."""
    chunk = policy.predict(clip, state, instruction, seed=0, noise_scale=0.0)
    history = policy.backbone.encode_video(policy.preprocess_frames(clip[None]))
    text = policy.embed_instructions([instruction])
    features = policy.backbone.features(history, text, 1.0,
                                        generator=torch.Generator().manual_seed(0))
    batch_state = state[None].astype(np.float32)
    proprio = torch.from_numpy(policy.stats.state.normalize(batch_state)).to(policy.device)
    mean = policy.decoder.condition(features, text, proprio).mean
    if mean is None:
        raise SystemExit("the checkpoint's decoder has no instruction readout")
    coded = policy.stats.action.unnormalize(mean.float().cpu().numpy())
    return {"chunk": chunk, "readout": policy.actions.decode(coded, batch_state)[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--test", type=Path, required=True,
                        help="dataset of sim lift episodes on new layouts")
    parser.add_argument("--checkpoint", type=Path, default=Path("models/sim_panda/policy"))
    parser.add_argument("--decoder", type=int, default=0,
                        help="which decoder of an ensemble checkpoint (its readout is one's)")
    parser.add_argument("--profile", type=Path, default=Path("config/sim_panda.yaml"),
                        help="the sim profile the episodes were recorded with")
    parser.add_argument("--anchor", type=int, default=0,
                        help="episode step whose observation the chunk is predicted from")
    parser.add_argument("--step", type=int, default=15,
                        help="chunk step compared (episode step anchor + step)")
    parser.add_argument("--name", default="first_chunk_error", help="results JSON name")
    args = parser.parse_args()
    torch.set_num_threads(2)
    policy = load_checkpoint(args.checkpoint).eval().member(args.decoder)
    if not 0 <= args.step < policy.config.horizon:
        raise SystemExit(f"--step must be in [0, {policy.config.horizon}), got {args.step}")
    data = load_dataset(args.test)
    spec = SampleSpec.from_policy(policy.config, SampleConfig(), future=False)
    errors: dict[str, list[np.ndarray]] = {name: [] for name in CHUNKS}
    offsets: dict[str, list[np.ndarray]] = {"cube": [], "arm": []}
    with SimArm(load_sim_settings(args.profile).arm_config()) as arm:
        for entry, episode, cube in lift_episodes(data, arm, args.anchor + args.step):
            predicted = chunks(policy, episode_clip(episode, args.anchor, spec),
                               episode.state[args.anchor], entry.instruction)
            expert = arm.grip_position_at(episode.action[args.anchor + args.step][:7])[:2]
            for name, chunk in predicted.items():
                errors[name].append(100 * (arm.grip_position_at(chunk[args.step][:7])[:2]
                                           - expert))
            offsets["cube"].append(100 * (cube - np.array(CENTRE_XY)))
            offsets["arm"].append(100 * (arm.grip_position_at(
                episode.state[args.anchor][:7])[:2] - cube))
    if not offsets["cube"]:
        raise SystemExit(f"{args.test}: no sim lift episodes (sources like lift_red_1007) "
                         f"as long as step {args.anchor + args.step}")
    offset = {name: np.array(values) for name, values in offsets.items()}  # each [N, 2] cm
    count = len(offset["cube"])
    results = {"machine": describe_machine(), "checkpoint": str(args.checkpoint),
               "decoder": args.decoder,
               "test": str(args.test), "anchor": args.anchor, "step": args.step,
               "episodes": count, "rows": []}
    print("| chunk | x error (cm) | y error (cm) | x / y slope on the cube's offset | "
          "x / y slope on the arm's offset | episodes |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in CHUNKS:
        error = np.array(errors[name])  # [N, 2] cm
        row = {"chunk": name, "x_error_cm": float(np.abs(error[:, 0]).mean()),
               "y_error_cm": float(np.abs(error[:, 1]).mean())}
        for on, values in offset.items():
            for axis, label in enumerate("xy"):
                row[f"{label}_slope_{on}"] = float(np.polyfit(values[:, axis], error[:, axis],
                                                              1)[0])
        results["rows"].append(row)
        print(f"| {name} | {row['x_error_cm']:.2f} | {row['y_error_cm']:.2f} | "
              f"{row['x_slope_cube']:+.2f} / {row['y_slope_cube']:+.2f} | "
              f"{row['x_slope_arm']:+.2f} / {row['y_slope_arm']:+.2f} | {count} |")
    write_result(args.name, results)


if __name__ == "__main__":
    main()
