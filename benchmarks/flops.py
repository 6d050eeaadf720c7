"""Analytic cost of a VAM policy: FLOPs per inference stage and weight memory, from its config.

    python benchmarks/flops.py     # the 2B table at the `paper` and `deploy` inputs

FLOPs are what `torch.utils.flop_counter.FlopCounterMode` counts: 2 per multiply-add of dense
layers, convolutions and attention products (QK^T, AV). Norms, activations, RoPE and other
elementwise work are memory-bound and left out. The formulas follow the diffusers modules as
they run (test/test_flops.py checks them against FlopCounterMode on the tiny preset and on the
2B shape on the `meta` device). Weight memory comes from parameter counts of the models built on
the `meta` device, which allocates nothing. Writes benchmarks/results/flops_2b_analytic.json.
Every number here is analytic; measured times and memory come from bench_inference.py on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch
from diffusers import AutoencoderKLWan
from results_io import write_result

from vam_policy.model.backbone import VideoBackbone
from vam_policy.model.backbone_config import (
    LATENT_CHANNELS,
    VAE_TEMPORAL_FACTOR,
    BackboneArchitecture,
    BackboneConfig,
    get_architecture,
    is_preset,
)
from vam_policy.model.decoder import _FREQ_DIM, ActionDecoder, DecoderConfig
from vam_policy.model.policy_config import PolicyConfig, policy_preset

ARCH_2B = "cosmos-predict2-2b"
H100_DENSE_BF16_TFLOPS = 989.0
"""H100 SXM datasheet dense bf16 rate: an analytic floor only; bench_inference measures one."""
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# ---- named inputs ------------------------------------------------------------------------


@dataclass(frozen=True)
class InputConfig:
    """Frame size and frame window of one benchmark input; the rest stays the preset's."""

    height: int
    width: int
    history_frames: int
    future_latent_frames: int
    why: str

    def apply(self, config: PolicyConfig) -> PolicyConfig:
        """`config` with these inputs (the decoder's video grid follows)."""
        return config.with_backbone(
            height=self.height, width=self.width, history_frames=self.history_frames,
            future_latent_frames=self.future_latent_frames)


INPUTS: dict[str, InputConfig] = {
    "paper": InputConfig(
        480, 640, 5, 14,
        "the paper's: 5 history + 56 future frames (14 latent frames) at 480x640"),
    "deploy": InputConfig(
        240, 320, 5, 4,
        "half the paper's frame side (240x320), its 5 history frames, and 4 future latent "
        "frames = 16 frames = 3.2 s at 5 Hz: the shortest whole-latent window that covers the "
        "15-step chunk at 0.2 s (3.0 s); 5 + 16 = 21 = 1 + 4*5 frames, as the causal VAE needs"),
}


def future_seconds(config: PolicyConfig) -> float:
    """Seconds of future the backbone's latent window spans at `config.fps`."""
    return config.backbone.future_latent_frames * VAE_TEMPORAL_FACTOR / config.fps


def chunk_seconds(config: PolicyConfig) -> float:
    """Seconds one predicted chunk spans."""
    return config.horizon * config.action_dt


# ---- FLOPs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flops:
    """FLOPs of one stage, split into dense layers / convolutions and attention products."""

    linear: int = 0
    attention: int = 0

    @property
    def total(self) -> int:
        return self.linear + self.attention

    def __add__(self, other: Flops) -> Flops:
        return Flops(self.linear + other.linear, self.attention + other.attention)

    def __mul__(self, times: int) -> Flops:
        return Flops(self.linear * times, self.attention * times)


def _dense(rows: int, fan_in: int, fan_out: int) -> int:
    return 2 * rows * fan_in * fan_out


def _conv(c_in: int, c_out: int, taps: int, voxels: int) -> int:
    return 2 * c_in * c_out * taps * voxels


def architecture_of(backbone: BackboneConfig) -> str:
    """The preset architecture of a backbone config; a hub id or folder is taken to be the
    2B Cosmos-Predict2 shape (the only pretrained one this package loads)."""
    return backbone.source if is_preset(backbone.source) else ARCH_2B


def vae_config(arch: BackboneArchitecture) -> Mapping[str, Any]:
    """The full `AutoencoderKLWan` config of an architecture (built on `meta`: no memory)."""
    with torch.device("meta"):
        return AutoencoderKLWan(**arch.vae.diffusers_kwargs()).config


def vae_encode_flops(vae: Mapping[str, Any], frames: int, height: int, width: int) -> Flops:
    """`AutoencoderKLWan.encode` of `[1, 3, frames, height, width]` (Wan 2.1 layout).

    The encoder runs chunk by chunk (1 frame, then 4 at a time) with its causal cache, so each
    3x3x3 convolution makes as many output frames as its chunk has; a temporal downsampling
    convolution (kernel 3, stride 2) sees the chunk plus one cached frame and skips the first
    chunk. The middle block's attention is per frame over the h*w latent pixels.
    """
    if vae["attn_scales"] or vae["is_residual"] or vae["patch_size"] is not None:
        raise ValueError("vae: expected the Wan 2.1 layout (no attn_scales, no residual down "
                         "blocks, no patchify); got another AutoencoderKLWan variant")
    if frames < 1 or (frames - 1) % VAE_TEMPORAL_FACTOR:
        raise ValueError(f"frames: expected 1 + 4*m, got {frames}")
    chunks = [1] + [VAE_TEMPORAL_FACTOR] * ((frames - 1) // VAE_TEMPORAL_FACTOR)
    total = Flops()
    for index, chunk in enumerate(chunks):
        flops, latent_size = _encoder_chunk(vae, chunk, height, width, first=index == 0)
        total += flops
    z2 = 2 * vae["z_dim"]
    latent_frames = len(chunks)
    return total + Flops(_conv(z2, z2, 1, latent_frames * math.prod(latent_size)))  # quant_conv


def _encoder_chunk(vae: Mapping[str, Any], t: int, height: int, width: int,
                   first: bool) -> tuple[Flops, tuple[int, int]]:
    """One chunk of `t` frames through `WanEncoder3d`; returns its FLOPs and latent (h, w)."""
    dims = [vae["base_dim"] * m for m in (1, *vae["dim_mult"])]
    h, w = height, width
    linear = _conv(vae["in_channels"], dims[0], 27, t * h * w)  # conv_in

    def resblock(c_in: int, c_out: int) -> int:
        shortcut = _conv(c_in, c_out, 1, t * h * w) if c_in != c_out else 0
        return _conv(c_in, c_out, 27, t * h * w) + _conv(c_out, c_out, 27, t * h * w) + shortcut

    last = len(dims) - 2
    for stage, (c_in, c_out) in enumerate(pairwise(dims)):
        for _ in range(vae["num_res_blocks"]):
            linear += resblock(c_in, c_out)
            c_in = c_out
        if stage != last:
            # ZeroPad2d((0, 1, 0, 1)) then a 3x3 stride-2 conv, frame by frame
            h, w = (h - 2) // 2 + 1, (w - 2) // 2 + 1
            linear += _conv(c_out, c_out, 9, t * h * w)
            if vae["temperal_downsample"][stage] and not first:
                t = (t + 1 - 3) // 2 + 1  # cached frame + chunk, kernel 3, stride 2
                linear += _conv(c_out, c_out, 3, t * h * w)
    c = dims[-1]
    pixels = h * w
    linear += 2 * resblock(c, c)  # middle block: resnet, attention, resnet
    linear += t * (_dense(pixels, c, 3 * c) + _dense(pixels, c, c))  # 1x1 qkv and proj
    attention = t * 4 * pixels * pixels * c
    linear += _conv(c, 2 * vae["z_dim"], 27, t * pixels)  # conv_out
    return Flops(linear, attention), (h, w)


def transformer_flops(arch: BackboneArchitecture, grid: tuple[int, int, int], text_tokens: int,
                      blocks: int, *, output: bool) -> Flops:
    """`CosmosTransformer3DModel` on a `(T, h, w)` token grid: patch and time embedding, then
    `blocks` blocks; `output` adds the final AdaLN and projection (the whole forward).

    Per block: three AdaLN-LoRA modulations, run on every token because diffusers expands the
    per-frame time embedding to `[B, N, C]` first; self-attention; cross-attention to
    `text_tokens` text tokens; the GELU MLP.
    """
    spec = arch.transformer
    frames = grid[0]
    n = math.prod(grid)
    c = spec.num_attention_heads * spec.attention_head_dim
    mlp = int(c * spec.mlp_ratio)
    patch = math.prod(spec.patch_size)
    in_channels = LATENT_CHANNELS + 2  # latents + condition mask + padding mask
    embed = _dense(n, in_channels * patch, c) + _dense(frames, c, c) + _dense(frames, c, 3 * c)
    adaln = adaln_flops(arch, n, 1)
    self_attn = 4 * _dense(n, c, c)
    cross_attn = 2 * _dense(n, c, c) + 2 * _dense(text_tokens, spec.text_embed_dim, c)
    ff = _dense(n, c, mlp) + _dense(n, mlp, c)
    block = Flops(adaln + self_attn + cross_attn + ff, 4 * n * n * c + 4 * n * text_tokens * c)
    total = Flops(embed) + block * blocks
    if output:
        r = spec.adaln_lora_dim
        total += Flops(_dense(n, c, r) + _dense(n, r, 2 * c)
                       + _dense(n, c, patch * LATENT_CHANNELS))
    return total


def adaln_flops(arch: BackboneArchitecture, rows: int, blocks: int) -> int:
    """The three AdaLN-LoRA modulations of `blocks` blocks on `rows` rows: every token as
    diffusers runs them, though they only vary per frame (T rows would give the same result)."""
    c = arch.transformer.num_attention_heads * arch.transformer.attention_head_dim
    r = arch.transformer.adaln_lora_dim
    return blocks * 3 * (_dense(rows, c, r) + _dense(rows, r, 3 * c))


@dataclass(frozen=True)
class DecoderFlops:
    """The action decoder's FLOPs for one chunk: `once` + `steps` x `per_step`."""

    once: Flops
    """Video feature projection to the decoder width, every block's cross-attention keys and
    values of the video tokens (the same at every step), the instruction embedding and its
    readout of the video tokens and the proprio state (the mean chunk)."""
    per_step: Flops
    """One velocity evaluation (an Euler step) over 1 proprio + H action tokens."""
    context_kv: int
    """Of `once.linear`: the video tokens' keys and values, which `sample` computes once per
    chunk instead of once per step."""

    def sample(self, steps: int) -> Flops:
        return self.once + self.per_step * steps


def decoder_flops(config: DecoderConfig, video_tokens: int) -> DecoderFlops:
    """`ActionDecoder.sample` with `video_tokens` feature tokens, batch 1."""
    w, r, j, horizon = config.width, config.adaln_lora_dim, config.action_dim, config.horizon
    m = 1 + horizon
    n = video_tokens
    once = _dense(n, config.feature_dim, w)
    if config.text_dim:
        once += _dense(1, config.text_dim, w) + _dense(1, w, w)
    if config.instruction_readout:
        rank = config.instruction_readout
        once += (_dense(1, config.readout_tokens * config.feature_dim, rank) + _dense(1, w, rank)
                 + _dense(1, j, rank) + _dense(1, rank, w) + _dense(1, w, horizon * j))
    embed = (_dense(1, j, w) + _dense(1, w, w)  # proprio
             + _dense(horizon, j, w) + _dense(horizon, w, w)  # noisy actions
             + _dense(1, 2 * _FREQ_DIM, w) + _dense(1, w, w)  # (tau_v, tau_a)
             + (_dense(1, w, 3 * w) if r else 0))  # shared AdaLN-LoRA base
    adaln = _dense(1, w, r) + _dense(1, r, 3 * w) if r else _dense(1, w, 3 * w)
    context_kv = 2 * _dense(n, w, w)
    block_linear = (3 * adaln
                    + 2 * _dense(m, w, w)  # cross-attention (video K, V are in `once`)
                    + 4 * _dense(m, w, w)  # self-attention
                    + _dense(m, w, int(w * config.mlp_ratio))
                    + _dense(m, int(w * config.mlp_ratio), w))
    block_attention = 4 * m * n * w + 4 * m * m * w
    output = _dense(1, w, 2 * w) + _dense(horizon, w, j)
    per_step = Flops(embed + config.depth * block_linear + output,
                     config.depth * block_attention)
    return DecoderFlops(Flops(once + config.depth * context_kv), per_step,
                        config.depth * context_kv)


RECOMPUTED_KV = "decoder, 10 flow steps, video tokens projected every step"
"""The bench row that computes the chunk's condition (video tokens projected to the decoder
width, every block's keys and values, the instruction) at each Euler step, where `sample`
does it once per chunk."""


def stage_flops(config: PolicyConfig, steps: tuple[int, ...] = (10, 5, 2, 1)) -> dict[str, Flops]:
    """FLOPs of each inference stage bench_inference.py times, by its row name there."""
    backbone = config.backbone
    arch = get_architecture(architecture_of(backbone))
    grid = backbone.token_grid
    text = backbone.text_max_tokens
    prefix = transformer_flops(arch, grid, text, backbone.read_layer + 1, output=False)
    decoder = decoder_flops(config.decoder, math.prod(grid))
    vae = vae_encode_flops(vae_config(arch), backbone.history_frames, backbone.height,
                           backbone.width)
    stages = {
        "VAE encode history": vae,
        f"backbone blocks 0..{backbone.read_layer}": prefix,
        "backbone, whole transformer": transformer_flops(
            arch, grid, text, arch.transformer.num_layers, output=True),
    }
    stages.update({f"decoder, {s} flow steps": decoder.sample(s) for s in steps})
    stages[RECOMPUTED_KV] = decoder.sample(steps[0]) + decoder.once * (steps[0] - 1)
    stages["predict() end to end"] = vae + prefix + decoder.sample(config.decoder.sample_steps)
    return stages


# ---- weight memory -----------------------------------------------------------------------


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def weight_memory(config: PolicyConfig, decoder_dtype: str = "bfloat16") -> dict[str, Any]:
    """Parameter counts and bytes of the transformer, VAE and decoder, as built and with what
    inference never runs left out (transformer blocks after `read_layer` and its output
    layers; the VAE decoder). Built on `meta`: no memory, no weights."""
    backbone_config = dataclasses.replace(config.backbone, source=architecture_of(config.backbone))
    with torch.device("meta"):
        backbone = VideoBackbone.from_config(backbone_config)
        decoder = ActionDecoder(config.decoder)
    tr, vae = backbone.transformer, backbone.vae
    unused_blocks = tr.transformer_blocks[backbone_config.read_layer + 1:]
    counts = {
        "transformer": _params(tr),
        "transformer_used": _params(tr) - sum(_params(b) for b in unused_blocks)
        - _params(tr.norm_out) - _params(tr.proj_out),
        "vae": _params(vae),
        "vae_encoder": _params(vae.encoder) + _params(vae.quant_conv),
        "decoder": _params(decoder),
    }
    dtypes = {"transformer": backbone_config.dtype, "vae": backbone_config.vae_dtype,
              "decoder": decoder_dtype}

    def gb(name: str, dtype: str) -> float:
        return counts[name] * _BYTES[dtype] / 1e9

    as_built = (gb("transformer", dtypes["transformer"]) + gb("vae", dtypes["vae"])
                + gb("decoder", decoder_dtype))
    used = (gb("transformer_used", dtypes["transformer"]) + gb("vae_encoder", dtypes["vae"])
            + gb("decoder", decoder_dtype))
    used_bf16_vae = (gb("transformer_used", dtypes["transformer"])
                     + gb("vae_encoder", "bfloat16") + gb("decoder", decoder_dtype))
    return {
        "params": counts,
        "dtypes": dtypes,
        "gb": {
            "as_built": as_built,
            "without_unused_parts": used,
            "without_unused_parts_vae_bf16": used_bf16_vae,
            "transformer": gb("transformer", dtypes["transformer"]),
            "vae": gb("vae", dtypes["vae"]),
            "decoder": gb("decoder", decoder_dtype),
        },
    }


# ---- the 2B table ------------------------------------------------------------------------


def analyse(inputs: str, joints: int = 7) -> dict[str, Any]:
    """Tokens, GFLOPs per stage and weight memory of the 2B `paper` preset at `inputs`."""
    config = INPUTS[inputs].apply(
        policy_preset("paper", joint_names=[f"joint{i}" for i in range(1, joints + 1)]))
    backbone = config.backbone
    tokens = math.prod(backbone.token_grid)
    decoder = decoder_flops(config.decoder, tokens)
    stages = stage_flops(config)
    arch = get_architecture(ARCH_2B)
    blocks = backbone.read_layer + 1
    savings = {
        f"AdaLN per frame, not per token, {blocks} blocks":
            (adaln_flops(arch, tokens, blocks)
             - adaln_flops(arch, backbone.token_grid[0], blocks)) / 1e9,
    }
    return {
        "inputs": inputs,
        "why": INPUTS[inputs].why,
        "frames": {"height": backbone.height, "width": backbone.width,
                   "history": backbone.history_frames,
                   "future": backbone.future_latent_frames * VAE_TEMPORAL_FACTOR,
                   "future_seconds": future_seconds(config),
                   "chunk_seconds": chunk_seconds(config), "fps": config.fps},
        "token_grid": list(backbone.token_grid),
        "tokens": tokens,
        "text_tokens": backbone.text_max_tokens,
        "read_layer": backbone.read_layer,
        "gflops": {name: f.total / 1e9 for name, f in stages.items()},
        "attention_share": {name: f.attention / f.total for name, f in stages.items()
                            if f.total},
        "decoder_gflops": {"once": decoder.once.total / 1e9,
                           "per_step": decoder.per_step.total / 1e9,
                           "once_video_kv": decoder.context_kv / 1e9},
        "exact_savings_gflops": savings,
        "floor_ms_at_datasheet_rate": {
            name: f.total / (H100_DENSE_BF16_TFLOPS * 1e12) * 1e3 for name, f in stages.items()},
        "weights": weight_memory(config),
    }


def _table(tables: dict[str, dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(label, one cell per input) rows of the printed table."""
    first = next(iter(tables.values()))
    rows = [("tokens (T x h x w)", [f"{'x'.join(map(str, t['token_grid']))} = {t['tokens']}"
                                    for t in tables.values()])]
    rows += [(f"{name} GFLOP", [f"{t['gflops'][name]:,.0f}" for t in tables.values()])
             for name in first["gflops"]]
    rows.append(("decoder GFLOP once per chunk (video K,V) / per step", [
        f"{t['decoder_gflops']['once']:,.0f} ({t['decoder_gflops']['once_video_kv']:,.0f}) / "
        f"{t['decoder_gflops']['per_step']:,.0f}" for t in tables.values()]))
    rows += [(f"saving GFLOP, {name}", [f"{t['exact_savings_gflops'][name]:,.0f}"
                                              for t in tables.values()])
             for name in first["exact_savings_gflops"]]
    rows.append((f"predict() floor at {H100_DENSE_BF16_TFLOPS:.0f} TFLOP/s, ms", [
        f"{t['floor_ms_at_datasheet_rate']['predict() end to end']:.1f}"
        for t in tables.values()]))
    rows += [(f"weights {key.replace('_', ' ')}, GB", [f"{t['weights']['gb'][key]:.2f}"
                                                       for t in tables.values()])
             for key in ("as_built", "without_unused_parts", "without_unused_parts_vae_bf16")]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=list(INPUTS))
    args = parser.parse_args()
    tables = {name: analyse(name) for name in args.inputs}
    print("analytic (from the configs, batch 1; nothing measured)")
    print(f"{'':<58}" + "".join(f"{name:>20}" for name in tables))
    for label, cells in _table(tables):
        print(f"{label:<58}" + "".join(f"{cell:>20}" for cell in cells))
    write_result("flops_2b_analytic", {
        "benchmark": "flops",
        "kind": "analytic",
        "note": "FLOPs (2 per multiply-add of dense layers, convolutions, attention products; "
                "elementwise work not counted) and weight bytes from the configs alone, "
                "batch 1, the 2B architecture; the floor uses the H100 datasheet dense bf16 "
                "rate. Nothing here is measured.",
        "configs": tables,
    })


if __name__ == "__main__":
    main()
