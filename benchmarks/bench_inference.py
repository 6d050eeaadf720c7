"""Observation -> action chunk, stage by stage, with the speed options compared in one run.

    python benchmarks/bench_inference.py [--preset tiny] [--device cpu] [--repeats 20]
    python benchmarks/bench_inference.py --preset paper --device cuda --inputs deploy paper

Stages: preprocessing, VAE encoding, text embedding (cold and cached), backbone pass (blocks
0..read_layer vs the whole transformer, both from prepared inputs), decoder integration (flow
steps 10/5/2/1; and 10 steps projecting the video tokens to keys and values at every step,
where `sample` does it once per chunk), safety filter; and `torch.compile` (inductor) of the
backbone prefix and of the decoder's velocity network, timed after compiling, beside the
eager rows of the same run (a row says "unavailable" with the reason when compiling fails,
e.g. without a C compiler).
Each row carries its analytic FLOPs (benchmarks/flops.py) and its floor: those FLOPs at the
GEMM rate measured in the same run (bf16 GEMMs of the transformer's shapes on a GPU, float32
on a CPU). Prints a table and writes JSON under benchmarks/results/. On a CPU only the ratios
between rows of one run mean something; absolute times come from GPU runs.

`--preset paper` builds the Cosmos-Predict2-2B architecture and the paper's decoder with random
weights, bf16, on the GPU (a CUDA device is required), at each named input of `--inputs`
(flops.INPUTS: `paper` 480x640 with 5 + 56 frames, `deploy` 240x320 with 5 + 16). The T5-11B
text encoder is never loaded: random embeddings of its shape `[1, 512, 1024]` stand in, so the
"new instruction" row is unavailable; the policy keeps the text encoder off the GPU anyway. On
CUDA the run records the GPU memory held after building and the peak during `predict()`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import os
import statistics
import time
from collections.abc import Callable, Sequence

import flops
import numpy as np
import torch
from results_io import write_result

from vam_policy.machine import cpu_name, describe_machine
from vam_policy.model.backbone import VideoBackbone
from vam_policy.model.backbone_config import torch_dtype
from vam_policy.model.decoder import ActionDecoder
from vam_policy.model.flow import integrate
from vam_policy.model.policy import DecoderHead, NormStats, VAMPolicy
from vam_policy.model.policy_config import PolicyConfig, policy_preset
from vam_policy.model.text_encoder import TextEmbeddings
from vam_policy.ros.safety import SafetyLimits, filter_targets

JOINTS = [f"joint{i}" for i in range(1, 8)]
INSTRUCTION = "lift the red cube"


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
    compiled.conditioned_velocity = torch.compile(compiled.conditioned_velocity)
    return compiled


# ---- building ----------------------------------------------------------------------------


class RandomTextEmbeddings:
    """Stands in for the T5-11B text encoder, which this benchmark never loads: random token
    embeddings of its width, padded to `max_length` with zeros as `TokenTextEncoder` pads."""

    def __init__(self, width: int, max_length: int, dtype: torch.dtype, tokens: int = 8) -> None:
        self.embedding_dim = width
        self.max_length = max_length
        self.dtype = dtype
        self.tokens = min(tokens, max_length)

    def encode(self, texts: Sequence[str]) -> TextEmbeddings:
        generator = torch.Generator().manual_seed(0)
        embeds = torch.randn(len(texts), self.max_length, self.embedding_dim,
                             generator=generator).to(self.dtype)  # [B, L, D]
        mask = torch.zeros(len(texts), self.max_length, dtype=torch.bool)  # [B, L]
        mask[:, :self.tokens] = True
        return TextEmbeddings(embeds * mask[..., None].to(self.dtype), mask)


def build_random(config: PolicyConfig, device: torch.device) -> VAMPolicy:
    """`config`'s architecture with random weights, built on `device`, the decoder in the
    backbone's dtype, and `RandomTextEmbeddings` in place of the text encoder."""
    config = config.with_backbone(source=flops.architecture_of(config.backbone))
    dtype = torch_dtype(config.backbone.dtype)
    with torch.device(device):
        backbone = VideoBackbone.from_config(config.backbone)
        decoder = ActionDecoder(config.decoder).to(dtype)
    text = RandomTextEmbeddings(backbone.text_embed_dim, config.backbone.text_max_tokens, dtype)
    head = DecoderHead(decoder, NormStats.identity(len(JOINTS)))
    return VAMPolicy(config, backbone, [head], text).eval()


# ---- measurements beside the timed rows --------------------------------------------------


def matmul_rates(tokens: int, hidden: int, mlp: int, dtype: torch.dtype, repeats: int,
                 device: torch.device) -> list[dict[str, float | str]]:
    """TFLOP/s of `[tokens, k] @ [k, n]` GEMMs with the transformer's shapes, and of its
    self-attention (`[1, heads, tokens, 128]`) for reference; 2 FLOPs per multiply-add."""
    inner = 10 if device.type == "cuda" else 1  # several products per timing: launch overhead
    rows = []
    for name, (k, n) in {"q/k/v/out projection": (hidden, hidden), "MLP in": (hidden, mlp),
                         "MLP out": (mlp, hidden)}.items():
        a = torch.randn(tokens, k, dtype=dtype, device=device)
        b = torch.randn(k, n, dtype=dtype, device=device)

        def gemm(a: torch.Tensor = a, b: torch.Tensor = b) -> None:
            for _ in range(inner):
                a @ b

        median = statistics.median(_timed(gemm, repeats, device)) / inner
        rows.append({"gemm": name, "m": tokens, "k": k, "n": n,
                     "tflops": 2 * tokens * k * n / (median * 1e-3) / 1e12})
    heads = max(1, hidden // 128)
    q = torch.randn(1, heads, tokens, hidden // heads, dtype=dtype, device=device)

    def attention() -> None:
        for _ in range(inner):
            torch.nn.functional.scaled_dot_product_attention(q, q, q)

    median = statistics.median(_timed(attention, repeats, device)) / inner
    rows.append({"attention": f"self-attention, {heads} heads", "tokens": tokens,
                 "tflops": 4 * tokens * tokens * hidden / (median * 1e-3) / 1e12})
    return rows


def cuda_memory(policy: VAMPolicy, frames: np.ndarray, state: np.ndarray,
                device: torch.device) -> dict[str, float | str]:
    """GPU memory held by the built policy and the peak of one `predict()` after a warm-up."""
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    held = torch.cuda.memory_allocated(device)
    policy.predict(frames[0], state, INSTRUCTION)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    policy.predict(frames[0], state, INSTRUCTION)
    torch.cuda.synchronize(device)
    return {"allocated_after_build_gb": held / 1e9,
            "peak_predict_allocated_gb": torch.cuda.max_memory_allocated(device) / 1e9,
            "peak_predict_reserved_gb": torch.cuda.max_memory_reserved(device) / 1e9,
            "text_encoder": "not resident (random stand-in; the policy keeps T5 on the CPU)"}


def _annotate(rows: list[dict], stages: dict[str, flops.Flops], gemm_tflops: float,
              attention_tflops: float) -> None:
    """Adds each row's analytic GFLOPs and its floors: all FLOPs at the GEMM rate, and dense
    FLOPs at the GEMM rate + attention FLOPs at the attention rate."""
    for row in rows:
        matches = [name for name in stages
                   if row["stage"] == name or row["stage"].startswith(name + ", ")]
        if not matches:
            continue
        cost = stages[max(matches, key=len)]
        row["gflop"] = cost.total / 1e9
        row["floor_ms"] = cost.total / (gemm_tflops * 1e12) * 1e3
        row["floor_split_ms"] = (cost.linear / (gemm_tflops * 1e12)
                                 + cost.attention / (attention_tflops * 1e12)) * 1e3


# ---- the run -----------------------------------------------------------------------------


@torch.no_grad()
def run(preset: str, device: str, repeats: int, inputs: str | None = None,
        compile_rows: bool = True) -> dict[str, object]:
    dev = torch.device(device)
    config = policy_preset(preset, joint_names=JOINTS)
    if inputs is not None:
        config = flops.INPUTS[inputs].apply(config)
    if preset == "tiny":
        policy = VAMPolicy.build(config).to(dev).eval()
    else:
        policy = build_random(config, dev)
    cfg = policy.config.backbone
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (1, cfg.history_frames, cfg.height, cfg.width, 3), np.uint8)
    state = np.zeros(len(JOINTS))
    memory = cuda_memory(policy, frames, state, dev) if dev.type == "cuda" else {}
    video = policy.preprocess_frames(frames)
    history = policy.backbone.encode_video(video)
    text = policy.embed_instructions([INSTRUCTION])
    features = policy.backbone.features(history, text)
    proprio = torch.zeros(1, len(JOINTS), device=dev)
    tau = torch.ones(1, device=dev)
    backbone = policy.backbone
    prepared = backbone.prepare_inputs(history)

    def full_transformer() -> None:
        backbone.denoise(prepared.latent_video, prepared.timestep, text, prepared.condition_mask)

    def compiled_prefix() -> Callable[[], torch.Tensor]:
        prefix = torch.compile(backbone.features_from_inputs)
        return lambda: prefix(prepared, text)

    noise = torch.randn(1, policy.config.horizon, len(JOINTS), device=dev)  # output check

    def compiled_decoder() -> Callable[[], torch.Tensor]:
        decoder = _compiled_velocity(policy.decoder)
        return lambda: decoder.sample(features, proprio, tau, noise=noise, text=text)

    def cold_text() -> None:
        policy._text_cache.clear()
        policy.embed_instructions([INSTRUCTION])

    def maybe_compiled(name: str, compile_fn: Callable[[], Callable[[], torch.Tensor]],
                       eager: Callable[[], torch.Tensor]) -> dict[str, float | str]:
        if not compile_rows:
            return {"stage": name, "unavailable": "skipped (--no-compile)"}
        return _compiled_row(name, compile_fn, eager, repeats, dev)

    limits = SafetyLimits(
        lower=np.full(7, -2.8), upper=np.full(7, 2.8), max_velocity=np.full(7, 2.0),
        max_acceleration=np.full(7, 5.0), max_step_from_current=0.5,
    )
    chunk = policy.decoder.sample(features, proprio, tau, text=text).float().cpu().numpy()[0]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rows = [
        _row("preprocess frames", _timed(lambda: policy.preprocess_frames(frames), repeats, dev)),
        _row("VAE encode history", _timed(lambda: backbone.encode_video(video), repeats, dev)),
    ]
    if dev.type == "cuda" and backbone.vae.dtype != torch.bfloat16:
        vae = copy.deepcopy(backbone.vae)
        for child in vae.children():  # as `VideoBackbone.from_config` casts
            child.to(torch.bfloat16)
        bf16 = VideoBackbone(dataclasses.replace(cfg, vae_dtype="bfloat16"), backbone.transformer,
                             vae)
        rows.append(_row("VAE encode history, bfloat16 weights",
                         _timed(lambda: bf16.encode_video(video), repeats, dev)))
        del bf16, vae
    if isinstance(policy.text_encoder, RandomTextEmbeddings):
        rows.append({"stage": "text embedding (new instruction)",
                     "unavailable": "T5-11B not loaded; random [1, 512, 1024] embeddings stand in"})
    else:
        rows.append(_row("text embedding (new instruction)", _timed(cold_text, repeats, dev)))
    rows += [
        _row("text embedding (cached)",
             _timed(lambda: policy.embed_instructions([INSTRUCTION]), repeats, dev)),
        _row(f"backbone blocks 0..{cfg.read_layer}",
             _timed(lambda: backbone.features_from_inputs(prepared, text), repeats, dev)),
        maybe_compiled(f"backbone blocks 0..{cfg.read_layer}, torch.compile", compiled_prefix,
                       lambda: backbone.features_from_inputs(prepared, text)),
        _row("backbone, whole transformer", _timed(full_transformer, repeats, dev)),
    ]
    for steps in (10, 5, 2, 1):
        rows.append(_row(f"decoder, {steps} flow steps", _timed(
            lambda s=steps: policy.decoder.sample(features, proprio, tau, steps=s, text=text),
            repeats, dev)))
    rows.append(_row(flops.RECOMPUTED_KV, _timed(lambda: integrate(
        lambda x, tau_a: policy.decoder.conditioned_velocity(
            x, tau_a, policy.decoder.condition(features, text, proprio), proprio, tau),
        noise, 10), repeats, dev)))
    rows.append(maybe_compiled(
        "decoder, 10 flow steps, torch.compile velocity", compiled_decoder,
        lambda: policy.decoder.sample(features, proprio, tau, noise=noise, text=text)))
    rows.append(_row("safety filter", _timed(
        lambda: filter_targets(chunk, np.zeros(7), policy.config.action_dt, limits), repeats, dev)))
    rows.append(_row("predict() end to end", _timed(
        lambda: policy.predict(frames[0], state, INSTRUCTION), repeats, dev)))
    if dev.type == "cuda":
        memory["peak_all_rows_allocated_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9

    arch = backbone.transformer.config
    hidden = arch.num_attention_heads * arch.attention_head_dim
    gemm_dtype = torch_dtype(cfg.dtype) if dev.type == "cuda" else torch.float32
    rates = matmul_rates(backbone.num_feature_tokens, hidden, int(hidden * arch.mlp_ratio),
                         gemm_dtype, repeats, dev)
    gemm_tflops = max(r["tflops"] for r in rates if "gemm" in r)
    attention_tflops = next(r["tflops"] for r in rates if "attention" in r)
    _annotate(rows, flops.stage_flops(policy.config), gemm_tflops, attention_tflops)
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
        "decoder 10 steps, video tokens projected every step / once per chunk": ratio(
            flops.RECOMPUTED_KV, "decoder, 10 flow steps"),
        "prefix eager / torch.compile": ratio(prefix, f"{prefix}, torch.compile"),
        "decoder 10 steps eager / torch.compile velocity": ratio(
            "decoder, 10 flow steps", "decoder, 10 flow steps, torch.compile velocity"),
    }
    cuda_flags = ({"matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                   "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}
                  if dev.type == "cuda" else {})
    return {
        "benchmark": "inference",
        "preset": preset,
        "inputs": inputs,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "machine": {**describe_machine(), "load_average": os.getloadavg(), **cuda_flags},
        "torch_threads": torch.get_num_threads(),
        "weights": ("random, " + cfg.dtype + " transformer, " + cfg.vae_dtype + " VAE, "
                    + str(policy.decoder.pos_embed.dtype).removeprefix("torch.") + " decoder"),
        "input": {"history_frames": cfg.history_frames, "height": cfg.height, "width": cfg.width,
                  "future_latent_frames": cfg.future_latent_frames,
                  "feature_tokens": backbone.num_feature_tokens, "horizon": policy.config.horizon,
                  "text_tokens": cfg.text_max_tokens},
        "repeats": repeats,
        "rows": rows,
        "ratios": ratios,
        "rates": rates,
        "gemm_tflops_used_for_floor": gemm_tflops,
        "memory": memory,
        "note": "measured times; gflop is analytic (benchmarks/flops.py); floor_ms = gflop at "
                "the best measured GEMM rate of this run. CPU: compare ratios within this run "
                "only; absolute times need a GPU run.",
    }


def _print(result: dict[str, object]) -> None:
    print(f"{'stage':<48} {'median ms':>10} {'min ms':>10} {'GFLOP':>10} {'floor ms':>10}")
    for row in result["rows"]:
        if "unavailable" in row:
            print(f"{row['stage']:<48} unavailable: {row['unavailable']}")
            continue
        cost = (f" {row['gflop']:>10.3g} {row['floor_ms']:>10.3g}" if "gflop" in row else "")
        print(f"{row['stage']:<48} {row['median_ms']:>10.2f} {row['min_ms']:>10.2f}{cost}")
    for name, value in result["ratios"].items():
        print(f"ratio {name}: " + (value if isinstance(value, str) else f"{value:.2f}x"))
    for rate in result["rates"]:
        what = rate.get("gemm") or rate["attention"]
        print(f"rate {what}: {rate['tflops']:.3g} TFLOP/s")
    for name, value in result["memory"].items():
        print(f"memory {name}: " + (value if isinstance(value, str) else f"{value:.2f} GB"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--inputs", nargs="+", choices=sorted(flops.INPUTS),
                        help="named inputs of the 2B preset, each its own run and JSON "
                        "(default with --preset paper: deploy paper)")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the torch.compile rows (their first call compiles for "
                        "minutes at the 2B size)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a 2-core machine more threads "
                        "than free cores makes every op many times slower)")
    args = parser.parse_args()
    if args.preset == "tiny" and args.inputs:
        parser.error("--inputs names inputs of the 2B preset; the tiny preset has its own")
    if args.preset != "tiny" and torch.device(args.device).type != "cuda":
        parser.error(f"--preset {args.preset} builds the 2B model: run it with --device cuda")
    torch.set_num_threads(args.threads)
    for inputs in args.inputs or ([None] if args.preset == "tiny" else ["deploy", "paper"]):
        result = run(args.preset, args.device, args.repeats, inputs, not args.no_compile)
        _print(result)
        name = args.preset if inputs is None else f"{args.preset}-{inputs}"
        write_result(f"inference_{name}_{torch.device(args.device).type}", result)
        torch._dynamo.reset()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
