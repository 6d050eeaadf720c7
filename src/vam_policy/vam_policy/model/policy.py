"""`VAMPolicy`: observation in, chunk of absolute joint targets out.

The wrapper owns everything between raw inputs and the networks: frame preprocessing,
instruction embeddings (cached per instruction), state/action normalization and the action
representation. The math lives in `VideoBackbone` and `ActionDecoder`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vam_policy.model.backbone import VideoBackbone
from vam_policy.model.decoder import ActionDecoder
from vam_policy.model.policy_config import PolicyConfig
from vam_policy.model.text_encoder import TokenTextEncoder, build_text_encoder
from vam_policy.model.transforms import ActionCoding, FramePreprocess, Normalizer


@dataclass(frozen=True)
class NormStats:
    """Per-joint statistics of the proprio state and of the coded actions."""

    state: Normalizer
    action: Normalizer

    @classmethod
    def identity(cls, joints: int) -> NormStats:
        return cls(Normalizer.identity(joints), Normalizer.identity(joints))


class VAMPolicy(nn.Module):
    """Video backbone + flow-matching action decoder behind one `predict` call."""

    def __init__(
        self,
        config: PolicyConfig,
        backbone: VideoBackbone,
        decoder: ActionDecoder,
        text_encoder: TokenTextEncoder,
        stats: NormStats,
    ) -> None:
        super().__init__()
        if backbone.feature_dim != config.decoder.feature_dim:
            raise ValueError(
                f"decoder.feature_dim is {config.decoder.feature_dim} but the backbone's "
                f"features are {backbone.feature_dim} wide"
            )
        if text_encoder.embedding_dim != backbone.text_embed_dim:
            raise ValueError(
                f"text encoder gives {text_encoder.embedding_dim}-d embeddings but the backbone "
                f"cross-attends to {backbone.text_embed_dim}-d text"
            )
        if config.decoder.text_dim not in (0, text_encoder.embedding_dim):
            raise ValueError(
                f"decoder.text_dim is {config.decoder.text_dim} but the text encoder gives "
                f"{text_encoder.embedding_dim}-d embeddings"
            )
        joints = len(config.joint_names)
        for name, norm in (("state", stats.state), ("action", stats.action)):
            if norm.mean.shape != (joints,):
                raise ValueError(
                    f"{name} statistics cover {norm.mean.shape} dims, expected ({joints},)"
                )
        self.config = config
        self.backbone = backbone
        self.decoder = decoder
        # Kept out of the module tree so `.to("cuda")` leaves it on the CPU: it runs once per
        # new instruction, and the 11B T5 encoder need not hold GPU memory.
        self.__dict__["text_encoder"] = text_encoder
        self.stats = stats
        self.frames = FramePreprocess(config.backbone.height, config.backbone.width)
        self.actions = ActionCoding(config.action_representation)
        self._text_cache: dict[str, torch.Tensor] = {}

    @classmethod
    def build(cls, config: PolicyConfig, stats: NormStats | None = None) -> VAMPolicy:
        """A policy with the backbone `config.backbone` names and a freshly initialised decoder."""
        return cls(
            config,
            VideoBackbone.build(config.backbone),
            ActionDecoder(config.decoder),
            build_text_encoder(config.backbone),
            stats or NormStats.identity(len(config.joint_names)),
        )

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    # ---- inputs -------------------------------------------------------------------------

    def embed_instructions(self, instructions: list[str]) -> torch.Tensor:
        """Text embeddings `[B, L, D]` (padding zeroed); each instruction is encoded once.

        No cross-attention mask goes with them: the Cosmos pipeline passes none either, and
        training and serving must see text the same way.
        """
        for text in set(instructions) - self._text_cache.keys():
            self._text_cache[text] = self.text_encoder.encode([text]).embeds[0].cpu()
        return torch.stack([self._text_cache[text] for text in instructions]).to(self.device)

    def preprocess_frames(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 `[B, T, H, W, 3]` -> `[B, 3, T, h, w]` in [-1, 1] on the policy's device."""
        if frames.ndim != 5 or frames.shape[1] != self.config.history_frames:
            raise ValueError(
                f"expected frames [B, T={self.config.history_frames}, H, W, 3], "
                f"got {frames.shape}"
            )
        video = np.stack([self.frames(clip) for clip in frames])
        return torch.from_numpy(video).to(self.device)

    def _state(self, joint_positions: np.ndarray, batch: int) -> np.ndarray:
        joints = len(self.config.joint_names)
        state = np.asarray(joint_positions, np.float64)
        if state.shape != (batch, joints):
            raise ValueError(
                f"expected joint positions [B={batch}, J={joints}] in the order "
                f"{list(self.config.joint_names)}, got {state.shape}"
            )
        if not np.all(np.isfinite(state)):
            raise ValueError(f"joint positions must be finite, got {state.tolist()}")
        return state

    # ---- inference ----------------------------------------------------------------------

    @torch.no_grad()
    def predict(
        self,
        frames: np.ndarray,
        joint_positions: np.ndarray,
        instruction: str | list[str],
        *,
        tau_v: float | None = None,
        flow_steps: int | None = None,
        seed: int | None = None,
        noise_scale: float = 1.0,
    ) -> np.ndarray:
        """Absolute joint targets `[H, J]` (or `[B, H, J]` for batched inputs).

        frames: uint8 RGB `[T, H, W, 3]` or `[B, T, H, W, 3]`, the last T frames at
        `config.fps` (oldest first, cameras already tiled); joint_positions `[J]` or `[B, J]`
        in `config.joint_names` order; one instruction, or one per batch item. `seed` makes
        the result reproducible (the video noise and the decoder's start noise);
        `noise_scale` scales the decoder's start noise (0: its deterministic chunk).
        """
        frames = np.asarray(frames)
        single = frames.ndim == 4
        if single:
            frames, joint_positions = frames[None], np.asarray(joint_positions)[None]
        batch = frames.shape[0]
        instructions = [instruction] * batch if isinstance(instruction, str) else instruction
        if len(instructions) != batch:
            raise ValueError(f"expected {batch} instructions, got {len(instructions)}")
        state = self._state(joint_positions, batch)
        generator = None
        if seed is not None:
            generator = torch.Generator(self.device).manual_seed(seed)

        video = self.preprocess_frames(frames)  # [B, 3, T, h, w]
        history = self.backbone.encode_video(video)  # [B, 16, T', h/8, w/8]
        text = self.embed_instructions(instructions)  # [B, L, D]
        tau = self.config.backbone.tau_v if tau_v is None else tau_v
        features = self.backbone.features(history, text, tau, generator=generator)  # [B, N, C]
        proprio = torch.from_numpy(self.stats.state.normalize(state)).to(self.device)
        tau_batch = torch.full((batch,), float(tau), device=self.device)
        actions = self.decoder.sample(features, proprio, tau_batch, steps=flow_steps,
                                      generator=generator, text=text,
                                      noise_scale=noise_scale)  # [B, H, J]
        coded = self.stats.action.unnormalize(actions.float().cpu().numpy())
        targets = self.actions.decode(coded, state)
        return targets[0] if single else targets
