"""Observation -> action chunk, stage by stage, with the speed options compared in one run.

    python benchmarks/bench_inference.py [--preset tiny] [--device cpu] [--repeats 20]

Stages: preprocessing, VAE encoding, text embedding (cold and cached), backbone pass (blocks
0..read_layer vs the whole transformer, both from prepared inputs), decoder integration (flow
steps 10/5/2/1), safety filter; and `torch.compile` (inductor) of the backbone prefix and of
the decoder's velocity network, timed after compiling, beside the eager rows of the same run
(a row says "unavailable" with the reason when compiling fails, e.g. without a C compiler).
Prints a table and writes JSON under benchmarks/results/. On a CPU only the ratios between
rows of one run mean something; absolute times come from GPU runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vam_policy.machine import cpu_name, describe_machine
from vam_policy.model.decoder import ActionDecoder
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


def _compiled_row(name: str, compile_fn: Callable[[], Callable[[], torch.Tensor]],
                  eager: Callable[[], torch.Tensor], repeats: int,
                  device: torch.device) -> dict[str, float | str]:
    """`_row` of the callable `compile_fn` returns, after a first call that compiles it (its
    time kept: smaller when inductor's on-disk cache already holds the kernels), with its
    largest difference from `eager`'s output; a failure to compile becomes the row's
    `unavailable` reason instead of ending the run."""
    try:
        fn = compile_fn()
        start = time.perf_counter()
        out = fn()
        first_s = time.perf_counter() - start
    except Exception as error:  # any compiler failure is the row's result
        reason = (str(error).strip().splitlines() or [""])[0]
        return {"stage": name, "unavailable": f"{type(error).__name__}: {reason}"}
    return {**_row(name, _timed(fn, repeats, device)), "first_call_s": first_s,
            "max_abs_diff_vs_eager": float((out.float() - eager().float()).abs().max())}


def _compiled_velocity(decoder: ActionDecoder) -> ActionDecoder:
    """A copy of `decoder` whose velocity network (called once per Euler step by `sample`) is
    compiled; `sample`'s checks and step loop stay eager, the original is left as it is."""
    compiled = copy.deepcopy(decoder)
    compiled._velocity = torch.compile(compiled._velocity)
    return compiled


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

    def compiled_prefix() -> Callable[[], torch.Tensor]:
        prefix = torch.compile(backbone.features_from_inputs)
        return lambda: prefix(inputs, text)

    noise = torch.randn(1, policy.config.horizon, len(JOINTS), device=dev)  # output check

    def compiled_decoder() -> Callable[[], torch.Tensor]:
        decoder = _compiled_velocity(policy.decoder)
        return lambda: decoder.sample(features, proprio, tau, noise=noise, text=text)

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
             _timed(lambda: backbone.features_from_inputs(inputs, text), repeats, dev)),
        _compiled_row(f"backbone blocks 0..{cfg.read_layer}, torch.compile", compiled_prefix,
                      lambda: backbone.features_from_inputs(inputs, text), repeats, dev),
        _row("backbone, whole transformer", _timed(full_transformer, repeats, dev)),
    ]
    for steps in (10, 5, 2, 1):
        rows.append(_row(f"decoder, {steps} flow steps", _timed(
            lambda s=steps: policy.decoder.sample(features, proprio, tau, steps=s, text=text),
            repeats, dev)))
    rows.append(_compiled_row(
        "decoder, 10 flow steps, torch.compile velocity", compiled_decoder,
        lambda: policy.decoder.sample(features, proprio, tau, noise=noise, text=text),
        repeats, dev))
    rows.append(_row("safety filter", _timed(
        lambda: filter_targets(chunk, np.zeros(7), policy.config.action_dt, limits), repeats, dev)))
    rows.append(_row("predict() end to end", _timed(
        lambda: policy.predict(frames[0], state, "lift the red cube"), repeats, dev)))
    by_name = {r["stage"]: r for r in rows}

    def ratio(slow: str, fast: str) -> float | str:
        for name in (slow, fast):
            if "unavailable" in by_name[name]:
                return f"unavailable: {by_name[name]['unavailable']}"
        return by_name[slow]["median_ms"] / by_name[fast]["median_ms"]

    prefix = f"backbone blocks 0..{cfg.read_layer}"
    ratios = {
        "whole transformer / truncated prefix": ratio("backbone, whole transformer", prefix),
        "new / cached instruction": ratio("text embedding (new instruction)",
                                          "text embedding (cached)"),
        "10 / 1 flow steps": ratio("decoder, 10 flow steps", "decoder, 1 flow steps"),
        "prefix eager / torch.compile": ratio(prefix, f"{prefix}, torch.compile"),
        "decoder 10 steps eager / torch.compile velocity": ratio(
            "decoder, 10 flow steps", "decoder, 10 flow steps, torch.compile velocity"),
    }
    return {
        "benchmark": "inference",
        "preset": preset,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "machine": {**describe_machine(), "load_average": os.getloadavg()},
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
    print(f"{'stage':<48} {'median ms':>10} {'min ms':>10}")
    for row in result["rows"]:
        if "unavailable" in row:
            print(f"{row['stage']:<48} unavailable: {row['unavailable']}")
        else:
            print(f"{row['stage']:<48} {row['median_ms']:>10.2f} {row['min_ms']:>10.2f}")
    for name, value in result["ratios"].items():
        print(f"ratio {name}: " + (value if isinstance(value, str) else f"{value:.2f}x"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"inference_{args.preset}_{torch.device(args.device).type}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
