"""`PolicyConfig`: everything that defines a VAM policy, saved with every checkpoint.

Presets are looked up by name (`policy_preset("tiny", joint_names=...)`): the backbone and
decoder presets sized to fit each other, for a robot's joints.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

from vam_policy.model.backbone_config import (
    ARCHITECTURES,
    COSMOS_PREDICT2_2B_HUB_ID,
    BackboneConfig,
    get_backbone_config,
)
from vam_policy.model.decoder import DecoderConfig, decoder_preset
from vam_policy.model.transforms import ActionCoding


@dataclass(frozen=True)
class PolicyConfig:
    """A VAM policy: video backbone + action decoder + how observations and actions are coded.

    Fields:
        joint_names: joint order of the proprio state and of every action step.
        backbone: the video model and how its latent plan is read.
        decoder: the flow-matching action decoder; `action_dim == len(joint_names)`.
        fps: rate (Hz) of the frame history fed to the video model, whatever the camera rate.
        action_dt: seconds between consecutive steps of a predicted chunk.
        action_representation: "absolute" joint targets or "relative" to the current state.
        cameras: camera views tiled side by side into each frame (1 = the paper's setting).
    """

    joint_names: tuple[str, ...]
    backbone: BackboneConfig
    decoder: DecoderConfig
    fps: float = 10.0
    action_dt: float = 0.1
    action_representation: str = "relative"
    cameras: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "joint_names", tuple(self.joint_names))
        if not self.joint_names or len(set(self.joint_names)) != len(self.joint_names):
            raise ValueError(f"joint_names: expected unique names, got {list(self.joint_names)}")
        if self.decoder.action_dim != len(self.joint_names):
            raise ValueError(
                f"decoder.action_dim is {self.decoder.action_dim} but there are "
                f"{len(self.joint_names)} joint_names; they must match"
            )
        grid = self.decoder.video_grid
        readout = self.decoder.readout_frames
        if readout and readout != self.backbone.history_latent_frames:
            raise ValueError(
                f"decoder.readout_frames is {readout} but the backbone has "
                f"{self.backbone.history_latent_frames} history latent frames; they must match"
            )
        if grid is not None and grid != self.backbone.token_grid:
            raise ValueError(
                f"decoder.video_grid is {list(grid)} but the backbone's feature tokens form a "
                f"{list(self.backbone.token_grid)} grid (T, h, w); they must match"
            )
        if self.fps <= 0 or self.action_dt <= 0:
            raise ValueError(
                f"fps and action_dt must be positive, got {self.fps}, {self.action_dt}"
            )
        if self.cameras < 1:
            raise ValueError(f"cameras: expected at least 1, got {self.cameras}")
        ActionCoding(self.action_representation)  # validates the name

    @property
    def horizon(self) -> int:
        """H: steps per predicted chunk."""
        return self.decoder.horizon

    @property
    def history_frames(self) -> int:
        """Frames of history (at `fps`) each prediction needs."""
        return self.backbone.history_frames

    def with_backbone(self, **changes: Any) -> PolicyConfig:
        """This config with backbone fields changed; a decoder that places video tokens on a
        grid follows the backbone's new grid (frame size, history, future frames), and its
        instruction readout the new history."""
        backbone = dataclasses.replace(self.backbone, **changes)
        decoder = self.decoder
        if decoder.video_grid is not None:
            readout = backbone.history_latent_frames if decoder.readout_frames else 0
            decoder = dataclasses.replace(decoder, video_grid=backbone.token_grid,
                                          readout_frames=readout)
        return dataclasses.replace(self, backbone=backbone, decoder=decoder)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe nested dict for checkpoints."""
        values = dataclasses.asdict(self)
        values["joint_names"] = list(self.joint_names)
        values["backbone"] = self.backbone.to_dict()
        values["decoder"] = self.decoder.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PolicyConfig:
        """Inverse of `to_dict`; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"PolicyConfig: unknown fields {unknown}; expected {sorted(known)}")
        values = dict(values)
        values["backbone"] = BackboneConfig.from_dict(values["backbone"])
        values["decoder"] = DecoderConfig.from_dict(values["decoder"])
        return cls(**values)


def _tiny(joint_names: tuple[str, ...], **overrides: Any) -> PolicyConfig:
    backbone = get_backbone_config("tiny")
    arch = ARCHITECTURES["tiny"].transformer
    decoder = decoder_preset(
        "tiny",
        action_dim=len(joint_names),
        feature_dim=arch.num_attention_heads * arch.attention_head_dim,
        video_grid=backbone.token_grid,
        # A tiny backbone is usually untrained, so its features carry too little of the
        # instruction: the decoder reads it directly too.
        text_dim=arch.text_embed_dim,
    )
    return PolicyConfig(joint_names, backbone, decoder, **overrides)


def _paper(joint_names: tuple[str, ...], **overrides: Any) -> PolicyConfig:
    backbone = get_backbone_config(COSMOS_PREDICT2_2B_HUB_ID)
    decoder = decoder_preset("paper", action_dim=len(joint_names), horizon=15,
                             video_grid=backbone.token_grid)
    return PolicyConfig(joint_names, backbone, decoder, fps=5.0, action_dt=0.2, **overrides)


_PRESETS = {"tiny": _tiny, "paper": _paper}


def policy_preset(
    name: str, joint_names: list[str] | tuple[str, ...], **overrides: Any
) -> PolicyConfig:
    """The preset policy `name` ("tiny" for CPU tests and the demo, "paper" for Cosmos 2B).

    The preset's frame size is one camera's: with `cameras=n` the n views are tiled side by
    side, so the frame the video model sees is n times as wide (n times the tokens).
    """
    if name not in _PRESETS:
        close = difflib.get_close_matches(name, _PRESETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown policy preset {name!r}.{hint} Known: {sorted(_PRESETS)}")
    config = _PRESETS[name](tuple(joint_names), **overrides)
    if config.cameras == 1:
        return config
    return config.with_backbone(width=config.backbone.width * config.cameras)
