"""The video backbone: Cosmos-Predict2 Video2World read at one intermediate block.

The action decoder reads the hidden states that block `read_layer` outputs while the transformer
looks at clean history latents plus future latents at flow time tau_v. Only blocks
0..read_layer run. Inputs are prepared exactly as diffusers' `Cosmos2VideoToWorldPipeline`
prepares them, with tau_v as the future frames' flow time. The diffusers transformer and VAE are
kept unmodified so peft can wrap them and their `from_pretrained` / `save_pretrained` apply.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, CosmosTransformer3DModel
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from vam_policy.model.backbone_config import (
    LATENT_CHANNELS,
    VAE_TEMPORAL_FACTOR,
    BackboneConfig,
    get_architecture,
    is_preset,
    torch_dtype,
)

# RoPE fps, the one place it is decided for training and inference alike. The diffusers
# pipeline passes fps, which rescales temporal RoPE positions by base_fps / fps; the released
# Predict2 checkpoints were not trained with that rescale (diffusers issue 14768), so none.
ROPE_FPS: int | None = None

SIGMA_DATA = 1.0
"""The pipeline's sigma_data: normalized latents are scaled by it."""
SIGMA_CONDITIONING = 1e-4
"""The pipeline's sigma for the clean conditioning frames; their flow time is s / (s + 1)."""


@dataclass(frozen=True)
class BackboneInputs:
    """The transformer's inputs, as the Video2World pipeline builds them for one step."""

    latent_video: torch.Tensor
    """[B, 16, T, h, w] clean history latents, then future latents at their flow time."""
    timestep: torch.Tensor
    """[B, 1, T, 1, 1] flow time per latent frame; history frames get t_conditioning."""
    condition_mask: torch.Tensor
    """[B, 1, T, h, w] 1 on history frames, 0 on future frames."""


def _cast(model: CosmosTransformer3DModel | AutoencoderKLWan, dtype: torch.dtype) -> None:
    """Casts in place, keeping the model's float32-only modules (as `from_pretrained` does)."""
    keep = model._keep_in_fp32_modules or []
    for name, child in model.named_children():
        if name not in keep:
            child.to(dtype)


def _shape_error(name: str, expected: str, tensor: torch.Tensor) -> ValueError:
    return ValueError(f"{name}: expected shape {expected}, got {list(tensor.shape)}")


class VideoBackbone(nn.Module):
    """Cosmos-Predict2 Video2World transformer + Wan 2.1 VAE, read at block `read_layer`.

    Build with `VideoBackbone.build(config)`. `encode_video` turns frames into normalized
    latents; `features` returns block `read_layer`'s hidden states `[B, N, hidden]`; `denoise`
    runs the whole transformer for stage-1 (video) training.
    """

    def __init__(
        self, config: BackboneConfig, transformer: CosmosTransformer3DModel, vae: AutoencoderKLWan
    ) -> None:
        super().__init__()
        self.config = config
        self.transformer = transformer
        self.vae = vae
        self._check_modules()

    def _check_modules(self) -> None:
        tc = self.transformer.config
        if tc.in_channels != LATENT_CHANNELS + 1 or not tc.concat_padding_mask:
            raise ValueError(
                "transformer: expected a Video2World transformer with in_channels "
                f"{LATENT_CHANNELS + 1} (latents + condition mask) and concat_padding_mask, got "
                f"in_channels {tc.in_channels}, concat_padding_mask {tc.concat_padding_mask}"
            )
        if tc.use_crossattn_projection or tc.img_context_dim_in or tc.patch_size[0] != 1:
            raise ValueError(
                "transformer: expected a Cosmos-Predict2 transformer (no cross-attention "
                "projection, no image context, temporal patch 1); Cosmos 2.5 is not supported"
            )
        if self.vae.config.z_dim != LATENT_CHANNELS:
            raise ValueError(f"vae: expected z_dim {LATENT_CHANNELS}, got {self.vae.config.z_dim}")
        if not 0 <= self.config.read_layer < tc.num_layers:
            raise ValueError(
                f"read_layer: expected 0..{tc.num_layers - 1} for a transformer with "
                f"{tc.num_layers} blocks, got {self.config.read_layer}"
            )
        frames, (height, width) = self.config.latent_frames, self.config.latent_size
        max_t, max_h, max_w = tc.max_size
        if frames > max_t or height > max_h or width > max_w:
            raise ValueError(
                f"latent video: expected at most {list(tc.max_size)} latent (T, h, w) for this "
                f"transformer, got {[frames, height, width]}"
            )

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def build(cls, config: BackboneConfig) -> VideoBackbone:
        """Random weights for a preset `source`, pretrained weights for a hub id or folder."""
        if is_preset(config.source):
            return cls.from_config(config)
        return cls.from_pretrained(config)

    @classmethod
    def from_config(cls, config: BackboneConfig) -> VideoBackbone:
        """The preset architecture `config.source` with random weights.

        Build inside `with torch.device("meta"):` to size the real model without memory.
        """
        arch = get_architecture(config.source)
        transformer = CosmosTransformer3DModel(**arch.transformer.diffusers_kwargs())
        vae = AutoencoderKLWan(**arch.vae.diffusers_kwargs())
        _cast(transformer, torch_dtype(config.dtype))
        _cast(vae, torch_dtype(config.vae_dtype))
        return cls(config, transformer, vae)

    @classmethod
    def from_pretrained(cls, config: BackboneConfig) -> VideoBackbone:
        """Loads `transformer/` and `vae/` from the hub id or folder `config.source`.

        Honours HF_HUB_OFFLINE, so a cached or local copy loads without network.
        """
        transformer = CosmosTransformer3DModel.from_pretrained(
            config.source, subfolder="transformer", torch_dtype=torch_dtype(config.dtype)
        )
        vae = AutoencoderKLWan.from_pretrained(
            config.source, subfolder="vae", torch_dtype=torch_dtype(config.vae_dtype)
        )
        return cls(config, transformer, vae)

    def save_pretrained(self, folder: str | Path) -> BackboneConfig:
        """Writes the hub layout (`transformer/`, `vae/`); returns a config that loads it back."""
        folder = Path(folder)
        self.transformer.save_pretrained(folder / "transformer")
        self.vae.save_pretrained(folder / "vae")
        return replace(self.config, source=str(folder.resolve()))

    # ---- sizes ----------------------------------------------------------------------------

    @property
    def feature_dim(self) -> int:
        """Width of each feature token (the transformer's hidden size)."""
        tc = self.transformer.config
        return tc.num_attention_heads * tc.attention_head_dim

    @property
    def num_feature_tokens(self) -> int:
        """N in `features`' `[B, N, hidden]`: T' * (h / 2) * (w / 2)."""
        p_t, p_h, p_w = self.transformer.config.patch_size
        height, width = self.config.latent_size
        return (self.config.latent_frames // p_t) * (height // p_h) * (width // p_w)

    @property
    def text_embed_dim(self) -> int:
        """Width of the text embeddings the transformer cross-attends to."""
        return self.transformer.config.text_embed_dim

    # ---- video -> latents -----------------------------------------------------------------

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames `[B, 3, T, H, W]` in [-1, 1] -> normalized latents `[B, 16, T', H/8, W/8]`.

        T must be 1 + 4*m (T' = 1 + m); the causal VAE makes the first latents of a clip the
        same whether or not later frames follow, so history and full clips encode alike.
        Uses the posterior mean (deterministic, like the original Wan encoder), then the
        pipeline's normalization (z - latents_mean) / latents_std * sigma_data. float32 out.
        """
        latents = self._raw_latents(frames)  # [B, 16, T', H/8, W/8]
        view = (1, LATENT_CHANNELS, 1, 1, 1)
        mean = torch.tensor(self.vae.config.latents_mean, device=latents.device).view(view)
        std = torch.tensor(self.vae.config.latents_std, device=latents.device).view(view)
        return (latents - mean) / std * SIGMA_DATA

    def _raw_latents(self, frames: torch.Tensor) -> torch.Tensor:
        """The VAE posterior mean of frames `[B, 3, 1 + 4*m, H, W]`, unnormalized, float32."""
        height, width = self.config.height, self.config.width
        expected = f"[B, 3, 1 + 4*m, {height}, {width}]"
        if frames.ndim != 5 or frames.shape[1] != 3 or frames.shape[3:] != (height, width):
            raise _shape_error("frames", expected, frames)
        if (frames.shape[2] - 1) % VAE_TEMPORAL_FACTOR:
            raise _shape_error("frames", expected, frames)
        return self.vae.encode(frames.to(self.vae.dtype)).latent_dist.mode().float()

    @torch.no_grad()
    def calibrate_latents(self, clips: Iterable[torch.Tensor]) -> None:
        """Set the VAE's latent normalization to the per-channel mean and std of `clips`' latents.

        A pretrained VAE ships these statistics (Wan 2.1's, measured on its training videos);
        a random-weight VAE has none, and with Wan's its latents barely vary (about 1% of the
        unit scale of the noise the future frames start from). Measured on the robot's own
        frames, they put history latents at the scale the transformer expects. Each clip is
        `[B, 3, 1 + 4*m, H, W]` as `encode_video` takes it; saved with the VAE's config,
        rounded to 4 significant digits so that another thread count or BLAS, which moves the
        last bits of the sums, gives the same statistics (and the same latent cache).
        """
        latents = torch.cat([self._raw_latents(clip).transpose(0, 1).flatten(1)
                             for clip in clips], dim=1)  # [16, N]
        std = latents.std(dim=1).clamp_min(1e-6)
        self.vae.register_to_config(latents_mean=_significant(latents.mean(dim=1)),
                                    latents_std=_significant(std))

    # ---- latents -> features --------------------------------------------------------------

    def prepare_inputs(
        self,
        history_latents: torch.Tensor,
        tau_v: float | torch.Tensor | None = None,
        future_latents: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> BackboneInputs:
        """Clean history + future latents noised to flow time tau_v, as the transformer sees them.

        x_tau = (1 - tau) * x0 + tau * eps on the future frames (the pipeline's c_in-scaled
        sigma latents), timestep tau for them and t_conditioning for the history frames.
        tau_v: float or [B] tensor in [0, 1], default `config.tau_v`. Below 1 the ground-truth
        `future_latents` are required; at 1 they may be None (pure noise). Cast to the
        transformer's dtype, like the pipeline.
        """
        batch = self._check_latents("history_latents", history_latents, history=True)
        device = history_latents.device
        tau = self._tau(tau_v, batch, device)  # [B]
        future_shape = (
            batch,
            LATENT_CHANNELS,
            self.config.future_latent_frames,
            *self.config.latent_size,
        )
        if future_latents is None:
            if bool((tau < 1.0).any()):
                raise ValueError(
                    "future_latents: expected ground-truth future latents "
                    f"{list(future_shape)} when tau_v < 1 (tau_v = 1 alone may omit them)"
                )
            future_latents = torch.zeros(future_shape, device=device)
        elif self._check_latents("future_latents", future_latents, history=False) != batch:
            raise _shape_error("future_latents", str(list(future_shape)), future_latents)
        eps = randn_tensor(future_shape, generator=generator, device=device, dtype=torch.float32)
        tau_5d = tau.view(batch, 1, 1, 1, 1)
        future = (1.0 - tau_5d) * future_latents.float() + tau_5d * eps
        latent_video = torch.cat([history_latents.float(), future], dim=2)  # [B, 16, T, h, w]

        history_t = self.config.history_latent_frames
        frames = latent_video.shape[2]
        t_conditioning = SIGMA_CONDITIONING / (SIGMA_CONDITIONING + 1.0)
        is_history = torch.zeros(1, 1, frames, 1, 1, device=device)
        is_history[:, :, :history_t] = 1.0
        timestep = is_history * t_conditioning + (1.0 - is_history) * tau_5d  # [B, 1, T, 1, 1]
        condition_mask = is_history.expand(batch, 1, frames, *latent_video.shape[3:])
        dtype = self.transformer.dtype
        return BackboneInputs(
            latent_video=latent_video.to(dtype),
            timestep=timestep.to(dtype),
            condition_mask=condition_mask.to(dtype),
        )

    def features(
        self,
        history_latents: torch.Tensor,
        text_embeds: torch.Tensor,
        tau_v: float | torch.Tensor | None = None,
        future_latents: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Block `read_layer`'s hidden states `[B, T'*(h/2)*(w/2), hidden]` for the decoder.

        history_latents `[B, 16, T_hist, h, w]` and future_latents `[B, 16, T_fut, h, w]` come
        from `encode_video`; text_embeds `[B, L, text_embed_dim]` with padded positions zeroed.
        text_mask `[B, L]` (True = token) masks cross-attention; the Cosmos pipeline passes none.
        See `prepare_inputs` for tau_v. Output in the transformer's dtype.
        """
        inputs = self.prepare_inputs(history_latents, tau_v, future_latents, generator)
        return self.features_from_inputs(inputs, text_embeds, text_mask)

    forward = features

    def features_from_inputs(
        self,
        inputs: BackboneInputs,
        text_embeds: torch.Tensor,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The transformer's forward up to and including block `read_layer`, with its own modules.

        Steps mirror `CosmosTransformer3DModel.forward` 1-5 and 7, so the result equals that
        block's output inside the full forward.
        """
        tr = self.transformer
        latent_video = inputs.latent_video
        batch, _, frames, height, width = latent_video.shape
        text_embeds, text_mask = self._text(text_embeds, text_mask, batch)
        attention_mask = None if text_mask is None else text_mask[:, None, None, :]  # [B, 1, 1, L]

        # 1. Condition-mask and padding-mask channels: [B, 16 + 1 + 1, T, h, w]
        padding = self._padding_mask(latent_video).expand(batch, 1, frames, height, width)
        hidden = torch.cat([latent_video, inputs.condition_mask, padding], dim=1)

        # 2. Positional embeddings
        rotary_emb = tr.rope(hidden, fps=ROPE_FPS)
        extra_pos_emb = tr.learnable_pos_embed(hidden) if tr.config.extra_pos_embed_type else None

        # 3. Patchify: [B, T, h/2, w/2, C] -> [B, T*(h/2)*(w/2), C]
        _, p_h, p_w = tr.config.patch_size
        tokens = tr.patch_embed(hidden).flatten(1, 3)

        # 4. Per-frame time embeddings: [B*T, C] -> [B, T*(h/2)*(w/2), C]
        temb, embedded_timestep = tr.time_embed(tokens, inputs.timestep.flatten())
        temb, embedded_timestep = (
            x.view(batch, frames, 1, 1, -1)
            .expand(-1, -1, height // p_h, width // p_w, -1)
            .flatten(1, 3)
            for x in (temb, embedded_timestep)
        )

        # 7. Blocks 0..read_layer only
        for block in tr.transformer_blocks[: self.config.read_layer + 1]:
            tokens = block(
                tokens,
                text_embeds,
                embedded_timestep,
                temb,
                rotary_emb,
                extra_pos_emb,
                attention_mask,
            )
        return tokens

    def denoise(
        self,
        latent_video: torch.Tensor,
        timestep: torch.Tensor,
        text_embeds: torch.Tensor,
        condition_mask: torch.Tensor,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The whole transformer, for stage-1 video training: `[B, 16, T, h, w]` out.

        Inputs as `prepare_inputs` returns them. The output is the flow velocity eps - x0: the
        pipeline's denoised estimate is x0 = x_t - t * output.
        """
        if latent_video.ndim != 5 or latent_video.shape[1] != LATENT_CHANNELS:
            raise _shape_error("latent_video", f"[B, {LATENT_CHANNELS}, T, h, w]", latent_video)
        batch, _, frames, height, width = latent_video.shape
        if timestep.shape != (batch, 1, frames, 1, 1):
            raise _shape_error("timestep", f"[{batch}, 1, {frames}, 1, 1]", timestep)
        if condition_mask.shape != (batch, 1, frames, height, width):
            raise _shape_error(
                "condition_mask", f"[{batch}, 1, {frames}, {height}, {width}]", condition_mask
            )
        text_embeds, attention_mask = self._text(text_embeds, text_mask, batch)
        return self.transformer(
            hidden_states=latent_video,
            timestep=timestep,
            encoder_hidden_states=text_embeds,
            attention_mask=attention_mask,
            fps=ROPE_FPS,
            condition_mask=condition_mask,
            padding_mask=self._padding_mask(latent_video),
            return_dict=False,
        )[0]

    # ---- input checks ---------------------------------------------------------------------

    def _padding_mask(self, latent_video: torch.Tensor) -> torch.Tensor:
        """[1, 1, h, w] zeros: nothing padded; at latent size the resize is a no-op."""
        return latent_video.new_zeros(1, 1, *latent_video.shape[3:])

    def _check_latents(self, name: str, latents: torch.Tensor, history: bool) -> int:
        frames = self.config.history_latent_frames if history else self.config.future_latent_frames
        expected = (LATENT_CHANNELS, frames, *self.config.latent_size)
        if latents.ndim != 5 or tuple(latents.shape[1:]) != expected:
            raise _shape_error(name, f"[B, {', '.join(map(str, expected))}]", latents)
        return latents.shape[0]

    def _tau(
        self, tau_v: float | torch.Tensor | None, batch: int, device: torch.device
    ) -> torch.Tensor:
        tau_v = self.config.tau_v if tau_v is None else tau_v
        tau = torch.as_tensor(tau_v, dtype=torch.float32, device=device)
        if tau.ndim == 0:
            tau = tau.expand(batch)
        if tau.shape != (batch,):
            raise _shape_error("tau_v", f"a float or [{batch}]", tau)
        if bool(((tau < 0.0) | (tau > 1.0)).any()):
            raise ValueError(f"tau_v: expected flow times in [0, 1], got {tau.tolist()}")
        return tau

    def _text(
        self, text_embeds: torch.Tensor, text_mask: torch.Tensor | None, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Checks text inputs; returns embeds in the transformer dtype and a bool [B, L] mask."""
        width = self.text_embed_dim
        if text_embeds.ndim != 3 or text_embeds.shape[0] != batch or text_embeds.shape[2] != width:
            raise _shape_error("text_embeds", f"[{batch}, L, {width}]", text_embeds)
        if text_mask is None:
            return text_embeds.to(self.transformer.dtype), None
        if text_mask.shape != text_embeds.shape[:2]:
            raise _shape_error("text_mask", str(list(text_embeds.shape[:2])), text_mask)
        return text_embeds.to(self.transformer.dtype), text_mask.bool()


def _significant(values: torch.Tensor, digits: int = 4) -> list[float]:
    """`values` as floats rounded to `digits` significant digits."""
    return [float(f"{v:.{digits}g}") for v in values.tolist()]
