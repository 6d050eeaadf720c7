"""The video backbone: pipeline-faithful inputs, the truncated pass, presets and checkpoints.

Real diffusers `CosmosTransformer3DModel` / `AutoencoderKLWan` with tiny random weights; the
2B preset is only sized, on the meta device.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from diffusers import AutoencoderKLWan, CosmosTransformer3DModel

from vam_policy.model.backbone import SIGMA_CONDITIONING, VideoBackbone
from vam_policy.model.backbone_config import (
    BackboneConfig,
    get_architecture,
    get_backbone_config,
)

BATCH = 2
TEXT_LEN = 6


@pytest.fixture(scope="module")
def tiny() -> VideoBackbone:
    torch.manual_seed(0)
    return VideoBackbone.build(get_backbone_config("tiny")).eval()


def _frames(config: BackboneConfig, num_frames: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (BATCH, 3, num_frames, config.height, config.width)
    return torch.rand(shape, generator=generator) * 2 - 1


def _latents(backbone: VideoBackbone, frames: int, seed: int) -> torch.Tensor:
    height, width = backbone.config.latent_size
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, 16, frames, height, width, generator=generator)


@pytest.fixture(scope="module")
def history(tiny: VideoBackbone) -> torch.Tensor:
    return tiny.encode_video(_frames(tiny.config, tiny.config.history_frames))


@pytest.fixture(scope="module")
def future(tiny: VideoBackbone) -> torch.Tensor:
    return _latents(tiny, tiny.config.future_latent_frames, seed=1)


@pytest.fixture(scope="module")
def text(tiny: VideoBackbone) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings with the last two positions of sample 1 padded (zeroed), and their mask."""
    embeds = torch.randn(BATCH, TEXT_LEN, tiny.text_embed_dim, generator=torch.Generator())
    mask = torch.ones(BATCH, TEXT_LEN, dtype=torch.bool)
    mask[1, -2:] = False
    return embeds * mask[..., None], mask


def _seed(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _block_output_in_full_forward(
    backbone: VideoBackbone, inputs, text_embeds, text_mask, fps: int | None
) -> torch.Tensor:
    """Block `read_layer`'s output captured by a hook during the unmodified diffusers forward."""
    captured: list[torch.Tensor] = []
    block = backbone.transformer.transformer_blocks[backbone.config.read_layer]
    hook = block.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        backbone.transformer(
            hidden_states=inputs.latent_video,
            timestep=inputs.timestep,
            encoder_hidden_states=text_embeds,
            attention_mask=text_mask,
            fps=fps,
            condition_mask=inputs.condition_mask,
            padding_mask=torch.zeros(1, 1, backbone.config.height, backbone.config.width),
            return_dict=False,
        )
    finally:
        hook.remove()
    return captured[0]


def _learnable_pos_backbone(read_layer: int) -> VideoBackbone:
    """The tiny preset with Cosmos 1's learnable positional embedding, made non-zero."""
    torch.manual_seed(1)
    config = get_backbone_config("tiny", read_layer=read_layer)
    spec = dataclasses.replace(
        get_architecture("tiny").transformer, extra_pos_embed_type="learnable"
    )
    transformer = CosmosTransformer3DModel(**spec.diffusers_kwargs())
    for param in transformer.learnable_pos_embed.parameters():
        torch.nn.init.normal_(param)
    vae = AutoencoderKLWan(**get_architecture("tiny").vae.diffusers_kwargs())
    return VideoBackbone(config, transformer, vae).eval()


@pytest.mark.parametrize(
    ("variant", "read_layer", "tau_v", "masked"),
    [
        ("preset", 2, 1.0, False),
        ("preset", 0, [0.3, 0.9], True),
        ("preset", 3, 0.4, False),
        ("learnable-pos", 1, [1.0, 0.2], True),
    ],
)
@torch.no_grad()
def test_truncated_pass_equals_block_output_of_full_forward(
    tiny, history, future, text, variant, read_layer, tau_v, masked
):
    """The hand-run prefix (patch embed, RoPE, time embedding, blocks 0..k) must be the full
    forward's block k, or the decoder trains on features the backbone never makes."""
    if variant == "preset":
        backbone = VideoBackbone(
            dataclasses.replace(tiny.config, read_layer=read_layer), tiny.transformer, tiny.vae
        )
    else:
        backbone = _learnable_pos_backbone(read_layer)
    tau = torch.tensor(tau_v) if isinstance(tau_v, list) else tau_v
    text_embeds, text_mask = text[0], (text[1] if masked else None)
    inputs = backbone.prepare_inputs(history, tau, future, _seed())

    features = backbone.features_from_inputs(inputs, text_embeds, text_mask)
    reference = _block_output_in_full_forward(backbone, inputs, text_embeds, text_mask, fps=None)

    assert torch.allclose(features, reference, rtol=1e-5, atol=1e-6)
    assert torch.equal(
        features, backbone.features(history, text_embeds, tau, future, _seed(), text_mask)
    )


@torch.no_grad()
def test_features_use_no_fps_rope_rescale(tiny, history, text):
    """The pipeline's fps=16 stretches temporal RoPE; released Predict2 weights never saw it."""
    inputs = tiny.prepare_inputs(history, generator=_seed())
    features = tiny.features_from_inputs(inputs, text[0])
    rescaled = _block_output_in_full_forward(tiny, inputs, text[0], None, fps=16)
    assert not torch.allclose(features, rescaled, atol=1e-4)


@torch.no_grad()
def test_features_shape_is_batch_tokens_hidden(tiny, history, text):
    config = tiny.config
    tokens = config.latent_frames * (config.height // 16) * (config.width // 16)
    features = tiny.features(history, text[0], generator=_seed())
    assert tiny.num_feature_tokens == tokens == (2 + 2) * 2 * 2
    assert tiny.feature_dim == 2 * 16
    assert features.shape == (BATCH, tokens, tiny.feature_dim)


def test_prepare_inputs_follow_pipeline_convention(tiny, history, future):
    """Clean history at t_conditioning; future x_tau = (1 - tau) x0 + tau eps at timestep tau."""
    tau = torch.tensor([0.25, 0.75])
    inputs = tiny.prepare_inputs(history, tau, future, _seed(3))
    eps = torch.randn(future.shape, generator=_seed(3))
    expected_future = (1 - tau.view(-1, 1, 1, 1, 1)) * future + tau.view(-1, 1, 1, 1, 1) * eps
    hist_t = tiny.config.history_latent_frames

    assert torch.equal(inputs.latent_video[:, :, :hist_t], history)
    assert torch.allclose(inputs.latent_video[:, :, hist_t:], expected_future, atol=1e-6)
    t_cond = SIGMA_CONDITIONING / (1 + SIGMA_CONDITIONING)
    assert inputs.timestep.shape == (BATCH, 1, tiny.config.latent_frames, 1, 1)
    assert torch.allclose(inputs.timestep[:, 0, :hist_t, 0, 0], torch.full((BATCH, hist_t), t_cond))
    assert torch.equal(inputs.timestep[:, 0, hist_t:, 0, 0], tau[:, None].expand(-1, 2))
    assert inputs.condition_mask[:, :, :hist_t].eq(1).all()
    assert inputs.condition_mask[:, :, hist_t:].eq(0).all()


@torch.no_grad()
def test_tau_below_one_requires_future_latents_and_changes_features(tiny, history, future, text):
    with pytest.raises(ValueError, match="future_latents: expected ground-truth"):
        tiny.features(history, text[0], tau_v=0.5)
    with pytest.raises(ValueError, match="future_latents"):
        tiny.features(history, text[0], tau_v=torch.tensor([1.0, 0.99]))

    at_one = tiny.features(history, text[0], 1.0, generator=_seed())
    at_half = tiny.features(history, text[0], 0.5, future, _seed())
    other_future = tiny.features(history, text[0], 0.5, future + 1.0, _seed())
    assert not torch.allclose(at_one, at_half, atol=1e-4)
    assert not torch.allclose(at_half, other_future, atol=1e-4)


@torch.no_grad()
def test_tau_one_is_reproducible_with_a_generator(tiny, history, text):
    first = tiny.features(history, text[0], generator=_seed(7))
    again = tiny.features(history, text[0], generator=_seed(7))
    other_noise = tiny.features(history, text[0], generator=_seed(8))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other_noise, atol=1e-4)


@torch.no_grad()
def test_encode_video_normalizes_like_the_pipeline_and_is_causal(tiny):
    """Latents are (mean - latents_mean) / latents_std; the first latents of a clip do not
    depend on later frames, which is why history_frames must be 1 + 4*m."""
    config = tiny.config
    clip = _frames(config, 9)
    latents = tiny.encode_video(clip)

    raw = tiny.vae.encode(clip).latent_dist.mode()
    mean = torch.tensor(tiny.vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(tiny.vae.config.latents_std).view(1, 16, 1, 1, 1)
    assert latents.shape == (BATCH, 16, 3, config.height // 8, config.width // 8)
    assert torch.allclose(latents, (raw - mean) / std, atol=1e-6)
    assert torch.allclose(tiny.encode_video(clip[:, :, :5]), latents[:, :, :2], atol=1e-5)


@torch.no_grad()
def test_calibrated_statistics_do_not_depend_on_the_thread_count():
    """calibrate_latents normalizes the clips' latents to about zero mean and unit std, and
    gives the same statistics with 1 or 2 threads (the latent cache's fingerprint hashes
    them)."""
    backbone = VideoBackbone.build(get_backbone_config("tiny")).eval()
    clips = [_frames(backbone.config, 5, seed=s) for s in range(3)]
    threads = torch.get_num_threads()
    stats = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            backbone.calibrate_latents(iter(clips))
            stats.append((backbone.vae.config.latents_mean, backbone.vae.config.latents_std))
    finally:
        torch.set_num_threads(threads)
    assert stats[0] == stats[1]
    latents = torch.cat([backbone.encode_video(c) for c in clips]).transpose(0, 1).flatten(1)
    assert latents.mean(1).abs().max() < 0.01
    assert (latents.std(1) - 1).abs().max() < 0.01


def test_save_then_from_pretrained_gives_identical_features(tiny, history, text, tmp_path):
    saved = tiny.save_pretrained(tmp_path / "backbone")
    assert (tmp_path / "backbone" / "transformer" / "config.json").is_file()
    assert (tmp_path / "backbone" / "vae" / "config.json").is_file()
    assert saved.source == str((tmp_path / "backbone").resolve())

    loaded = VideoBackbone.build(saved).eval()
    frames = _frames(tiny.config, 5, seed=4)
    with torch.no_grad():
        assert torch.equal(loaded.encode_video(frames), tiny.encode_video(frames))
        assert torch.equal(
            loaded.features(history, text[0], generator=_seed()),
            tiny.features(history, text[0], generator=_seed()),
        )


@torch.no_grad()
def test_denoise_is_the_full_transformer(tiny, history, text):
    inputs = tiny.prepare_inputs(history, generator=_seed())
    out = tiny.denoise(inputs.latent_video, inputs.timestep, text[0], inputs.condition_mask)
    direct = tiny.transformer(
        hidden_states=inputs.latent_video,
        timestep=inputs.timestep,
        encoder_hidden_states=text[0],
        fps=None,
        condition_mask=inputs.condition_mask,
        padding_mask=torch.zeros(1, 1, 4, 4),
        return_dict=False,
    )[0]
    assert out.shape == inputs.latent_video.shape
    assert torch.equal(out, direct)


def test_bfloat16_features_come_out_in_bfloat16(history, text):
    torch.manual_seed(0)
    backbone = VideoBackbone.build(get_backbone_config("tiny", dtype="bfloat16"))
    with torch.no_grad():
        features = backbone.features(history, text[0], generator=_seed())
    assert backbone.transformer.dtype == torch.bfloat16
    assert backbone.vae.dtype == torch.float32
    assert features.dtype == torch.bfloat16 and torch.isfinite(features).all()


def test_bad_inputs_say_what_was_expected(tiny, history, text):
    config = tiny.config
    with pytest.raises(ValueError, match=r"frames: expected shape \[B, 3, 1 \+ 4\*m, 32, 32\]"):
        tiny.encode_video(torch.zeros(1, 3, 5, 32, 48))
    with pytest.raises(ValueError, match=r"frames: expected shape \[B, 3,"):
        tiny.encode_video(torch.zeros(1, 4, 5, 32, 32))
    with pytest.raises(ValueError, match=r"frames: expected shape \[B, 3, 1 \+ 4\*m"):
        tiny.encode_video(torch.zeros(1, 3, 4, 32, 32))
    with pytest.raises(ValueError, match=r"history_latents: expected shape \[B, 16, 2, 4, 4\]"):
        tiny.features(history[:, :15], text[0])
    with pytest.raises(ValueError, match=r"text_embeds: expected shape \[2, L, 384\]"):
        tiny.features(history, text[0][..., :100])
    with pytest.raises(ValueError, match=r"tau_v: expected flow times in \[0, 1\]"):
        tiny.features(history, text[0], tau_v=1.5)
    with pytest.raises(ValueError, match=r"read_layer: expected 0\.\.3 for preset 'tiny'"):
        get_backbone_config("tiny", read_layer=4)
    pretrained_like = dataclasses.replace(config, source="someone/model", read_layer=4)
    with pytest.raises(ValueError, match=r"read_layer: expected 0\.\.3 for a transformer with 4"):
        VideoBackbone(pretrained_like, tiny.transformer, tiny.vae)


def test_cosmos_predict2_2b_preset_has_the_real_size_on_meta():
    """The 2B preset is the released architecture: ~1.96e9 transformer parameters, 28 blocks,
    width 2048, and the paper's 5 + 56 frames at 480x640 give 19,200 tokens."""
    with torch.device("meta"):
        backbone = VideoBackbone.from_config(get_backbone_config("cosmos-predict2-2b"))
    transformer_params = sum(p.numel() for p in backbone.transformer.parameters())
    vae_params = sum(p.numel() for p in backbone.vae.parameters())
    assert all(p.is_meta for p in backbone.parameters())
    assert abs(transformer_params - 1.96e9) / 1.96e9 < 0.02
    assert abs(vae_params - 127e6) / 127e6 < 0.02
    assert len(backbone.transformer.transformer_blocks) == 28
    assert backbone.feature_dim == 2048
    assert backbone.text_embed_dim == 1024
    assert backbone.num_feature_tokens == 19_200
    assert backbone.transformer.dtype == torch.bfloat16


def test_preset_typos_get_a_suggestion():
    with pytest.raises(ValueError, match="Did you mean 'cosmos-predict2-2b'"):
        get_backbone_config("cosmos-predict-2b")
    with pytest.raises(
        ValueError, match=r"source: Unknown backbone preset 'tinyy'\. Did you mean 'tiny'"
    ):
        BackboneConfig(source="tinyy")
    with pytest.raises(ValueError, match="Did you mean 'minilm'"):
        get_backbone_config("tiny", text_encoder="minilmm")


def test_config_round_trips_through_json_and_rejects_bad_values(tmp_path, monkeypatch):
    config = get_backbone_config("tiny", tau_v=0.4)
    assert BackboneConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown fields \\['read_leyer'\\]"):
        BackboneConfig.from_dict({**config.to_dict(), "read_leyer": 3})
    with pytest.raises(ValueError, match=r"history_frames: expected 1 \+ 4\*m"):
        get_backbone_config("tiny", history_frames=4)
    with pytest.raises(ValueError, match="height: expected a positive multiple of 16"):
        get_backbone_config("tiny", height=40)
    (tmp_path / "my_checkpoint").mkdir()
    monkeypatch.chdir(tmp_path)
    assert BackboneConfig(source="my_checkpoint").source == "my_checkpoint"
