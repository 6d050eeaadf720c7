"""Flow-matching inverse-dynamics action decoder: video features + proprio -> action chunk.

The paper's IDM: a DiT over 1 proprio token + H noisy action tokens. Every block cross-attends
to the backbone's video feature tokens, self-attends over the action tokens and runs an MLP,
each sublayer AdaLN-modulated by an embedding of the two flow times (tau_v of the video, tau_a
of the actions). Optionally (`text_dim`) the modulation also takes the instruction, so which
video tokens the actions attend to can depend on what was asked (FiLM-style conditioning), and
(`instruction_readout`) an instruction-gated readout of the history's video tokens predicts the
chunk's mean, leaving the flow only the rest to model.
Flow matching (see `flow.py`) lets it represent multimodal chunks: a regression head would
average two valid motions into an invalid one.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vam_policy.model.flow import (
    TimeSamplingConfig,
    integrate,
    interpolate,
    sample_time,
    velocity_target,
)

_FREQ_DIM = 256  # sinusoidal features per flow time, as DiT's timestep embedder
_TIME_SCALE = 1000.0  # tau in [0, 1] -> DiT's timestep range, so the sinusoids resolve it


@dataclass(frozen=True)
class DecoderConfig:
    """Sizes of the action decoder; saved with every checkpoint through `to_dict`.

    Fields:
        action_dim: J, components per action step; proprio has the same J.
        horizon: H, action steps per predicted chunk.
        feature_dim: Cf, width of the backbone block output the decoder reads (2048 for
            Cosmos-Predict2-2B).
        width: decoder hidden size.
        depth: number of DecoderBlocks.
        heads: attention heads; must divide `width`.
        mlp_ratio: MLP hidden size over width.
        adaln_lora_dim: rank of the AdaLN-LoRA modulation (Cosmos'); 0 gives each sublayer a
            full-rank AdaLN as in DiT.
        time_sampling: how training draws the action flow time tau_a.
        sample_steps: Euler steps from tau_a = 1 to 0 at inference (paper: 10).
        dropout: dropout on attention weights and the MLP output while training.
        video_grid: (T, h, w) token grid of the video features, in the backbone's (t, h, w)
            token order; it gives each video token a learned position (a sum of one
            embedding per axis) so cross-attention can tell where in the frame and when a
            feature is. None: no position on video tokens (and any token count is accepted).
        text_dim: width D of the instruction embeddings `[B, L, D]` the decoder is conditioned
            on directly (their mean over tokens joins the flow times in every AdaLN). 0: the
            paper's IDM, which sees the instruction only through the video features; that
            suffices when the backbone's plan already depends on it (a pretrained video
            model), not on an untrained one.
        instruction_readout: rank r of the instruction readout, 0 for none. With `text_dim`
            and `video_grid`, the flattened video tokens and the instruction embedding are
            each mapped to r values and multiplied (one linear readout of the whole picture per
            instruction, low rank), a linear map of the proprio state is added (a relative
            chunk's mean depends on where the arm is) and the sum is mapped to a chunk: the
            mean chunk, trained by MSE; the flow models the chunk minus that mean. Flow
            matching alone learns which cube an instruction names only where the noise hides
            the mode (tau_a near 1): its chunks fall on the right modes but pick among them by
            the noise. The readout is a direct regression of the choice. Measured on the sim's
            first chunks (start anchors, 3000 steps): the named cube's reach for 69% / 60%
            (lift / push) of new layouts, against the 33% of chance without it.
        readout_frames: the instruction readout reads the first `readout_frames` frames of
            `video_grid` (the history's latent frames, clean at any tau_v), 0 for all. Future
            tokens carry fresh noise at every call; a readout over them fitted that noise
            (held-out choice 54-65% against 92-96% over the history alone, measured).
    """

    action_dim: int
    horizon: int
    feature_dim: int
    width: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0
    adaln_lora_dim: int = 0
    time_sampling: TimeSamplingConfig = field(default_factory=TimeSamplingConfig)
    sample_steps: int = 10
    dropout: float = 0.0
    video_grid: tuple[int, int, int] | None = None
    text_dim: int = 0
    instruction_readout: int = 0
    readout_frames: int = 0

    def __post_init__(self) -> None:
        for name in ("action_dim", "horizon", "feature_dim", "width", "depth", "heads",
                     "sample_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DecoderConfig.{name} must be an int >= 1, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"DecoderConfig.width ({self.width}) must be divisible by heads "
                             f"({self.heads})")
        if not self.mlp_ratio > 0:
            raise ValueError(f"DecoderConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        for name in ("adaln_lora_dim", "text_dim", "instruction_readout", "readout_frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"DecoderConfig.{name} must be an int >= 0, got {value!r}")
        if not isinstance(self.time_sampling, TimeSamplingConfig):
            raise ValueError(f"DecoderConfig.time_sampling must be a TimeSamplingConfig, got "
                             f"{type(self.time_sampling).__name__}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DecoderConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.video_grid is not None:
            grid = tuple(self.video_grid)
            if len(grid) != 3 or not all(isinstance(n, int) and n >= 1 for n in grid):
                raise ValueError(f"DecoderConfig.video_grid must be three ints >= 1 (T, h, w) or "
                                 f"None, got {self.video_grid!r}")
            object.__setattr__(self, "video_grid", grid)
        if self.instruction_readout and not (self.text_dim and self.video_grid):
            raise ValueError("DecoderConfig.instruction_readout needs text_dim > 0 (the "
                             "instruction) and a video_grid (a fixed number of video tokens)")
        if self.readout_frames and (self.video_grid is None
                                    or self.readout_frames > self.video_grid[0]):
            raise ValueError(f"DecoderConfig.readout_frames ({self.readout_frames}) must not "
                             f"exceed the video_grid's frames ({self.video_grid})")

    @property
    def readout_tokens(self) -> int:
        """How many leading video tokens the instruction readout reads."""
        if self.video_grid is None:
            return 0
        frames = self.readout_frames or self.video_grid[0]
        return frames * self.video_grid[1] * self.video_grid[2]

    @property
    def video_tokens(self) -> int | None:
        """N the features must have when `video_grid` is set, else None (any N)."""
        return math.prod(self.video_grid) if self.video_grid is not None else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe nested dict (ints, floats, strings) for checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecoderConfig:
        """Inverse of `to_dict`; unknown keys raise so a renamed field is not lost silently."""
        _check_keys(cls, data)
        values = dict(data)
        if "time_sampling" in values:
            _check_keys(TimeSamplingConfig, values["time_sampling"])
            values["time_sampling"] = TimeSamplingConfig(**values["time_sampling"])
        return cls(**values)


def _check_keys(cls: type, data: dict[str, Any]) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} data must be a dict, got {type(data).__name__}")
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}; expected a subset "
                         f"of {[f.name for f in fields(cls)]}")


DECODER_PRESETS: dict[str, DecoderConfig] = {
    # The paper's IDM, sized for a LIBERO chunk (60 steps of 7-D delta EEF + gripper) on
    # Cosmos-Predict2-2B features; override action_dim / horizon for another robot.
    "paper": DecoderConfig(action_dim=7, horizon=60, feature_dim=2048, width=1024, depth=24,
                           heads=8, mlp_ratio=4.0, adaln_lora_dim=128),
    # Same structure at a size that trains in seconds on a CPU: tests and the demo.
    "tiny": DecoderConfig(action_dim=7, horizon=8, feature_dim=32, width=64, depth=2, heads=4,
                          mlp_ratio=4.0, adaln_lora_dim=16),
}


def decoder_preset(name: str, **overrides: Any) -> DecoderConfig:
    """The preset called `name`, with any fields replaced by `overrides`."""
    if name not in DECODER_PRESETS:
        close = difflib.get_close_matches(name, DECODER_PRESETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown decoder preset {name!r}{hint} (known: "
                         f"{sorted(DECODER_PRESETS)})")
    return replace(DECODER_PRESETS[name], **overrides)


def _sinusoid(tau: Tensor) -> Tensor:
    """DiT's sinusoidal timestep features, `[B]` -> `[B, _FREQ_DIM]`."""
    half = _FREQ_DIM // 2
    freqs = torch.exp(-math.log(10000.0) / half
                      * torch.arange(half, device=tau.device, dtype=torch.float32))  # [F/2]
    args = tau.float()[:, None] * _TIME_SCALE * freqs[None]  # [B, F/2]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1.0 + scale) + shift


class VideoPositionEmbedding(nn.Module):
    """A learned position for each video token of a (T, h, w) grid: `[1, T*h*w, W]`, the sum
    of a frame, a row and a column embedding (factorised, so few demos train it)."""

    def __init__(self, grid: tuple[int, int, int], width: int) -> None:
        super().__init__()
        self.frame = nn.Parameter(torch.zeros(grid[0], width))
        self.row = nn.Parameter(torch.zeros(grid[1], width))
        self.column = nn.Parameter(torch.zeros(grid[2], width))

    def forward(self) -> Tensor:
        grid = (self.frame[:, None, None] + self.row[None, :, None]
                + self.column[None, None, :])  # [T, h, w, W]
        return grid.flatten(0, 2)[None]  # [1, N, W]


class DecoderTimeEmbedding(nn.Module):
    """(tau_v, tau_a[, instruction]) -> condition `[B, W]`, plus the shared AdaLN-LoRA base
    `[B, 3W]`. An instruction embedding `[B, W]`, when given, adds onto the time embedding.

    As in Cosmos, the low-rank per-sublayer modulations add onto one full-rank base so the
    LoRA bottleneck does not cap how much the flow times can steer each block.
    """

    def __init__(self, width: int, lora_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * _FREQ_DIM, width), nn.SiLU(),
                                 nn.Linear(width, width))
        self.lora_base = (nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
                          if lora_dim > 0 else None)

    def forward(self, tau_v: Tensor, tau_a: Tensor,
                instruction: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        freqs = torch.cat([_sinusoid(tau_v), _sinusoid(tau_a)], dim=-1)  # [B, 2F]
        cond = self.mlp(freqs.to(self.mlp[0].weight.dtype))  # [B, W]
        if instruction is not None:
            cond = cond + instruction
        base = self.lora_base(cond) if self.lora_base is not None else None  # [B, 3W]
        return cond, base


class DecoderAdaLN(nn.Module):
    """Shift, scale and gate `[B, 1, W]` for one sublayer from the condition (adaLN-Zero).

    The last layer starts at zero, so every gate is 0 and each block starts as the identity:
    DiT's recipe for a stable start.
    """

    def __init__(self, width: int, lora_dim: int) -> None:
        super().__init__()
        if lora_dim > 0:
            self.proj = nn.Sequential(nn.SiLU(), nn.Linear(width, lora_dim, bias=False),
                                      nn.Linear(lora_dim, 3 * width, bias=False))
        else:
            self.proj = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, cond: Tensor, base: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        mod = self.proj(cond)  # [B, 3W]
        if base is not None:
            mod = mod + base
        shift, scale, gate = mod[:, None].chunk(3, dim=-1)  # each [B, 1, W]
        return shift, scale, gate


class DecoderAttention(nn.Module):
    """Multi-head attention of `x` over `context`; self-attention when they are the same.

    Queries and keys are RMS-normalised per head, as in Cosmos, so attention logits stay
    bounded at paper width in bf16.
    """

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.to_q = nn.Linear(width, width)
        self.to_k = nn.Linear(width, width)
        self.to_v = nn.Linear(width, width)
        self.norm_q = nn.RMSNorm(width // heads, eps=1e-6)
        self.norm_k = nn.RMSNorm(width // heads, eps=1e-6)
        self.to_out = nn.Linear(width, width)

    def keys_values(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised keys and values `[B, h, N, d]` of `context [B, N, W]`."""
        k = rearrange(self.to_k(context), "b n (h d) -> b h n d", h=self.heads)
        v = rearrange(self.to_v(context), "b n (h d) -> b h n d", h=self.heads)
        return self.norm_k(k), v

    def attend(self, x: Tensor, keys_values: tuple[Tensor, Tensor]) -> Tensor:
        """`x [B, L, W]` attending over precomputed `keys_values`."""
        q = rearrange(self.to_q(x), "b l (h d) -> b h l d", h=self.heads)  # [B, h, L, d]
        k, v = keys_values
        out = F.scaled_dot_product_attention(
            self.norm_q(q), k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(rearrange(out, "b h l d -> b l (h d)"))  # [B, L, W]

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        return self.attend(x, self.keys_values(context))


class DecoderBlock(nn.Module):
    """Cross-attention to the video tokens, self-attention, MLP; each gated by AdaLN."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        width, lora = config.width, config.adaln_lora_dim
        # cross-attention to the video feature tokens
        self.norm_cross = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mod_cross = DecoderAdaLN(width, lora)
        self.cross_attn = DecoderAttention(width, config.heads, config.dropout)
        # self-attention over the proprio + action tokens
        self.norm_self = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mod_self = DecoderAdaLN(width, lora)
        self.self_attn = DecoderAttention(width, config.heads, config.dropout)
        # MLP
        hidden = int(width * config.mlp_ratio)
        self.norm_mlp = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mod_mlp = DecoderAdaLN(width, lora)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, width), nn.Dropout(config.dropout))

    def forward(self, x: Tensor, video: tuple[Tensor, Tensor], cond: Tensor,
                base: Tensor | None) -> Tensor:
        """`video`: this block's cross-attention keys and values of the video tokens."""
        # cross-attention to the video feature tokens
        shift, scale, gate = self.mod_cross(cond, base)
        x = x + gate * self.cross_attn.attend(_modulate(self.norm_cross(x), shift, scale), video)
        # self-attention over the proprio + action tokens
        shift, scale, gate = self.mod_self(cond, base)
        h = _modulate(self.norm_self(x), shift, scale)
        x = x + gate * self.self_attn(h, h)
        # MLP
        shift, scale, gate = self.mod_mlp(cond, base)
        return x + gate * self.mlp(_modulate(self.norm_mlp(x), shift, scale))  # [B, 1+H, W]


class InstructionReadout(nn.Module):
    """The mean chunk `[B, H, J]` read off the (history's) video tokens at once: the flattened
    tokens `[B, N' * Cf]` and the instruction embedding `[B, W]` each mapped to `rank` values,
    multiplied (a low-rank bilinear map: each instruction its own linear readout of the whole
    picture), plus the proprio state `[B, J]` mapped to `rank` values, mapped to a chunk."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        rank, self.chunk = config.instruction_readout, (config.horizon, config.action_dim)
        self.tokens = config.readout_tokens
        self.norm = nn.LayerNorm(config.feature_dim)
        self.video = nn.Linear(self.tokens * config.feature_dim, rank)
        self.instruction = nn.Linear(config.width, rank)
        self.state = nn.Linear(config.action_dim, rank)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(rank, config.width), nn.SiLU(),
                                 nn.Linear(config.width, math.prod(self.chunk)))

    def forward(self, features: Tensor, instruction: Tensor, proprio: Tensor) -> Tensor:
        video = self.video(self.norm(features[:, :self.tokens]).flatten(1))  # [B, r]
        mean = self.out(video * self.instruction(instruction) + self.state(proprio))  # [B, H*J]
        return mean.unflatten(1, self.chunk)  # [B, H, J]


@dataclass(frozen=True)
class DecoderCondition:
    """What every flow step of a chunk shares, computed once per chunk."""

    video: list[tuple[Tensor, Tensor]]
    """Each block's cross-attention keys and values of the video tokens."""
    instruction: Tensor | None
    """`[B, W]` instruction embedding for the AdaLN, or None."""
    mean: Tensor | None
    """`[B, H, J]` the instruction readout's mean chunk (the flow models the rest), or None."""


class DecoderOutput(nn.Module):
    """Final AdaLN + linear map to the action velocity; zero-initialised, so v = 0 at start."""

    def __init__(self, width: int, action_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mod = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.proj = nn.Linear(width, action_dim)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        shift, scale = self.mod(cond)[:, None].chunk(2, dim=-1)  # each [B, 1, W]
        return self.proj(_modulate(self.norm(x), shift, scale))  # [B, L, J]


class ActionDecoder(nn.Module):
    """The IDM: predicts the flow velocity of a noisy action chunk given video features.

    Actions and proprio arrive normalized by the caller. `loss` trains, `sample` infers,
    `velocity` is the network itself.
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        width, dim = config.width, config.action_dim
        # inputs: proprio + action token embedders, positions, video feature projection
        self.proprio_embed = nn.Sequential(nn.Linear(dim, width), nn.SiLU(),
                                           nn.Linear(width, width))
        self.action_embed = nn.Sequential(nn.Linear(dim, width), nn.SiLU(),
                                          nn.Linear(width, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.horizon, width))
        # Backbone activations are large and unnormalised; LayerNorm first keeps the
        # projection's input scale independent of which backbone block is read.
        self.feature_proj = nn.Sequential(nn.LayerNorm(config.feature_dim),
                                          nn.Linear(config.feature_dim, width))
        self.video_pos_embed = (VideoPositionEmbedding(config.video_grid, width)
                                if config.video_grid is not None else None)
        # conditioning on the flow times and, optionally, the instruction
        self.time_embed = DecoderTimeEmbedding(width, config.adaln_lora_dim)
        self.text_embed = (nn.Sequential(nn.LayerNorm(config.text_dim),
                                         nn.Linear(config.text_dim, width), nn.SiLU(),
                                         nn.Linear(width, width))
                           if config.text_dim else None)
        self.instruction_readout = (InstructionReadout(config) if config.instruction_readout
                                    else None)
        # blocks
        self.blocks = nn.ModuleList(DecoderBlock(config) for _ in range(config.depth))
        # output
        self.output = DecoderOutput(width, dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's init: xavier linears, small positions, zero modulation and output layers."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.pos_embed, std=0.02)
        if self.video_pos_embed is not None:
            for table in self.video_pos_embed.parameters():
                nn.init.normal_(table, std=0.02)
        zero = [self.output.mod[-1], self.output.proj]
        if self.time_embed.lora_base is not None:
            zero.append(self.time_embed.lora_base[-1])
        for block in self.blocks:
            zero += [block.mod_cross.proj[-1], block.mod_self.proj[-1], block.mod_mlp.proj[-1]]
        for module in zero:
            nn.init.zeros_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def velocity(
        self, x_tau: Tensor, tau_a: Tensor, features: Tensor, proprio: Tensor, tau_v: Tensor,
        *, text: Tensor | None = None,
    ) -> Tensor:
        """Predicted velocity `[B, H, J]` of `x_tau [B, H, J]` at action time `tau_a [B]`.

        text: the instruction embeddings `[B, L, text_dim]` (padding zeroed), needed exactly
        when `config.text_dim` > 0; the same in `loss` and `sample`. With
        `instruction_readout`, the flow path runs between noise and the chunk minus the
        readout's mean chunk.
        """
        batch = self._check_condition(features, proprio, tau_v, text)
        cfg = self.config
        _check("x_tau", x_tau, "[B, H, J]", (batch, cfg.horizon, cfg.action_dim))
        _check("tau_a", tau_a, "[B]", (batch,), unit_interval=True)
        condition = self.condition(features, text, proprio)
        return self.conditioned_velocity(x_tau, tau_a, condition, proprio, tau_v)

    def loss(
        self,
        features: Tensor,
        proprio: Tensor,
        actions: Tensor,
        tau_v: Tensor,
        generator: torch.Generator | None = None,
        *,
        text: Tensor | None = None,
    ) -> Tensor:
        """Flow-matching loss, a scalar: MSE between predicted and true velocity.

        Draws one tau_a per example from `config.time_sampling` and Gaussian noise, both from
        `generator` when given (it must live on the inputs' device). With
        `instruction_readout`, plus the MSE of the readout's mean chunk; the flow learns the
        chunk minus that mean (held fixed in its loss, so each objective trains its own part).
        """
        batch = self._check_condition(features, proprio, tau_v, text)
        cfg = self.config
        _check("actions", actions, "[B, H, J]", (batch, cfg.horizon, cfg.action_dim))
        tau_a = sample_time(cfg.time_sampling, batch, device=actions.device,
                            generator=generator)  # [B]
        eps = torch.randn(actions.shape, device=actions.device, dtype=actions.dtype,
                          generator=generator)  # [B, H, J]
        condition = self.condition(features, text, proprio)
        readout_loss = actions.new_zeros(())
        if condition.mean is not None:
            readout_loss = F.mse_loss(condition.mean.float(), actions.float())
            actions = actions - condition.mean.detach().to(actions.dtype)
        x_tau = interpolate(actions, eps, tau_a)  # [B, H, J]
        pred = self.conditioned_velocity(x_tau, tau_a, condition, proprio, tau_v)  # [B, H, J]
        return F.mse_loss(pred.float(), velocity_target(actions, eps).float()) + readout_loss

    @torch.no_grad()
    def sample(
        self,
        features: Tensor,
        proprio: Tensor,
        tau_v: Tensor,
        steps: int | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        text: Tensor | None = None,
        noise_scale: float = 1.0,
    ) -> Tensor:
        """An action chunk `[B, H, J]` by Euler integration from tau_a = 1 to 0.

        `noise [B, H, J]` fixes the start (same noise, same weights -> same chunk, bit for
        bit); otherwise it is drawn from `generator` and scaled by `noise_scale` (1: a sample
        of the learned distribution; 0: the one chunk the flow carries zero to, no draw).
        Call `eval()` first if dropout > 0.
        """
        batch = self._check_condition(features, proprio, tau_v, text)
        cfg = self.config
        steps = cfg.sample_steps if steps is None else steps
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        shape = (batch, cfg.horizon, cfg.action_dim)
        if not noise_scale >= 0.0:
            raise ValueError(f"noise_scale must be >= 0, got {noise_scale!r}")
        if noise is None:
            noise = torch.randn(shape, device=features.device, dtype=self._dtype(),
                                generator=generator) * noise_scale
        else:
            _check("noise", noise, "[B, H, J]", shape)
        condition = self.condition(features, text, proprio)  # reused at every step

        def velocity_field(x: Tensor, tau_a: Tensor) -> Tensor:
            return self.conditioned_velocity(x, tau_a, condition, proprio, tau_v)

        chunk = integrate(velocity_field, noise, steps)
        return chunk if condition.mean is None else chunk + condition.mean.to(chunk.dtype)

    def condition(self, features: Tensor, text: Tensor | None,
                  proprio: Tensor) -> DecoderCondition:
        """What the flow steps of a chunk share (checked inputs): each block's keys and values
        of the video tokens (projected to the decoder width, with their positions), the
        instruction's embedding and, with `instruction_readout`, the mean chunk (of the
        features, the instruction and `proprio [B, J]`). None of it depends on the flow step,
        so `sample` computes it once per chunk, not once per step."""
        context = self.feature_proj(self._cast(features))  # [B, N, W]
        if self.video_pos_embed is not None:
            context = context + self.video_pos_embed()
        instruction = self._instruction(text)  # [B, W] or None
        mean = None
        if self.instruction_readout is not None and instruction is not None:
            mean = self.instruction_readout(self._cast(features), instruction,
                                            self._cast(proprio))  # [B, H, J]
        return DecoderCondition([block.cross_attn.keys_values(context) for block in self.blocks],
                                instruction, mean)

    def _instruction(self, text: Tensor | None) -> Tensor | None:
        """The instruction's embedding `[B, W]`: its token embeddings averaged (padding rows,
        all zero, left out) and projected; None when the decoder is not conditioned on it."""
        if self.text_embed is None or text is None:
            return None
        text = self._cast(text)
        real = (text != 0).any(dim=-1, keepdim=True).to(text.dtype)  # [B, L, 1]
        pooled = (text * real).sum(dim=1) / real.sum(dim=1).clamp_min(1.0)  # [B, D]
        return self.text_embed(pooled)

    def conditioned_velocity(self, x_tau: Tensor, tau_a: Tensor, condition: DecoderCondition,
                             proprio: Tensor, tau_v: Tensor) -> Tensor:
        """`velocity` with the chunk's `condition` computed already (`condition`), on inputs
        that are not checked again: one flow step as `sample` runs it."""
        # inputs
        tokens = torch.cat([self.proprio_embed(self._cast(proprio))[:, None],  # [B, 1, W]
                            self.action_embed(self._cast(x_tau))], dim=1)  # [B, 1+H, W]
        tokens = tokens + self.pos_embed
        # conditioning on the flow times (and the instruction)
        cond, base = self.time_embed(tau_v, tau_a, condition.instruction)  # [B, W], [B, 3W]|None
        # blocks
        for block, block_video in zip(self.blocks, condition.video, strict=True):
            tokens = block(tokens, block_video, cond, base)
        # output: velocities of the action tokens only
        return self.output(tokens[:, 1:], cond).to(x_tau.dtype)  # [B, H, J]

    def _check_condition(self, features: Tensor, proprio: Tensor, tau_v: Tensor,
                         text: Tensor | None) -> int:
        """Validate the conditioning inputs and return the batch size B."""
        cfg = self.config
        tokens = cfg.video_tokens
        _check("features", features, f"[B, N{'' if tokens is None else f'={tokens}'}, "
               f"Cf={cfg.feature_dim}]", (None, tokens, cfg.feature_dim))
        batch = features.shape[0]
        if batch < 1 or features.shape[1] < 1:
            raise ValueError(f"features must have B >= 1 and N >= 1 tokens, got "
                             f"{list(features.shape)}")
        _check("proprio", proprio, f"[B={batch}, J={cfg.action_dim}]", (batch, cfg.action_dim))
        _check("tau_v", tau_v, f"[B={batch}]", (batch,), unit_interval=True)
        if cfg.text_dim and text is None:
            raise ValueError(f"this decoder is conditioned on the instruction: pass its "
                             f"embeddings text [B={batch}, L, D={cfg.text_dim}]")
        if cfg.text_dim:
            _check("text", text, f"[B={batch}, L, D={cfg.text_dim}]",
                   (batch, None, cfg.text_dim))
        return batch

    def _dtype(self) -> torch.dtype:
        return self.pos_embed.dtype

    def _cast(self, x: Tensor) -> Tensor:
        return x.to(self._dtype())


def _check(
    name: str,
    x: Tensor,
    spec: str,
    shape: tuple[int | None, ...],
    unit_interval: bool = False,
) -> None:
    """Raise ValueError unless `x` is a finite float tensor of `shape` (None = any size)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a float tensor {spec}, got {type(x).__name__}")
    if x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape,
                                                                           strict=True)):
        raise ValueError(f"{name} must have shape {spec} = "
                         f"{['*' if s is None else s for s in shape]}, got {list(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor {spec}, got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite, got NaN or inf")
    if unit_interval and ((x < 0).any() or (x > 1).any()):
        raise ValueError(f"{name} must lie in [0, 1], got min {x.min().item():.4g}, "
                         f"max {x.max().item():.4g}")
