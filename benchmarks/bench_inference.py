"""Observation -> action chunk, stage by stage, with the speed options compared in one run.

    python benchmarks/bench_inference.py [--preset tiny] [--device cpu] [--repeats 20]

Stages: preprocessing, VAE encoding, text embedding (cold and cached), backbone pass (blocks
0..read_layer vs the whole transformer), decoder integration (flow steps 10/5/2/1), safety
filter. Prints a table and writes JSON under benchmarks/results/. On a CPU only the ratios
between rows of one run mean something; absolute times come from GPU runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vam_policy.model.policy import VAMPolicy
from vam_policy.model.policy_config import policy_preset
from vam_policy.ros.safety import SafetyLimits, filter_targets

RESULTS = Path(__file__).resolve().parent / "results"
JOINTS = [f"joint{i}" for i in range(1, 8)]


def _timed(fn: Callable[[], object], repeats: int, device: torch.device) -> list[float]:
    fn()  # warm-up: allocations, lazy init
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _row(name: str, times: list[float]) -> dict[str, float | str]:
    return {"stage": name, "median_ms": statistics.median(times), "min_ms": min(times)}


@torch.no_grad()
def run(preset: str, device: str, repeats: int) -> dict[str, object]:
    dev = torch.device(device)
    policy = VAMPolicy.build(policy_preset(preset, joint_names=JOINTS)).to(dev).eval()
    cfg = policy.config.backbone
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (1, cfg.history_frames, cfg.height, cfg.width, 3), np.uint8)
    state = np.zeros(len(JOINTS))
    video = policy.preprocess_frames(frames)
    history = policy.backbone.encode_video(video)
    text = policy.embed_instructions(["lift the red cube"])
    features = policy.backbone.features(history, text)
    proprio = torch.zeros(1, len(JOINTS), device=dev)
    tau = torch.ones(1, device=dev)
    backbone = policy.backbone
    inputs = backbone.prepare_inputs(history)

    def full_transformer() -> None:
        backbone.denoise(inputs.latent_video, inputs.timestep, text, inputs.condition_mask)

    def cold_text() -> None:
        policy._text_cache.clear()
        policy.embed_instructions(["lift the red cube"])

    limits = SafetyLimits(
        lower=np.full(7, -2.8), upper=np.full(7, 2.8), max_velocity=np.full(7, 2.0),
        max_acceleration=np.full(7, 5.0), max_step_from_current=0.5,
    )
    chunk = policy.decoder.sample(features, proprio, tau, text=text).cpu().numpy()[0]
    rows = [
        _row("preprocess frames", _timed(lambda: policy.preprocess_frames(frames), repeats, dev)),
        _row("VAE encode history", _timed(lambda: backbone.encode_video(video), repeats, dev)),
        _row("text embedding (new instruction)", _timed(cold_text, repeats, dev)),
        _row("text embedding (cached)",
             _timed(lambda: policy.embed_instructions(["lift the red cube"]), repeats, dev)),
        _row(f"backbone blocks 0..{cfg.read_layer}",
             _timed(lambda: backbone.features(history, text), repeats, dev)),
        _row("backbone, whole transformer", _timed(full_transformer, repeats, dev)),
    ]
    for steps in (10, 5, 2, 1):
        rows.append(_row(f"decoder, {steps} flow steps", _timed(
            lambda s=steps: policy.decoder.sample(features, proprio, tau, steps=s, text=text),
            repeats, dev)))
    rows.append(_row("safety filter", _timed(
        lambda: filter_targets(chunk, np.zeros(7), policy.config.action_dt, limits), repeats, dev)))
    rows.append(_row("predict() end to end", _timed(
        lambda: policy.predict(frames[0], state, "lift the red cube"), repeats, dev)))
    by_name = {r["stage"]: r["median_ms"] for r in rows}
    ratios = {
        "whole transformer / truncated prefix": by_name["backbone, whole transformer"]
        / by_name[f"backbone blocks 0..{cfg.read_layer}"],
        "new / cached instruction": by_name["text embedding (new instruction)"]
        / by_name["text embedding (cached)"],
        "10 / 1 flow steps": by_name["decoder, 10 flow steps"] / by_name["decoder, 1 flow steps"],
    }
    return {
        "benchmark": "inference",
        "preset": preset,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
        or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "input": {"history_frames": cfg.history_frames, "height": cfg.height, "width": cfg.width,
                  "feature_tokens": backbone.num_feature_tokens, "horizon": policy.config.horizon},
        "repeats": repeats,
        "rows": rows,
        "ratios": ratios,
        "note": "CPU: compare ratios within this run only; absolute times need a GPU run.",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a 2-core machine more threads "
                        "than free cores makes every op many times slower)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args.preset, args.device, args.repeats)
    print(f"{'stage':<40} {'median ms':>10} {'min ms':>10}")
    for row in result["rows"]:
        print(f"{row['stage']:<40} {row['median_ms']:>10.2f} {row['min_ms']:>10.2f}")
    for name, value in result["ratios"].items():
        print(f"ratio {name}: {value:.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"inference_{args.preset}_{torch.device(args.device).type}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
