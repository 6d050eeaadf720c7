"""Decoder ensembles: policy checkpoints that share a backbone, joined into one checkpoint.

Stage-2 runs on the same backbone and data that differ only in their seed make decoders whose
errors differ from scene to scene; the joined policy averages their chunks (`VAMPolicy`).
Joining checks that the members can be averaged: the same policy config (joints, cameras,
frame size, decoder architecture, action representation) and bitwise the same backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from vam_policy.dotted_names import differing_names
from vam_policy.model.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
)
from vam_policy.model.policy import VAMPolicy


def join_policies(policies: Sequence[VAMPolicy], names: Sequence[str]) -> VAMPolicy:
    """One policy with every member's decoder heads on the first member's backbone.

    `names` label the members in errors. Raises CheckpointError where a member's config or
    backbone differs from the first's.
    """
    if len(policies) < 2:
        raise CheckpointError(f"an ensemble needs at least two members, got {len(policies)}")
    first, first_name = policies[0], names[0]
    for policy, name in zip(policies[1:], names[1:], strict=True):
        differs = differing_names(first.config.to_dict(), policy.config.to_dict())
        if differs := [field for field in differs if field != "backbone.source"]:
            raise CheckpointError(f"{name}: its policy config differs from {first_name}'s in "
                                  f"{', '.join(differs)}")
        if difference := _weights_difference(first.backbone, policy.backbone):
            raise CheckpointError(f"{name}: its backbone is not {first_name}'s ({difference}); "
                                  "members must be trained on the same backbone")
    heads = [head for policy in policies for head in policy.heads]
    return VAMPolicy(first.config, first.backbone, heads, first.text_encoder).eval()


def ensemble_checkpoints(members: Sequence[str | Path], out: str | Path) -> Path:
    """Join the checkpoints `members` into the checkpoint `out`; its backbone is embedded
    when the first member's is, referenced as the first member references it otherwise."""
    embedded = read_manifest(members[0])["backbone"] == "embedded"
    policies = [load_checkpoint(member) for member in members]
    joined = join_policies(policies, [str(member) for member in members])
    return save_checkpoint(joined, out, embed_backbone=embedded)


def _weights_difference(first: torch.nn.Module, other: torch.nn.Module) -> str:
    mine, theirs = first.state_dict(), other.state_dict()
    if mine.keys() != theirs.keys():
        return "different parameters"
    for name, tensor in mine.items():
        if tensor.shape != theirs[name].shape or not torch.equal(tensor, theirs[name]):
            return f"{name} differs"
    return ""

