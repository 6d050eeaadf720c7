"""Side by side with mimic-video (PyPI): observation -> action chunk, and one training step.

    python benchmarks/bench_mimic_video.py [--sizes tiny sim] [--repeats 30] [--threads 1]

mimic-video is not a dependency of this project. Its own dependencies (x-transformers, einx,
...) are not in the main venv, so install it beside it, into a scratch folder put on
PYTHONPATH; pip then changes nothing in .venv (torch, diffusers, transformers and peft come
from there):

    pip install --no-deps --target /tmp/mimic_pkgs mimic-video==0.5.8 einx==0.4.3 \\
        hl-gauss-pytorch==0.3.0 torch-einops-utils==0.2.0 x-transformers==2.31.10 \\
        assoc-scan==0.0.6 ema-pytorch==0.8.3 x-mlps-pytorch==0.6.9 accelerated-scan==0.3.1 \\
        loguru==0.7.3 frozendict==2.5.1
    PYTHONPATH=/tmp/mimic_pkgs:$PYTHONPATH python benchmarks/bench_mimic_video.py

(That list is what `pip install --dry-run mimic-video` would add to .venv; it up- or
downgrades nothing.) One process builds both models with random weights on the CPU and times
them round-robin, so load from other processes hits both alike and the ratios hold even where
the absolute times drift.

Matched sizes. Both use the same `CosmosTransformer3DModel` (our preset's width, depth, heads,
text width), the same Wan VAE shape, the same MiniLM text encoder, the same token count
(2 history + 2 future latent frames: 16 tokens at 32x32, 64 at 64x64), read at the same block
(`read_layer`), the same action horizon, dimension and flow steps, and an action head of the
same width, depth and heads (its tower still has ~1.6x our decoder's parameters: a GRU,
attention-pooled residuals, gated attention). Only the transformer's input channels differ,
because mimic-video cannot feed Cosmos-Predict2's (see below): it gets 16, ours 16 +
condition mask + padding mask. Sizes: "tiny" is the `tiny` policy preset (32x32); "sim" is
the same at 64x64, the `vam demo` policy.

What is timed. Inference: ours is `VAMPolicy.predict` (VAE on the history, the instruction's
cached embedding, backbone blocks 0..read_layer once, decoder flow steps). mimic-video is
`MimicVideo.sample` as shipped: each flow step calls the whole video path again (VAE encode,
text encoder, the full transformer; the hook keeps block `extract_layer`), at 10 steps (ours)
and at its default 16; plus the workaround its API allows, the wrapper run once and
`sample(video_hiddens=...)`. Training: one optimizer step on a batch. Ours as stage 2 trains
(frozen backbone, no grad): from cached latents, with the VAE on the history every batch
(`--no-cache`), and with the VAE on the whole 13-frame clip and tau_v drawn per sample (what
tau_v < 1 training needs, and what mimic-video's step does: it encodes the whole clip and
noises it to a random video time). mimic-video as its README trains (Adam on
`action_parameters()`, the video model's forward under autograd; its hook detaches the hidden
states, so no gradient reaches the video model either way), and with
`no_grad_video_model_forward=True`.

What mimic-video 0.5.8 could not do, measured here (the script re-runs these probes and writes
the errors into the JSON):
- Run a Cosmos-Predict2 transformer (16 latent + 1 condition-mask input channels and a
  concatenated padding-mask channel, `concat_padding_mask=True`): `CosmosPredictWrapper` calls
  the transformer without `padding_mask` or `condition_mask`. Inference (`sample`) and
  training both fail in torchvision's resize of the missing padding mask:
  "TypeError: Unexpected type <class 'NoneType'>". With the padding-mask channel switched off
  but the condition-mask channel kept, the patch embedding gets 16 channels instead of 17:
  "RuntimeError: mat1 and mat2 shapes cannot be multiplied (16x64 and 68x32)" (tiny sizes).
  Only a transformer with both channels removed runs, which is not the pretrained
  checkpoint's shape.
- Its random-weight wrapper (`CosmosPredictWrapper(random_weights=True)`) takes its tokenizer
  from the hub (google-t5/t5-small). Offline, transformers 5.24 builds an empty T5 tokenizer
  without an error (104 entries): every word becomes the unknown token, so instructions
  differ only in their word count ("lift the red cube" -> [3, 2, 3, 2, 3, 2, 3, 2, 1]).
  Here the wrapper is given our MiniLM encoder and tokenizer instead.
Read from its source, not run (needs weights from the hub): pretrained weights load only
through `CosmosVideoToWorldPipeline` (Cosmos 1.0's pipeline; default model
Cosmos-1.0-Diffusion-7B-Video2World), not Predict2's `Cosmos2VideoToWorldPipeline`; the
wrapper always runs all transformer blocks (the hook reads one, the rest still run); and
`sample(num_cached_steps=steps)` reuses the video hidden states across flow steps but also
the action tower's self-attention keys and GRU state, which changes the model's math.

Prints a table of medians and ratios and writes benchmarks/results/mimic_video_cpu.json.
On a CPU only ratios within one run mean something.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import traceback
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub

import numpy as np
import torch
from diffusers import CosmosTransformer3DModel
from results_io import write_result
from torch import nn

from vam_policy.machine import describe_machine
from vam_policy.model.backbone_config import ARCHITECTURES
from vam_policy.model.policy import VAMPolicy
from vam_policy.model.policy_config import PolicyConfig, policy_preset

try:
    from mimic_video import MimicVideo
    from mimic_video.cosmos_predict import CosmosPredictWrapper
except ImportError as error:  # pragma: no cover - depends on the optional install
    raise SystemExit(f"mimic-video is not importable ({error}); install it as the module "
                     "docstring says and put the folder on PYTHONPATH") from None

JOINTS = tuple(f"joint{i}" for i in range(1, 8))
INSTRUCTION = "lift the red cube"
FLOW_STEPS = 10
MIMIC_DEFAULT_STEPS = 16  # MimicVideo.sample(steps=16)
CLIP_FRAMES = 13  # 1 + 4*3 pixel frames: the VAE makes the 4 latent frames the transformer sees
SIZES = {"tiny": 32, "sim": 64}
PACKAGES = ("mimic-video", "x-transformers", "einx", "torch-einops-utils", "torch",
            "diffusers", "transformers", "numpy")


# ---- models -------------------------------------------------------------------------------

def build_ours(size: str) -> VAMPolicy:
    """The tiny policy preset at the frame size `size` names, random weights."""
    config: PolicyConfig = policy_preset("tiny", joint_names=JOINTS)
    side = SIZES[size]
    config = config.with_backbone(height=side, width=side)
    return VAMPolicy.build(config).eval()


def mimic_transformer(**changes: Any) -> CosmosTransformer3DModel:
    """Our tiny preset's Cosmos-Predict2 transformer, with constructor arguments changed."""
    return CosmosTransformer3DModel(
        **{**ARCHITECTURES["tiny"].transformer.diffusers_kwargs(), **changes})


def build_mimic(policy: VAMPolicy, transformer: CosmosTransformer3DModel) -> MimicVideo:
    """mimic-video around `transformer`, with copies of our VAE and MiniLM, and an action
    tower of our decoder's width, depth, heads, horizon and action dimension."""
    vae = copy.deepcopy(policy.backbone.vae)
    text_model = copy.deepcopy(policy.text_encoder.model)
    tokenizer = policy.text_encoder.tokenizer

    class GivenModules(CosmosPredictWrapper):
        """The wrapper, built from given modules instead of its fixed random configs."""

        def _init_random_weights(self, tiny: bool = False) -> None:
            self.transformer, self.vae = transformer, vae
            self.text_encoder, self.tokenizer = text_model, tokenizer
            self.vae_temporal_compression_ratio = 4
            self.vae_spatial_compression_ratio = 8
            self.vae_latent_channels = 16

    wrapper = GivenModules(extract_layer=policy.config.backbone.read_layer, random_weights=True)
    dec = policy.config.decoder
    return MimicVideo(
        dec.width, wrapper, depth=dec.depth, heads=dec.heads, dim_head=dec.width // dec.heads,
        attention_residual_dim_head=dec.width // dec.heads, expansion_factor=dec.mlp_ratio,
        action_chunk_len=dec.horizon, dim_action=dec.action_dim, dim_joint_state=len(JOINTS),
    )


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- what mimic-video cannot do ------------------------------------------------------------

def _error(error: Exception) -> str:
    """The error, where it was raised and the last diffusers / mimic-video line on the way."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames[:-1] if "diffusers" in f.filename or "mimic_video" in f.filename]
    where = [f"{Path(f.filename).name}:{f.lineno}" for f in [frames[-1], *ours[-1:]]]
    return f"{type(error).__name__}: {error} (raised in {', called from '.join(where)})"


def probe_limits(policy: VAMPolicy) -> list[dict[str, str]]:
    """Runs mimic-video on the transformer shapes Cosmos-Predict2 has; records what fails."""
    side = policy.config.backbone.height
    video = torch.rand(1, policy.config.history_frames, 3, side, side)
    clip = torch.rand(2, CLIP_FRAMES, 3, side, side)
    probes = []
    shapes = {
        "Cosmos-Predict2 (17 input channels + padding-mask channel)": {},
        "padding-mask channel only (16 input channels)": {"in_channels": 16},
        "condition-mask channel only (17 input channels, no padding mask)":
            {"concat_padding_mask": False},
    }
    for name, changes in shapes.items():
        model = build_mimic(policy, mimic_transformer(**changes))
        calls: dict[str, Callable[[], object]] = {
            "inference (sample)": lambda m=model: m.sample(
                steps=2, video=video, prompts=INSTRUCTION, joint_state=torch.zeros(1, 7),
                predict_num_future_latents=2, disable_progress_bar=True),
            "training forward": lambda m=model: m(
                prompts=[INSTRUCTION] * 2, video=clip, actions=torch.randn(2, *m.action_shape),
                joint_state=torch.zeros(2, 7)),
        }
        for stage, call in calls.items():
            try:
                call()
                outcome = "ran"
            except Exception as error:  # the error is the measurement
                outcome = _error(error)
            probes.append({"transformer": name, "stage": stage, "outcome": outcome})
    from transformers import T5TokenizerFast

    tokenizer = T5TokenizerFast.from_pretrained("google-t5/t5-small")
    ids = [tokenizer(text)["input_ids"] for text in ("lift the red cube", "open the drawer")]
    probes.append({
        "transformer": "stock random-weight wrapper, offline",
        "stage": "tokenizer (google-t5/t5-small)",
        "outcome": f"loads {len(tokenizer)} entries; 'lift the red cube' -> {ids[0]}, "
                   f"'open the drawer' -> {ids[1]}",
    })
    return probes


# ---- timing -------------------------------------------------------------------------------

def round_robin(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """ms per call of each fn; one warm-up each, then every repeat calls each fn once."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


# Row names; the ratios below refer to them.
OURS_PREDICT = f"ours: predict(), {FLOW_STEPS} flow steps"
MIMIC_SAMPLE = f"mimic-video: sample(), {FLOW_STEPS} flow steps"
MIMIC_DEFAULT = f"mimic-video: sample(), its default {MIMIC_DEFAULT_STEPS} steps"
MIMIC_ONCE = f"mimic-video: wrapper once + sample(video_hiddens), {FLOW_STEPS} steps"
OURS_CACHED = "ours: latent cache (stage-2 default)"
OURS_LIVE = "ours: VAE on the history every batch (--no-cache)"
OURS_CLIP = f"ours: VAE on the whole {CLIP_FRAMES}-frame clip, tau_v drawn"
MIMIC_README = "mimic-video: as its README (video forward under autograd)"
MIMIC_NO_GRAD = "mimic-video: no_grad_video_model_forward=True"
RATIOS = {
    "inference": ((MIMIC_SAMPLE, OURS_PREDICT), (MIMIC_DEFAULT, OURS_PREDICT),
                  (MIMIC_ONCE, OURS_PREDICT)),
    "training": ((MIMIC_README, OURS_CACHED), (MIMIC_README, OURS_CLIP),
                 (MIMIC_NO_GRAD, OURS_CLIP)),
}


def inference_fns(policy: VAMPolicy, mimic: MimicVideo) -> dict[str, Callable[[], object]]:
    """Observation (uint8 frames, joint state, instruction) -> action chunk, per model; then
    each model's two parts on their own: the video path once, the action head's flow steps."""
    cfg = policy.config.backbone
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (cfg.history_frames, cfg.height, cfg.width, 3), np.uint8)
    state = np.zeros(len(JOINTS))
    text = policy.embed_instructions([INSTRUCTION])  # the node caches it after the first call
    backbone, wrapper = policy.backbone, mimic.video_predict_wrapper
    future = cfg.future_latent_frames

    def mimic_inputs() -> tuple[torch.Tensor, torch.Tensor]:
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()[None] / 255.0
        return video, torch.from_numpy(state).float()[None]  # [1, T, 3, H, W], [1, J]

    def mimic_sample(steps: int) -> torch.Tensor:
        video, joints = mimic_inputs()
        return mimic.sample(steps=steps, video=video, prompts=INSTRUCTION, joint_state=joints,
                            predict_num_future_latents=future, disable_progress_bar=True)

    @torch.no_grad()
    def mimic_video_path() -> torch.Tensor:
        video, _ = mimic_inputs()
        wrapper.eval()
        return wrapper(video, prompts=INSTRUCTION, predict_num_future_latents=future)

    def mimic_head(hiddens: torch.Tensor) -> torch.Tensor:
        joints = torch.from_numpy(state).float()[None]
        return mimic.sample(steps=FLOW_STEPS, video_hiddens=hiddens, prompts=INSTRUCTION,
                            joint_state=joints, disable_progress_bar=True)

    @torch.no_grad()
    def ours_video_path() -> torch.Tensor:
        history = backbone.encode_video(policy.preprocess_frames(frames[None]))
        return backbone.features(history, text)

    features, hiddens = ours_video_path(), mimic_video_path()
    proprio, tau = torch.zeros(1, len(JOINTS)), torch.ones(1)
    return {
        OURS_PREDICT: lambda: policy.predict(frames, state, INSTRUCTION, flow_steps=FLOW_STEPS),
        MIMIC_SAMPLE: lambda: mimic_sample(FLOW_STEPS),
        MIMIC_DEFAULT: lambda: mimic_sample(MIMIC_DEFAULT_STEPS),
        MIMIC_ONCE: lambda: mimic_head(mimic_video_path()),
        "part, ours: video path once (VAE, blocks 0..read_layer)": ours_video_path,
        "part, mimic-video: video path once (VAE, text, all blocks)": mimic_video_path,
        f"part, ours: decoder, {FLOW_STEPS} flow steps": torch.no_grad()(
            lambda: policy.decoder.sample(features, proprio, tau, steps=FLOW_STEPS, text=text)),
        f"part, mimic-video: action tower, {FLOW_STEPS} flow steps": lambda: mimic_head(hiddens),
    }


def training_fns(policy: VAMPolicy, mimic: MimicVideo,
                 batch: int) -> dict[str, Callable[[], object]]:
    """One optimizer step on a batch of `batch` samples, per model and mode."""
    cfg = policy.config.backbone
    backbone, decoder = policy.backbone, policy.decoder
    backbone.requires_grad_(False).eval()
    decoder.train()
    horizon, joints = policy.config.horizon, len(JOINTS)
    clip = torch.rand(batch, CLIP_FRAMES, 3, cfg.height, cfg.width)  # [B, T, 3, H, W] in [0, 1]
    ours_clip = (clip * 2.0 - 1.0).transpose(1, 2).contiguous()  # [B, 3, T, H, W] in [-1, 1]
    ours_history = ours_clip[:, :, : cfg.history_frames]
    cached = backbone.encode_video(ours_history)
    text = policy.embed_instructions([INSTRUCTION] * batch)
    proprio, actions = torch.zeros(batch, joints), torch.randn(batch, horizon, joints)
    generator = torch.Generator().manual_seed(0)
    params = [p for p in decoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    history_t = cfg.history_latent_frames

    def ours_step(history: torch.Tensor, future: torch.Tensor | None, tau_v: torch.Tensor) -> None:
        with torch.no_grad():
            features = backbone.features(history, text, tau_v, future, generator)
        loss = decoder.loss(features, proprio, actions, tau_v, generator=generator, text=text)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()

    def ours_whole_clip() -> None:
        latents = backbone.encode_video(ours_clip)  # [B, 16, 4, h, w]
        tau_v = torch.rand(batch, generator=generator)
        ours_step(latents[:, :, :history_t], latents[:, :, history_t:], tau_v)

    mimic.train()
    mimic_optimizer = torch.optim.Adam(mimic.action_parameters(), lr=1e-4)
    mimic_actions, mimic_joints = torch.randn(batch, *mimic.action_shape), torch.zeros(batch, 7)

    def mimic_step(no_grad_video: bool) -> None:
        loss = mimic(prompts=[INSTRUCTION] * batch, video=clip, actions=mimic_actions,
                     joint_state=mimic_joints, no_grad_video_model_forward=no_grad_video)
        mimic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        mimic_optimizer.step()

    ones = torch.ones(batch)
    return {
        OURS_CACHED: lambda: ours_step(cached, None, ones),
        OURS_LIVE: lambda: ours_step(backbone.encode_video(ours_history), None, ones),
        OURS_CLIP: ours_whole_clip,
        MIMIC_README: lambda: mimic_step(no_grad_video=False),
        MIMIC_NO_GRAD: lambda: mimic_step(no_grad_video=True),
    }


def _rows(times: dict[str, list[float]]) -> list[dict[str, Any]]:
    return [{"name": name, "median_ms": statistics.median(t), "min_ms": min(t)}
            for name, t in times.items()]


def _ratios(kind: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    median = {row["name"]: row["median_ms"] for row in rows}
    return [{"ratio": f"{slow} / {fast}", "value": median[slow] / median[fast]}
            for slow, fast in RATIOS[kind]]


def run_size(size: str, repeats: int, train_repeats: int, batch: int) -> dict[str, Any]:
    torch.manual_seed(0)
    policy = build_ours(size)
    mimic = build_mimic(policy, mimic_transformer(in_channels=16, concat_padding_mask=False))
    cfg = policy.config.backbone
    inference = _rows(round_robin(inference_fns(policy, mimic), repeats))
    training = _rows(round_robin(training_fns(policy, mimic, batch), train_repeats))
    return {
        "size": size,
        "input": {"history_frames": cfg.history_frames, "height": cfg.height,
                  "width": cfg.width, "tokens": policy.backbone.num_feature_tokens,
                  "read_layer": cfg.read_layer, "horizon": policy.config.horizon,
                  "action_dim": len(JOINTS), "flow_steps": FLOW_STEPS,
                  "training_batch": batch, "training_clip_frames": CLIP_FRAMES},
        "parameters": {
            "transformer, ours": _params(policy.backbone.transformer),
            "transformer, mimic-video": _params(mimic.video_predict_wrapper.transformer),
            "action decoder, ours": _params(policy.decoder),
            "action tower, mimic-video": sum(p.numel() for p in mimic.action_parameters()),
        },
        "inference": inference,
        "training": training,
        "ratios": _ratios("inference", inference) + _ratios("training", training),
    }


def _versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _print(result: dict[str, Any]) -> None:
    for size in result["sizes"]:
        print(f"\n{size['size']}: {size['input']['height']}x{size['input']['width']}, "
              f"{size['input']['tokens']} tokens, training batch {size['input']['training_batch']}")
        for kind in ("inference", "training"):
            print(f"{kind:<62} {'median ms':>10} {'min ms':>10}")
            for row in size[kind]:
                print(f"  {row['name']:<60} {row['median_ms']:>10.1f} {row['min_ms']:>10.1f}")
        for ratio in size["ratios"]:
            print(f"  ratio {ratio['value']:6.2f}x  {ratio['ratio']}")
    print("\nwhat mimic-video could not do:")
    for probe in result["mimic_video_limits"]:
        print(f"  {probe['transformer']}, {probe['stage']}: {probe['outcome']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=30, help="inference calls per variant")
    parser.add_argument("--train-repeats", type=int, default=20, help="steps per variant")
    parser.add_argument("--batch", type=int, default=8, help="training batch (idm:tiny's)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a 2-core machine more threads "
                        "than free cores makes every op many times slower)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [run_size(size, args.repeats, args.train_repeats, args.batch) for size in args.sizes]
    torch.manual_seed(0)
    limits = probe_limits(build_ours("tiny"))
    result = {
        "benchmark": "mimic-video side by side",
        "device": "cpu",
        "machine": describe_machine(),
        "torch_threads": torch.get_num_threads(),
        "packages": _versions(),
        "mimic_video_install": "pip install --no-deps --target DIR (the pins in the module "
                               "docstring), DIR on PYTHONPATH; the project venv unchanged",
        "repeats": {"inference": args.repeats, "training": args.train_repeats},
        "sizes": sizes,
        "mimic_video_limits": limits,
        "note": "CPU, both models timed round-robin in one process: compare ratios within "
                "this run only.",
    }
    _print(result)
    write_result("mimic_video_cpu", result)


if __name__ == "__main__":
    main()
