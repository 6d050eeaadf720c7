"""benchmarks/flops.py: its analytic FLOPs are what FlopCounterMode counts when the models run,
and its named benchmark inputs keep the deployment limits (input no smaller than 240x320, at
least 4 history frames, a future window covering the action chunk)."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable
from types import ModuleType

import pytest
import torch
from torch.utils import flop_counter

from conftest import REPO_ROOT
from vam_policy.model.backbone import BackboneInputs, VideoBackbone
from vam_policy.model.decoder import ActionDecoder
from vam_policy.model.policy_config import PolicyConfig, policy_preset

JOINTS = [f"joint{i}" for i in range(1, 8)]
# FlopCounterMode has no formula for the CPU flash-attention kernel F.sdpa picks on a CPU.
_CPU_SDPA = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *args, out_shape=None, **kwargs: flop_counter.sdpa_flop_count(q, k, v),
}


@pytest.fixture(scope="module")
def flops() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flops", REPO_ROOT / "benchmarks" / "flops.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _counted(fn: Callable[[], object]) -> int:
    with flop_counter.FlopCounterMode(display=False, custom_mapping=_CPU_SDPA) as counter:
        fn()
    return counter.get_total_flops()


@torch.no_grad()
def _measured(config: PolicyConfig, device: str, steps: tuple[int, ...]) -> dict[str, int]:
    """FlopCounterMode's count of each stage, run on `device` (real on a CPU; on `meta` only
    shapes exist, so inputs are built directly and the decoder's value checks are skipped)."""
    b = config.backbone
    with torch.device(device):
        backbone = VideoBackbone.from_config(b)
        decoder = ActionDecoder(config.decoder)
        video = torch.zeros(1, 3, b.history_frames, b.height, b.width)
        text = torch.randn(1, b.text_max_tokens, backbone.text_embed_dim)
        proprio, tau = torch.zeros(1, config.decoder.action_dim), torch.ones(1)
        x = torch.zeros(1, config.horizon, config.decoder.action_dim)
        latents = torch.zeros(1, 16, b.latent_frames, *b.latent_size)
    if device == "meta":
        dtype = backbone.transformer.dtype
        prepared = BackboneInputs(latents.to(dtype), latents[:, :1, :, :1, :1].to(dtype),
                                  latents[:, :1].to(dtype))
    else:
        prepared = backbone.prepare_inputs(backbone.encode_video(video))
    features = backbone.features_from_inputs(prepared, text).to(decoder.pos_embed.dtype)
    decoder_text = text if config.decoder.text_dim else None

    def sample(n: int) -> None:
        if device != "meta":
            decoder.sample(features, proprio, tau, steps=n, noise=x, text=decoder_text)
            return
        condition = decoder.condition(features, None, proprio)
        for _ in range(n):
            decoder.conditioned_velocity(x, tau, condition, proprio, tau)

    counts = {
        "VAE encode history": _counted(lambda: backbone.encode_video(video)),
        f"backbone blocks 0..{b.read_layer}":
            _counted(lambda: backbone.features_from_inputs(prepared, text)),
        "backbone, whole transformer": _counted(lambda: backbone.denoise(
            prepared.latent_video, prepared.timestep, text, prepared.condition_mask)),
    }
    counts.update({f"decoder, {n} flow steps": _counted(lambda n=n: sample(n)) for n in steps})
    return counts


def test_tiny_preset_analytic_flops_match_flop_counter(flops: ModuleType) -> None:
    """On the tiny preset run for real on the CPU, every stage's analytic FLOPs (VAE encode,
    backbone prefix, whole transformer, decoder at 10 and 1 flow steps) are within 2% of what
    FlopCounterMode counts."""
    config = policy_preset("tiny", joint_names=JOINTS)
    analytic = flops.stage_flops(config, steps=(10, 1))
    for stage, counted in _measured(config, "cpu", (10, 1)).items():
        assert counted > 0, stage
        assert analytic[stage].total == pytest.approx(counted, rel=0.02), stage


def test_2b_shape_analytic_flops_match_flop_counter_on_meta(flops: ModuleType) -> None:
    """At the 2B architecture and the deploy inputs, counted on the meta device (no memory, no
    arithmetic), the analytic FLOPs of each stage are within 2%: the formulas hold at the
    shapes the GPU table is made of, not only at toy sizes."""
    config = flops.INPUTS["deploy"].apply(policy_preset("paper", joint_names=JOINTS))
    config = config.with_backbone(source=flops.architecture_of(config.backbone))
    analytic = flops.stage_flops(config, steps=(1,))
    for stage, counted in _measured(config, "meta", (1,)).items():
        assert analytic[stage].total == pytest.approx(counted, rel=0.02), stage


def test_named_inputs_keep_the_deployment_limits(flops: ModuleType) -> None:
    """`paper` is the paper's 5 + 56 frames at 480x640 = 19,200 tokens; `deploy` is at least
    240x320, has at least 4 history frames, and its future window covers the action chunk."""
    paper_preset = policy_preset("paper", joint_names=JOINTS)
    paper = flops.INPUTS["paper"].apply(paper_preset).backbone
    assert (paper.height, paper.width, paper.history_frames) == (480, 640, 5)
    assert paper.future_latent_frames * 4 == 56
    assert math.prod(paper.token_grid) == 19_200
    deploy = flops.INPUTS["deploy"].apply(paper_preset)
    assert deploy.backbone.height >= 240 and deploy.backbone.width >= 320
    assert deploy.backbone.history_frames >= 4
    assert flops.future_seconds(deploy) >= flops.chunk_seconds(deploy) == pytest.approx(3.0)


def test_2b_weight_memory_matches_the_paper_sizes(flops: ModuleType) -> None:
    """Counted on the meta device: the transformer has the paper's ~1.96 B parameters and the
    Wan VAE ~127 M, so the weight-memory table is of the real architecture."""
    memory = flops.weight_memory(policy_preset("paper", joint_names=JOINTS))
    assert memory["params"]["transformer"] == pytest.approx(1.96e9, rel=0.01)
    assert memory["params"]["vae"] == pytest.approx(127e6, rel=0.01)
    assert memory["gb"]["transformer"] == pytest.approx(2 * memory["params"]["transformer"] / 1e9)
