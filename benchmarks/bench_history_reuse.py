"""History latents reused between calls: encode the whole window each call, or only new frames.

    python benchmarks/bench_history_reuse.py [--checkpoint models/sim_panda/policy]
        [--episodes 2] [--repeats 30] [--threads 1]

`predict` encodes its `history_frames` = 1 + 4m frames with the Wan VAE on every call, each
window from its own first frame, as training encoded every history clip. The VAE is causal:
`AutoencoderKLWan._encode` empties its feature cache (`clear_cache`), encodes the first frame
alone (causal convolutions zero-padded in time, the temporal downsamplers pass it through) and
then groups of 4 frames, each causal convolution taking its last input frames from the cache
that the group before filled. Streaming keeps that cache between calls and encodes only the 4
frames the window advanced by (calls every 4 frames at the policy fps); the history is the
stream's newest m + 1 latents. A stream begun at the episode's first frame is the window's own
computation on the first call, bit for bit; from the second call on, the window's oldest
latent is one frame encoded alone, the stream's a group of 4 encoded after everything before
it, and every later latent sees frames back to the episode start instead of the window start.
"stream, fresh first latent" encodes the window's first frame alone (as the window does) and
streams the rest: it isolates what the longer causal context changes, but for 5 frames it
encodes as many frames per call as the window.

On scripted-expert episodes of the simulator (frames at the policy fps, as the node samples
them; one call every 4 frames once the window is full), per call: (a) VAE time, whole window
against the 4 new frames with a warm cache, and amortized over an episode (its first call
encodes a whole window); (b) relative error |z_stream - z_window| / |z_window| of each history
latent; (c) how far the action chunk moves, with the same noise seed (arm joints in rad, the
gripper opening separately). Yardstick: how far the chunk moves for another noise seed with the
window's own latents. The node predicts as soon as a newer frame arrives, not every 4 frames:
streaming would also need calls on that grid. The committed results used the checkpoint
shipped before stage 0, whose VAE was the tiny preset's (random weights, latent statistics
calibrated on the robot's frames); a trained VAE (stage 0, Wan 2.1's) may drift less.
Prints tables and writes JSON under benchmarks/results/. On a CPU only the time ratios mean
much.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch
from results_io import write_result

from vam_policy.machine import describe_machine
from vam_policy.model.backbone import SIGMA_DATA, VideoBackbone
from vam_policy.model.backbone_config import LATENT_CHANNELS, VAE_TEMPORAL_FACTOR
from vam_policy.model.checkpoint import load_checkpoint, read_manifest
from vam_policy.model.policy import VAMPolicy
from vam_policy.sim.arm import SimArm
from vam_policy.sim.experts import make_expert
from vam_policy.sim.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
SETTLE_S = 0.3  # as `run_expert_episode`
NOISE_SEED = 0
VARIANTS = ("stream", "stream, fresh first latent")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class SimEpisode:
    """One scripted-expert episode on the policy's frame grid."""

    task: str
    seed: int
    instruction: str
    frames: np.ndarray
    """[K, H, W, 3] uint8: for each instant k / fps the newest frame not later (the node's rule)."""
    state: np.ndarray
    """[K, J] the arm joints, then the gripper opening, at the same observations."""


def record_episode(task: str, seed: int, fps: float) -> SimEpisode:
    """Runs the task's scripted expert to the end of its plan and samples it at `fps`."""
    with SimArm() as arm:
        observation = arm.reset(task, seed)
        expert = make_expert(arm)
        observations = [observation]
        while observation.time < expert.duration_s + SETTLE_S and not arm.truncated:
            observation = arm.apply(expert.act(observation))
            observations.append(observation)
        instruction = arm.task.instruction
    times = np.array([o.time for o in observations])
    grid = np.arange(int(times[-1] * fps + 1e-6) + 1) / fps
    picked = np.searchsorted(times, grid + 1e-9, side="right") - 1
    return SimEpisode(
        task, seed, instruction,
        frames=np.stack([observations[i].rgb for i in picked]),
        state=np.stack([np.append(observations[i].joint_positions,
                                  observations[i].gripper_opening) for i in picked]),
    )


class StreamingEncoder:
    """The VAE encoder run on a stream of frames, its causal feature cache kept between pushes.

    `AutoencoderKLWan._encode` step for step (the first frame alone, then groups of 4, the
    posterior mean), except that the cache is emptied only by `reset`; then `encode_video`'s
    normalization.
    """

    def __init__(self, backbone: VideoBackbone) -> None:
        self._vae = backbone.vae
        view = (1, LATENT_CHANNELS, 1, 1, 1)
        self._mean = torch.tensor(self._vae.config.latents_mean).view(view)
        self._std = torch.tensor(self._vae.config.latents_std).view(view)
        self._cache: list[Any] = []
        self._started = False
        self.reset()

    def reset(self) -> None:
        """Start a new stream: an empty cache, as `clear_cache` leaves it."""
        self._cache = [None] * self._vae._cached_conv_counts["encoder"]
        self._started = False

    @torch.no_grad()
    def push(self, video: torch.Tensor) -> torch.Tensor:
        """The frames `[B, 3, t, H, W]` after the stream's last -> latents `[B, 16, t', h, w]`.

        A fresh stream takes 1 + 4k frames (t' = 1 + k); a started one 4k frames (t' = k).
        """
        frames, first = video.shape[2], 0 if self._started else 1
        if frames == 0 or (frames - first) % VAE_TEMPORAL_FACTOR:
            raise ValueError(f"a {'started' if self._started else 'fresh'} stream takes "
                             f"{first} + 4k frames (k >= {1 - first}), got {frames}")
        bounds = sorted({0, *range(first, frames + 1, VAE_TEMPORAL_FACTOR)})
        video = video.to(self._vae.dtype)
        outs = [self._vae.encoder(video[:, :, start:end], feat_cache=self._cache, feat_idx=[0])
                for start, end in pairwise(bounds)]
        self._started = True
        moments = self._vae.quant_conv(torch.cat(outs, dim=2))
        raw = moments[:, :LATENT_CHANNELS].float()  # the posterior mean: `latent_dist.mode()`
        return (raw - self._mean.to(raw.device)) / self._std.to(raw.device) * SIGMA_DATA


def chunk_from_latents(policy: VAMPolicy, history: torch.Tensor, state: np.ndarray,
                       instruction: str, seed: int) -> np.ndarray:
    """`policy.predict`'s steps after the VAE: absolute targets `[H, J]` from history latents."""
    generator = torch.Generator(policy.device).manual_seed(seed)
    return policy.chunk_from_history(history, state[None], [instruction],
                                     generator=generator)[0]


def _relative_errors(latents: torch.Tensor, reference: torch.Tensor) -> list[float]:
    """|latents - reference| / |reference| of each latent frame (L2 over channels and pixels)."""
    diff = (latents - reference).transpose(1, 2).flatten(2).norm(dim=2)  # [B, T']
    return (diff / reference.transpose(1, 2).flatten(2).norm(dim=2)).mean(0).tolist()


def _shift(chunk: np.ndarray, reference: np.ndarray, arm: list[int],
           gripper: list[int]) -> dict[str, float]:
    diff = np.abs(chunk - reference)  # [H, J]
    return {"arm_max_rad": float(diff[:, arm].max()), "arm_mean_rad": float(diff[:, arm].mean()),
            "gripper_max": float(diff[:, gripper].max()) if gripper else 0.0}


@torch.no_grad()
def compare(policy: VAMPolicy, episodes: list[SimEpisode]) -> dict[str, Any]:
    """Per call of every episode: window latents against streamed ones, and their chunks."""
    names = list(policy.config.joint_names)
    arm = [names.index(name) for name in SimArm.joint_names]
    gripper = [i for i in range(len(names)) if i not in arm]
    span = policy.config.history_frames - 1  # 4m
    backbone = policy.backbone
    stream = StreamingEncoder(backbone)
    calls: list[dict[str, Any]] = []
    predict_mirror_diff = 0.0
    for e, episode in enumerate(episodes):
        stream.reset()
        streamed: torch.Tensor | None = None
        for end in range(span, len(episode.frames), VAE_TEMPORAL_FACTOR):
            window = episode.frames[end - span:end + 1]
            state = episode.state[end]
            video = policy.preprocess_frames(window[None])  # [1, 3, 1 + 4m, h, w]
            reference = backbone.encode_video(video)  # [1, 16, m + 1, h, w]
            new = stream.push(video if streamed is None else video[:, :, -VAE_TEMPORAL_FACTOR:])
            streamed = new if streamed is None else torch.cat([streamed, new], dim=2)
            streamed = streamed[:, :, -reference.shape[2]:]
            variants = {
                "stream": streamed,
                "stream, fresh first latent": torch.cat(
                    [backbone.encode_video(video[:, :, :1]), streamed[:, :, 1:]], dim=2),
            }
            base = chunk_from_latents(policy, reference, state, episode.instruction, NOISE_SEED)
            if end == span:  # the first call: check the mirror of predict() once an episode
                predicted = policy.predict(window, state, episode.instruction, seed=NOISE_SEED)
                predict_mirror_diff = max(predict_mirror_diff,
                                          float(np.abs(predicted - base).max()))
            other_seed = chunk_from_latents(policy, reference, state, episode.instruction,
                                            NOISE_SEED + 1)
            call: dict[str, Any] = {
                "episode": e, "end_frame": end, "first": end == span,
                "other_noise_seed": _shift(other_seed, base, arm, gripper),
            }
            for name, latents in variants.items():
                chunk = chunk_from_latents(policy, latents, state, episode.instruction,
                                           NOISE_SEED)
                call[name] = {
                    "latent_max_abs_diff": float((latents - reference).abs().max()),
                    "latent_rel_err": _relative_errors(latents, reference),
                    **_shift(chunk, base, arm, gripper),
                }
            calls.append(call)
    return {"calls": calls, "predict_mirror_max_abs_diff": predict_mirror_diff}


def summarize(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """Each variant over the calls after the first of each episode (the first ones are listed
    apart: the stream starts with the window itself), and the other-seed yardstick."""
    firsts = [c for c in calls if c["first"]]
    later = [c for c in calls if not c["first"]]
    summary: dict[str, Any] = {"calls": len(calls), "later_calls": len(later)}
    for name in (*VARIANTS, "other_noise_seed"):
        rows = [c[name] for c in later]
        out = {"arm_max_rad": max(r["arm_max_rad"] for r in rows),
               "arm_mean_rad": statistics.fmean(r["arm_mean_rad"] for r in rows),
               "gripper_max": max(r["gripper_max"] for r in rows)}
        if name in VARIANTS:
            errors = np.array([r["latent_rel_err"] for r in rows])  # [calls, T']
            out = {"latent_rel_err_mean": errors.mean(0).tolist(),
                   "latent_rel_err_max": errors.max(0).tolist(), **out,
                   "first_call_latent_max_abs_diff": max(c[name]["latent_max_abs_diff"]
                                                         for c in firsts)}
        summary[name] = out
    return summary


@torch.no_grad()
def encode_times(policy: VAMPolicy, episode: SimEpisode, repeats: int) -> dict[str, list[float]]:
    """Milliseconds per call on one window from the middle of `episode`: the whole window, the
    4 new frames with a warm cache, the first frame alone plus those 4, and the rest of a call
    (backbone prefix + decoder) for scale. The rows take turns, so load hits all alike."""
    span = policy.config.history_frames - 1
    end = span + (len(episode.frames) - 1 - span) // (2 * VAE_TEMPORAL_FACTOR) * VAE_TEMPORAL_FACTOR
    video = policy.preprocess_frames(episode.frames[end - span:end + 1][None])
    new = video[:, :, -VAE_TEMPORAL_FACTOR:]
    backbone = policy.backbone
    history = backbone.encode_video(video)
    stream = StreamingEncoder(backbone)
    stream.push(video)
    rows = {
        "window": lambda: backbone.encode_video(video),
        "stream": lambda: stream.push(new),
        "stream, fresh first latent": lambda: (backbone.encode_video(video[:, :, :1]),
                                               stream.push(new)),
        "rest of the call": lambda: chunk_from_latents(
            policy, history, episode.state[end], episode.instruction, NOISE_SEED),
    }
    times: dict[str, list[float]] = {name: [] for name in rows}
    for round_ in range(repeats + 1):  # round 0 warms up
        for name, fn in rows.items():
            start = time.perf_counter()
            fn()
            if round_:
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def run(args: argparse.Namespace) -> dict[str, Any]:
    policy = load_checkpoint(args.checkpoint, "cpu").eval()
    config = policy.config
    if tuple(config.joint_names[:len(SimArm.joint_names)]) != SimArm.joint_names:
        raise SystemExit(f"{args.checkpoint}: joints {list(config.joint_names)} are not the "
                         f"sim arm's {list(SimArm.joint_names)} + gripper")
    tasks = list(TASKS)
    episodes = []
    for i in range(args.episodes):
        _log(f"recording {tasks[i % len(tasks)]} seed {i}")
        episodes.append(record_episode(tasks[i % len(tasks)], i, config.fps))
    _log("comparing latents and chunks")
    compared = compare(policy, episodes)
    summary = summarize(compared["calls"])
    _log("timing")
    times = encode_times(policy, episodes[0], args.repeats)
    median = {name: statistics.median(t) for name, t in times.items()}
    calls_per_episode = len(compared["calls"]) / len(episodes)
    # The stream's first call of an episode encodes a whole window (the same computation).
    amortized = {
        "window": median["window"],
        "stream": (median["window"] + (calls_per_episode - 1) * median["stream"])
        / calls_per_episode,
        "stream, fresh first latent": (median["window"] + (calls_per_episode - 1)
                                       * median["stream, fresh first latent"])
        / calls_per_episode,
    }
    timing = [{"encoding": name, "median_ms": median[name], "min_ms": min(times[name]),
               "amortized_ms_per_call": amortized.get(name),
               "vs_window": median[name] / median["window"]} for name in times]
    checkpoint = args.checkpoint.resolve()
    return {
        "benchmark": "history latent reuse",
        "checkpoint": str(checkpoint.relative_to(ROOT)) if checkpoint.is_relative_to(ROOT)
        else str(checkpoint),
        "backbone": read_manifest(args.checkpoint)["policy"]["backbone"]["source"],
        "device": "cpu",
        "machine": {**describe_machine(), "load_average": os.getloadavg()},
        "torch_threads": torch.get_num_threads(),
        "input": {"history_frames": config.history_frames, "fps": config.fps,
                  "height": config.backbone.height, "width": config.backbone.width,
                  "call_every_s": VAE_TEMPORAL_FACTOR / config.fps, "horizon": config.horizon},
        "episodes": [{"task": e.task, "seed": e.seed, "policy_frames": len(e.frames)}
                     for e in episodes],
        "noise_seed": NOISE_SEED, "timing": f"batch 1, median of {args.repeats}",
        "timing_rows": timing, "summary": summary,
        "predict_mirror_max_abs_diff": compared["predict_mirror_max_abs_diff"],
        "calls": compared["calls"],
        "note": "latent_rel_err: |z - z_window| / |z_window| per history latent, oldest first; "
                "arm_*_rad: |target - window's target| over arm joints and chunk steps, same "
                "noise seed; gripper_max in opening units (0 closed, 1 open). Summaries cover "
                "the calls after each episode's first; other_noise_seed: the window's latents "
                "with noise seed 1 instead of 0. predict_mirror_max_abs_diff: predict() against "
                "this script's chunk from the window's latents (0: the same computation).",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path,
                        default=ROOT / "models" / "sim_panda" / "policy")
    parser.add_argument("--episodes", type=int, default=2,
                        help="scripted-expert episodes, tasks in turn, seed = episode index")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per row")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1, as bench_inference.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args)
    summary = result["summary"]
    print(f"{summary['calls']} calls in {len(result['episodes'])} episodes, every "
          f"{result['input']['call_every_s']:g} s; {result['torch_threads']} thread(s)")
    print(f"{'VAE encoding per call':<32} {'median ms':>10} {'amortized':>10} {'/window':>8}")
    for row in result["timing_rows"]:
        amortized = row["amortized_ms_per_call"]
        print(f"{row['encoding']:<32} {row['median_ms']:>10.2f} "
              f"{'' if amortized is None else f'{amortized:.2f}':>10} {row['vs_window']:>8.2f}")
    print(f"\nagainst the window's encoding, {summary['later_calls']} calls after each "
          "episode's first (first calls: max |dz| "
          + ", ".join(f"{summary[v]['first_call_latent_max_abs_diff']:.1e}" for v in VARIANTS)
          + ")")
    print("latent relative error per history latent, oldest first; chunk shift, same noise seed")
    print(f"{'variant':<28} {'latent rel err mean':>20} {'max':>14} "
          f"{'arm mean rad':>13} {'arm max rad':>12} {'gripper max':>12}")
    for name in (*VARIANTS, "other_noise_seed"):
        row = summary[name]
        mean = "/".join(f"{x:.3f}" for x in row.get("latent_rel_err_mean", []))
        peak = "/".join(f"{x:.3f}" for x in row.get("latent_rel_err_max", []))
        print(f"{name:<28} {mean:>20} {peak:>14} {row['arm_mean_rad']:>13.4f} "
              f"{row['arm_max_rad']:>12.4f} {row['gripper_max']:>12.4f}")
    print(f"predict() vs this script's chunk from window latents: max |diff| "
          f"{result['predict_mirror_max_abs_diff']:.1e}")
    write_result("history_reuse_cpu", result)


if __name__ == "__main__":
    main()
