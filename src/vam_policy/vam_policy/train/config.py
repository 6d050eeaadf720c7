"""Training configs for both stages: nested frozen dataclasses, presets in YAML, one file a family.

`load_train_config("idm:tiny", IdmTrainConfig)` reads preset `tiny` of `config/train/idm.yaml`;
`"idm"` alone takes that file's `default` preset; a path to a YAML file of the user's is read as
a config of its own (keys over the dataclass defaults), optionally starting from a preset with
`extends: idm:tiny`. The dataclass defaults are the paper's settings, so a preset lists only
what it changes. Unknown keys and preset names fail with a did-you-mean `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vam_policy.dotted_names import differing_names
from vam_policy.model.flow import TimeSamplingConfig
from vam_policy.model.transforms import ActionCoding

PRESET_DIR_ENV = "VAM_TRAIN_CONFIG_DIR"
"""Overrides where the preset families (`idm.yaml`, `video.yaml`) are looked up."""
TAU_V_KINDS = ("fixed", "uniform", "beta")
CACHE_DTYPES = ("float32", "bfloat16")
OBJECTIVES = ("video", "image")

_C = TypeVar("_C")


class ConfigError(ValueError):
    """A training config is malformed: unknown key, wrong type, unknown preset, bad value."""


def _positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ConfigError(f"{owner}.{name}: expected a positive value, got {value!r}")


@dataclass(frozen=True)
class PolicySpec:
    """Which policy to train: a `policy_preset` plus the few fields a robot's data decides.

    None keeps the preset's value. Joint names and the number of cameras come from the dataset.
    """

    preset: str = "paper"
    """`policy_preset` name: "paper" (Cosmos-Predict2-2B) or "tiny" (CPU tests)."""
    backbone: str | None = None
    """Backbone source: preset, hub id or folder (a stage-1 output); `--backbone` overrides."""
    fps: float | None = None
    """Frame rate of the video history; the dataset's frames are resampled to it."""
    action_dt: float | None = None
    """Seconds between chunk steps."""
    action_representation: str = "relative"
    """"absolute" joint targets or "relative" to the state at the anchor."""
    horizon: int | None = None
    """Steps per chunk (the decoder's H)."""
    decoder_width: int | None = None
    """Decoder hidden size; must be a multiple of its attention heads."""
    decoder_depth: int | None = None
    """Decoder blocks."""
    instruction_readout: int | None = None
    """Rank of the decoder's instruction readout over the backbone's history tokens, which
    regresses the chunk's mean (the flow models the rest); 0 for none (`DecoderConfig`)."""
    read_layer: int | None = None
    """Backbone block the decoder reads."""
    tau_v: float | None = None
    """Inference default of the video flow time, saved with the checkpoint."""
    height: int | None = None
    """Frame height (pixels, a multiple of 16) the video model sees; cameras are resized to it."""
    width: int | None = None
    """One camera's view width (pixels, a multiple of 16); n cameras make an n x wider frame."""

    def __post_init__(self) -> None:
        ActionCoding(self.action_representation)
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value < 16 or value % 16):
                raise ConfigError(f"policy.{name}: expected a positive multiple of 16 pixels, "
                                  f"got {value}")
        for name in ("fps", "action_dt"):
            value = getattr(self, name)
            if value is not None:
                _positive("policy", **{name: value})
        for name in ("horizon", "decoder_width", "decoder_depth"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"policy.{name}: expected at least 1, got {value}")
        if self.instruction_readout is not None and self.instruction_readout < 0:
            raise ConfigError(f"policy.instruction_readout: expected a rank >= 0 (0: none), "
                              f"got {self.instruction_readout}")
        if self.tau_v is not None and not 0.0 <= self.tau_v <= 1.0:
            raise ConfigError(f"policy.tau_v: expected a flow time in [0, 1], got {self.tau_v}")


@dataclass(frozen=True)
class SampleConfig:
    """How episodes become training samples (see `samples.py`) and how latents are cached."""

    anchor_stride: int = 1
    """Frames between consecutive anchors; >1 thins near-duplicate samples and the cache."""
    pad_history: bool = True
    """Anchors whose history reaches before the episode start repeat its first frame (True), or
    are skipped (False). True: the node holds the arm until its history is full, so the first
    frames of a rollout show a still scene, which a repeated first frame imitates."""
    cache_dtype: str = "float32"
    """Latents on disk: "bfloat16" halves the cache (~5 MB an anchor at the paper's size)."""
    encode_batch: int = 8
    """Clips per VAE call while building the cache."""
    start_s: float = 0.0
    """Stage 2: anchors in an episode's first `start_s` seconds are drawn `start_repeat` times
    an epoch. There the arm has not moved yet, so only the camera (and the instruction) say
    where to go; elsewhere the joint state already reveals much of the expert's course."""
    start_repeat: int = 1

    def __post_init__(self) -> None:
        if self.start_s < 0 or self.start_repeat < 1:
            raise ConfigError("data.start_s and data.start_repeat: expected >= 0 and >= 1, got "
                              f"{self.start_s}, {self.start_repeat}")
        if self.anchor_stride < 1 or self.encode_batch < 1:
            raise ConfigError(
                "data.anchor_stride and data.encode_batch: expected at least 1, got "
                f"{self.anchor_stride}, {self.encode_batch}"
            )
        if self.cache_dtype not in CACHE_DTYPES:
            raise ConfigError(f"data.cache_dtype: expected one of {CACHE_DTYPES}, "
                              f"got {self.cache_dtype!r}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay; the defaults are the paper's stage 2."""

    lr: float = 1e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 10.0
    """Max global gradient norm; 0 disables clipping."""
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.0
    """The cosine ends at lr * min_lr_ratio."""

    def __post_init__(self) -> None:
        _positive("optim", lr=self.lr)
        if self.weight_decay < 0 or self.grad_clip < 0 or self.warmup_steps < 0:
            raise ConfigError("optim.weight_decay, grad_clip and warmup_steps: expected >= 0, "
                              f"got {self.weight_decay}, {self.grad_clip}, {self.warmup_steps}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas: expected two values in [0, 1), got {self.betas}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio: expected [0, 1], got {self.min_lr_ratio}")


@dataclass(frozen=True)
class LoopConfig:
    """Steps, batch, seed and how often to log, validate and checkpoint."""

    steps: int = 30_000
    batch_size: int = 32
    """Global batch: split evenly over the DDP processes."""
    seed: int = 0
    log_every: int = 50
    eval_every: int = 1000
    eval_batches: int = 8
    """Validation batches (of `batch_size`) per evaluation, in a fixed order."""
    save_every: int = 1000
    keep_checkpoints: int = 3
    """Step checkpoints kept on disk (the newest); the final policy is always kept."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "eval_every", "eval_batches",
                     "save_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"loop.{name}: expected at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class TauVSampling:
    """The video flow time tau_v of the ground-truth future latents while training the decoder.

    "fixed" at `value` (1.0: pure noise, what inference at the paper's default sees), "uniform"
    in [low, high], or "beta": Beta(alpha, beta) scaled into [low, high]. Sampling a range
    trains one decoder that can run at any tau_v in it (the paper tunes tau_v per task).
    """

    kind: str = "fixed"
    value: float = 1.0
    low: float = 0.0
    high: float = 1.0
    alpha: float = 1.0
    beta: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in TAU_V_KINDS:
            close = difflib.get_close_matches(self.kind, TAU_V_KINDS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"tau_v.kind: expected one of {TAU_V_KINDS}, got {self.kind!r}.{hint}")
        if not (0.0 <= self.value <= 1.0 and 0.0 <= self.low <= self.high <= 1.0):
            raise ConfigError("tau_v: expected value in [0, 1] and 0 <= low <= high <= 1, got "
                              f"value {self.value}, low {self.low}, high {self.high}")
        _positive("tau_v", alpha=self.alpha, beta=self.beta)


@dataclass(frozen=True)
class IdmTrainConfig:
    """Stage 2: the action decoder on a frozen backbone (`vam train idm`)."""

    policy: PolicySpec = field(default_factory=PolicySpec)
    data: SampleConfig = field(default_factory=SampleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    tau_v: TauVSampling = field(default_factory=TauVSampling)
    eval_tau_v: float | None = None
    """tau_v of validation; None takes the policy's inference default."""
    eval_flow_steps: int | None = None
    """Euler steps when sampling validation chunks; None takes the decoder's default."""

    def __post_init__(self) -> None:
        if self.eval_tau_v is not None and not 0.0 <= self.eval_tau_v <= 1.0:
            raise ConfigError(f"eval_tau_v: expected [0, 1], got {self.eval_tau_v}")
        if self.eval_flow_steps is not None and self.eval_flow_steps < 1:
            raise ConfigError(f"eval_flow_steps: expected at least 1, got {self.eval_flow_steps}")


@dataclass(frozen=True)
class LoraSettings:
    """peft LoRA on the backbone transformer; the defaults are the paper's stage 1.

    Module names are suffixes of the diffusers `CosmosTransformer3DModel` module paths:
    attention q/k/v/out (self and cross), the MLPs, the patch embedding and the timestep MLP.
    """

    rank: int = 256
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = (
        "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2",
        "patch_embed.proj", "t_embedder.linear_1", "t_embedder.linear_2",
    )

    def __post_init__(self) -> None:
        if self.rank < 1 or not self.target_modules:
            raise ConfigError(f"lora: expected rank >= 1 and target modules, got rank "
                              f"{self.rank}, modules {list(self.target_modules)}")
        _positive("lora", alpha=self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout: expected [0, 1), got {self.dropout}")


def _video_optim() -> OptimConfig:
    return OptimConfig(lr=1.8e-4)


@dataclass(frozen=True)
class VideoTrainConfig:
    """Stage 1: LoRA fine-tuning of the backbone on the robot's videos (`vam train video`).

    `policy` names the policy preset whose backbone settings (frame size, history, future
    latents, text encoder) the backbone is trained for: use the same one in stage 2.
    """

    policy: PolicySpec = field(default_factory=PolicySpec)
    data: SampleConfig = field(default_factory=SampleConfig)
    optim: OptimConfig = field(default_factory=_video_optim)
    loop: LoopConfig = field(default_factory=LoopConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    time_sampling: TimeSamplingConfig = field(default_factory=TimeSamplingConfig)
    """Flow time of the future latents (the video's own flow-matching time)."""
    objective: str = "video"
    """"video": denoise the future frames given the clean history (the paper's stage 1).
    "image": denoise single frames given only the text, a static-image prior on the same
    frames and model (the baseline of the sample-efficiency experiment)."""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            close = difflib.get_close_matches(self.objective, OBJECTIVES, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"objective: expected one of {OBJECTIVES}, got "
                              f"{self.objective!r}.{hint}")
        if self.data.start_s > 0 or self.data.start_repeat > 1:
            raise ConfigError("data.start_s and data.start_repeat weight stage 2's action "
                              "samples; stage 1 (video) draws every clip alike, so leave them "
                              "unset here")


@dataclass(frozen=True)
class VaeTrainConfig:
    """Stage 0: the backbone's VAE learns the robot's frames as an autoencoder
    (`vam train vae`), for presets whose VAE has random weights.

    `policy` names the policy preset whose frame size and history the VAE is trained for.
    """

    policy: PolicySpec = field(default_factory=PolicySpec)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    clip_stride: int = 3
    """Frames between the starts of consecutive training clips of an episode."""
    kl_weight: float = 1e-4
    """Weight of the posterior's KL divergence (per latent value) against the squared
    reconstruction error (per pixel value, frames in [-1, 1])."""
    saturation_weight: float = 10.0
    """Extra weight of a pixel's reconstruction error per unit of its colour saturation
    (max - min over RGB, up to 2): small coloured objects on a grey scene keep their colour.
    0: every pixel alike."""

    def __post_init__(self) -> None:
        if self.clip_stride < 1:
            raise ConfigError(f"clip_stride: expected at least 1, got {self.clip_stride}")
        if self.kl_weight < 0 or self.saturation_weight < 0:
            raise ConfigError(f"kl_weight and saturation_weight: expected >= 0, got "
                              f"{self.kl_weight}, {self.saturation_weight}")


TrainConfig = IdmTrainConfig | VideoTrainConfig | VaeTrainConfig
FAMILIES: dict[type, str] = {IdmTrainConfig: "idm", VideoTrainConfig: "video",
                             VaeTrainConfig: "vae"}


# ---- dicts <-> dataclasses -------------------------------------------------------------------


def config_from_dict(cls: type[_C], data: Any, where: str = "") -> _C:
    """Build the dataclass `cls` from plain YAML data, checking keys and types."""
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}.{hint} Known: {', '.join(known)}")
    values = {key: _convert(hints[key], value, f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value, where)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[:1] * len(value) if args[-1] is Ellipsis else args
        if len(inner) != len(value):
            raise ConfigError(f"{where}: expected {len(inner)} values, got {list(value)}")
        return tuple(_convert(t, v, f"{where}[{i}]") for i, (t, v) in
                     enumerate(zip(inner, value, strict=True)))
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (lists, not tuples) that `yaml.safe_dump` writes and
    `config_from_dict` reads back."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def config_diff(a: Any, b: Any) -> list[str]:
    """Dotted names of the fields where two configs of one class differ."""
    return differing_names(config_to_dict(a), config_to_dict(b))


# ---- presets -----------------------------------------------------------------------------------


def preset_dir() -> Path:
    """`config/train/` of the workspace (or $VAM_TRAIN_CONFIG_DIR)."""
    if os.environ.get(PRESET_DIR_ENV):
        return Path(os.environ[PRESET_DIR_ENV])
    # src/vam_policy/vam_policy/train/config.py -> repository root
    return Path(__file__).resolve().parents[4] / "config" / "train"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def preset_names(family: str) -> list[str]:
    """The presets in `config/train/<family>.yaml`."""
    return sorted(_family(family)[1])


def _family(family: str) -> tuple[str, dict[str, Any]]:
    path = preset_dir() / f"{family}.yaml"
    if not path.is_file():
        raise ConfigError(f"no preset file {path} for config family {family!r}; give a YAML "
                          f"path instead, or set {PRESET_DIR_ENV}")
    data = _read_yaml(path)
    presets = data.get("presets")
    if not isinstance(presets, dict) or data.get("default") not in presets:
        raise ConfigError(f"{path}: expected `presets:` (a mapping) and `default:` naming one")
    return data["default"], presets


def _preset_data(spec: str, family: str) -> dict[str, Any]:
    name, _, preset = spec.partition(":")
    if name != family:
        raise ConfigError(f"config {spec!r}: expected a {family!r} preset ({family}:NAME) or a "
                          "YAML file path")
    default, presets = _family(family)
    preset = preset or default
    if preset not in presets:
        close = difflib.get_close_matches(preset, list(presets), n=1)
        hint = f" Did you mean {family}:{close[0]}?" if close else ""
        raise ConfigError(f"unknown {family} preset {preset!r}.{hint} "
                          f"Known: {', '.join(sorted(presets))}")
    return dict(presets[preset] or {})


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_train_config(spec: str | Path, cls: type[_C]) -> _C:
    """The config `spec` names: "idm", "idm:tiny", or a YAML path (with optional `extends`)."""
    family = FAMILIES[cls]
    path = Path(spec)
    if str(spec).endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = _read_yaml(path)
        base = data.pop("extends", None)
        if base is not None:
            data = _merge(_preset_data(str(base), family), data)
        return config_from_dict(cls, data, str(path))
    return config_from_dict(cls, _preset_data(str(spec), family), str(spec))


def save_train_config(config: Any, path: Path) -> None:
    """Write the resolved config as YAML (loadable by `load_train_config(path, ...)`)."""
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
