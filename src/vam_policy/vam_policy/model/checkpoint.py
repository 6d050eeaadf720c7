"""Policy checkpoints: one folder, a JSON manifest, safetensors weights, a format version.

Layout (format 2):
    vam_policy.json          manifest: format, format_version, PolicyConfig, backbone location,
                             decoders (how many: more than one is an ensemble)
    decoder.safetensors      action decoder weights
    normalization.safetensors  state_mean, state_std, action_mean, action_std
    decoder.K.safetensors, normalization.K.safetensors   the same for decoder K = 1, 2, ...
    backbone/transformer/, backbone/vae/   diffusers folders, unless the manifest references
                             the backbone by hub id or path (pretrained weights left unchanged)

Format 1 is format 2 with one decoder and no `decoders` key; both load.

Every failure to load names the file and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vam_policy.model.backbone import VideoBackbone
from vam_policy.model.backbone_config import is_preset
from vam_policy.model.decoder import ActionDecoder
from vam_policy.model.policy import DecoderHead, NormStats, VAMPolicy
from vam_policy.model.policy_config import PolicyConfig
from vam_policy.model.text_encoder import build_text_encoder
from vam_policy.model.transforms import Normalizer

FORMAT = "vam-policy-checkpoint"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "vam_policy.json"
DECODER_WEIGHTS = "decoder.safetensors"
NORMALIZATION = "normalization.safetensors"
BACKBONE_DIR = "backbone"
_EMBEDDED = "embedded"


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, corrupt, or does not fit its config."""


def save_checkpoint(policy: VAMPolicy, folder: str | Path, embed_backbone: bool = True) -> Path:
    """Write `policy` to `folder` (replaced as a whole, never left half-written).

    With `embed_backbone=False` and a backbone loaded from a hub id or folder, the manifest
    references that source instead of copying ~4 GB of unchanged weights.
    """
    folder = Path(folder).resolve()
    source = policy.config.backbone.source
    if not embed_backbone and is_preset(source):
        raise CheckpointError(
            f"backbone {source!r} has random weights and no folder to reference; embed it"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would keep the checkpoint from other users
    try:
        backbone_ref = source
        if embed_backbone:
            policy.backbone.save_pretrained(staging / BACKBONE_DIR)
            backbone_ref = _EMBEDDED
        for index, head in enumerate(policy.heads):
            weights, normalization = head_files(index)
            save_file(_contiguous(head.decoder.state_dict()), staging / weights)
            save_file(_stats_tensors(head.stats), staging / normalization)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "backbone": backbone_ref,
            "decoders": len(policy.heads),
            "policy": policy.config.to_dict(),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def head_files(index: int) -> tuple[str, str]:
    """The weights and normalization file names of decoder `index`."""
    if index == 0:
        return DECODER_WEIGHTS, NORMALIZATION
    return f"decoder.{index}.safetensors", f"normalization.{index}.safetensors"


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The checkpoint's manifest, checked for format, version and number of decoders."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    path = folder / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; {folder} is not a VAM policy checkpoint")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: expected \"format\": \"{FORMAT}\"")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path}: format_version {version!r}, this vam_policy reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    decoders = manifest.setdefault("decoders", 1)
    if type(decoders) is not int or decoders < 1 or (version == 1 and decoders != 1):
        raise CheckpointError(f"{path}: \"decoders\" must be a positive integer (1 in format "
                              f"1), got {decoders!r}")
    return manifest


def load_checkpoint(
    folder: str | Path, device: str | torch.device = "cpu", dtype: str | None = None
) -> VAMPolicy:
    """Load a policy saved by `save_checkpoint`, on `device`, optionally in another dtype."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    try:
        config = PolicyConfig.from_dict(manifest["policy"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{folder / MANIFEST}: invalid policy config: {error}") from None
    backbone_source = manifest.get("backbone")
    if backbone_source == _EMBEDDED:
        backbone_source = str((folder / BACKBONE_DIR).resolve())
        if not (folder / BACKBONE_DIR / "transformer").is_dir():
            raise CheckpointError(f"{folder / BACKBONE_DIR}: missing embedded backbone weights")
    backbone_config = dataclasses.replace(
        config.backbone, source=backbone_source, **({"dtype": dtype} if dtype else {})
    )
    config = dataclasses.replace(config, backbone=backbone_config)
    try:
        backbone = VideoBackbone.build(backbone_config)
    except (OSError, ValueError, SafetensorError) as error:
        raise CheckpointError(f"backbone {backbone_source}: cannot load ({error})") from None
    heads = []
    for index in range(manifest["decoders"]):
        weights, normalization = head_files(index)
        decoder = ActionDecoder(config.decoder)
        _load_weights(decoder, folder / weights)
        heads.append(DecoderHead(decoder,
                                 _read_stats(folder / normalization, len(config.joint_names))))
    policy = VAMPolicy(config, backbone, heads, build_text_encoder(backbone_config))
    return policy.to(device).eval()


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().contiguous().cpu() for name, tensor in state.items()}


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({error})") from None


def _load_weights(module: torch.nn.Module, path: Path) -> None:
    tensors = _read_tensors(path)
    expected = module.state_dict()
    missing = sorted(expected.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - expected.keys())
    wrong = [
        f"{name} {tuple(tensors[name].shape)} != {tuple(expected[name].shape)}"
        for name in sorted(expected.keys() & tensors.keys())
        if tensors[name].shape != expected[name].shape
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: does not match the config in {MANIFEST}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}"
        )
    module.load_state_dict(tensors)


def _stats_tensors(stats: NormStats) -> dict[str, torch.Tensor]:
    return {
        f"{name}_{part}": torch.from_numpy(getattr(norm, part).copy())
        for name, norm in (("state", stats.state), ("action", stats.action))
        for part in ("mean", "std")
    }


def _read_stats(path: Path, joints: int) -> NormStats:
    tensors = _read_tensors(path)
    keys = {f"{name}_{part}" for name in ("state", "action") for part in ("mean", "std")}
    if missing := sorted(keys - tensors.keys()):
        raise CheckpointError(f"{path}: missing statistics {missing}")
    try:
        state = Normalizer(tensors["state_mean"].numpy(), tensors["state_std"].numpy())
        action = Normalizer(tensors["action_mean"].numpy(), tensors["action_std"].numpy())
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None
    if state.mean.shape != (joints,) or action.mean.shape != (joints,):
        raise CheckpointError(f"{path}: statistics are not for {joints} joints")
    return NormStats(state, action)
