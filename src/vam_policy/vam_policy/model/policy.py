"""`VAMPolicy`: observation in, chunk of absolute joint targets out.

The wrapper owns everything between raw inputs and the networks: frame preprocessing,
instruction embeddings (cached per instruction), state/action normalization and the action
representation. The math lives in `VideoBackbone` and `ActionDecoder`.

A policy has one backbone and one or more `DecoderHead`s. Several heads are an ensemble:
decoders trained on the same backbone and data with different seeds (`vam checkpoint
ensemble`). Each samples a chunk with its own normalization and the policy returns their mean
in absolute joint targets: the decoders' errors differ from scene to scene, so the mean lands
nearer the demonstrations' than any one of them.
"""

from __future__ import annotations

from collections.abc import Sequence
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


class DecoderHead(nn.Module):
    """An action decoder with the normalization statistics of the data it was trained on."""

    def __init__(self, decoder: ActionDecoder, stats: NormStats) -> None:
        super().__init__()
        self.decoder = decoder
        self.stats = stats


class VAMPolicy(nn.Module):
    """Video backbone + flow-matching action decoder(s) behind one `predict` call."""

    def __init__(
        self,
        config: PolicyConfig,
        backbone: VideoBackbone,
        heads: Sequence[DecoderHead],
        text_encoder: TokenTextEncoder,
    ) -> None:
        super().__init__()
        if not heads:
            raise ValueError("a policy needs at least one decoder head")
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
        for index, head in enumerate(heads):
            if head.decoder.config != config.decoder:
                raise ValueError(f"decoder {index}'s config differs from the policy's")
            for name, norm in (("state", head.stats.state), ("action", head.stats.action)):
                if norm.mean.shape != (joints,):
                    raise ValueError(f"decoder {index}: {name} statistics cover "
                                     f"{norm.mean.shape} dims, expected ({joints},)")
        self.config = config
        self.backbone = backbone
        self.heads = nn.ModuleList(heads)
        # Kept out of the module tree so `.to("cuda")` leaves it on the CPU: it runs once per
        # new instruction, and the 11B T5 encoder need not hold GPU memory.
        self.__dict__["text_encoder"] = text_encoder
        self.frames = FramePreprocess(config.backbone.height, config.backbone.width)
        self.actions = ActionCoding(config.action_representation)
        self._text_cache: dict[str, torch.Tensor] = {}

    @classmethod
    def build(cls, config: PolicyConfig, stats: NormStats | None = None) -> VAMPolicy:
        """A policy with the backbone `config.backbone` names and a freshly initialised decoder."""
        stats = stats or NormStats.identity(len(config.joint_names))
        return cls(
            config,
            VideoBackbone.build(config.backbone),
            [DecoderHead(ActionDecoder(config.decoder), stats)],
            build_text_encoder(config.backbone),
        )

    @property
    def device(self) -> torch.device:
        return next(self.heads.parameters()).device

    @property
    def decoder(self) -> ActionDecoder:
        """The decoder of a single-decoder policy (the one training fits)."""
        return self._single_head().decoder

    @property
    def stats(self) -> NormStats:
        """The normalization of a single-decoder policy."""
        return self._single_head().stats

    @stats.setter
    def stats(self, stats: NormStats) -> None:
        self._single_head().stats = stats

    def _single_head(self) -> DecoderHead:
        if len(self.heads) != 1:
            raise ValueError(f"this policy is an ensemble of {len(self.heads)} decoders; "
                             "use policy.heads")
        return self.heads[0]

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
        `noise_scale` scales the decoder's start noise (0: its deterministic chunk). An
        ensemble returns the mean of its decoders' targets.
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
        targets = self.chunk_from_history(history, state, instructions, tau_v=tau_v,
                                          flow_steps=flow_steps, generator=generator,
                                          noise_scale=noise_scale)
        return targets[0] if single else targets

    @torch.no_grad()
    def chunk_from_history(
        self,
        history: torch.Tensor,
        state: np.ndarray,
        instructions: list[str],
        *,
        tau_v: float | None = None,
        flow_steps: int | None = None,
        generator: torch.Generator | None = None,
        noise_scale: float = 1.0,
    ) -> np.ndarray:
        """`predict` after the VAE: absolute targets `[B, H, J]` from the history's latents
        `[B, 16, T', h/8, w/8]` and the joint positions `[B, J]`."""
        text = self.embed_instructions(instructions)  # [B, L, D]
        tau = self.config.backbone.tau_v if tau_v is None else tau_v
        features = self.backbone.features(history, text, tau, generator=generator)  # [B, N, C]
        tau_batch = torch.full((len(state),), float(tau), device=self.device)
        chunks = []
        for head in self.heads:
            proprio = torch.from_numpy(head.stats.state.normalize(state)).to(self.device)
            actions = head.decoder.sample(features, proprio, tau_batch, steps=flow_steps,
                                          generator=generator, text=text,
                                          noise_scale=noise_scale)  # [B, H, J]
            coded = head.stats.action.unnormalize(actions.float().cpu().numpy())
            chunks.append(self.actions.decode(coded, state))
        return np.mean(chunks, axis=0)

    def member(self, index: int) -> VAMPolicy:
        """Decoder `index` alone: a one-decoder policy sharing this one's modules."""
        single = VAMPolicy(self.config, self.backbone, [self.heads[index]], self.text_encoder)
        return single.train(self.training)
