"""Decoder ensembles on the tiny preset: the mean chunk, the checkpoint, joining, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vam_policy.cli import main
from vam_policy.model.checkpoint import (
    MANIFEST,
    CheckpointError,
    head_files,
    load_checkpoint,
    save_checkpoint,
)
from vam_policy.model.decoder import ActionDecoder
from vam_policy.model.ensemble import ensemble_checkpoints, join_policies
from vam_policy.model.policy import DecoderHead, NormStats, VAMPolicy
from vam_policy.model.policy_config import policy_preset
from vam_policy.model.transforms import Normalizer

JOINTS = [f"joint{i}" for i in range(1, 8)]
INSTRUCTION = "lift the red cube"


def _stats(seed: int) -> NormStats:
    rng = np.random.default_rng(seed)
    return NormStats(Normalizer(rng.normal(size=7), rng.uniform(0.5, 2, size=7)),
                     Normalizer(rng.normal(size=7), rng.uniform(0.1, 1, size=7)))


def _member(base: VAMPolicy, seed: int) -> VAMPolicy:
    """A policy on `base`'s backbone with its own decoder and statistics."""
    torch.manual_seed(seed)
    head = DecoderHead(ActionDecoder(base.config.decoder), _stats(seed))
    return VAMPolicy(base.config, base.backbone, [head], base.text_encoder).eval()


@pytest.fixture(scope="module")
def members() -> list[VAMPolicy]:
    torch.manual_seed(0)
    base = VAMPolicy.build(policy_preset("tiny", joint_names=JOINTS), _stats(0)).eval()
    return [base, _member(base, 1), _member(base, 2)]


@pytest.fixture(scope="module")
def saved(members, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("members")
    return [save_checkpoint(policy, root / f"m{i}") for i, policy in enumerate(members)]


@pytest.fixture(scope="module")
def observation() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (5, 48, 64, 3), dtype=np.uint8), rng.normal(size=7)


def _predict(policy: VAMPolicy, observation) -> np.ndarray:
    frames, state = observation
    return policy.predict(frames, state, INSTRUCTION, seed=5, noise_scale=0.0)


def test_the_ensemble_chunk_is_the_mean_of_its_members(members, observation) -> None:
    joined = join_policies(members, ["a", "b", "c"])
    assert len(joined.heads) == 3
    chunks = [_predict(policy, observation) for policy in members]
    assert not np.allclose(chunks[0], chunks[1])  # the members disagree ...
    np.testing.assert_allclose(_predict(joined, observation), np.mean(chunks, axis=0),
                               atol=1e-6)  # ... and the ensemble takes their mean
    # member(k) is decoder k alone, on the shared backbone
    np.testing.assert_array_equal(_predict(joined.member(1), observation), chunks[1])


def test_an_ensemble_has_no_single_decoder(members) -> None:
    joined = join_policies(members[:2], ["a", "b"])
    with pytest.raises(ValueError, match="ensemble of 2 decoders"):
        _ = joined.decoder
    with pytest.raises(ValueError, match="ensemble of 2 decoders"):
        joined.stats = _stats(3)


def test_ensemble_checkpoint_round_trips(saved, observation, tmp_path: Path) -> None:
    folder = ensemble_checkpoints(saved, tmp_path / "ensemble")
    manifest = json.loads((folder / MANIFEST).read_text())
    assert (manifest["format_version"], manifest["decoders"]) == (2, 3)
    assert all((folder / name).is_file() for i in range(3) for name in head_files(i))
    loaded = load_checkpoint(folder)
    expected = np.mean([_predict(load_checkpoint(m), observation) for m in saved], axis=0)
    np.testing.assert_allclose(_predict(loaded, observation), expected, atol=1e-6)
    # An ensemble joins further members, its decoders flattened into one list.
    bigger = ensemble_checkpoints([folder, saved[0]], tmp_path / "bigger")
    assert len(load_checkpoint(bigger).heads) == 4


def test_members_on_another_backbone_are_refused(saved, tmp_path: Path) -> None:
    torch.manual_seed(7)
    other = VAMPolicy.build(policy_preset("tiny", joint_names=JOINTS), _stats(7))
    stranger = save_checkpoint(other, tmp_path / "stranger")
    with pytest.raises(CheckpointError, match=r"stranger: its backbone is not .*m0's"):
        ensemble_checkpoints([saved[0], stranger], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_members_with_another_config_are_refused(saved, tmp_path: Path) -> None:
    longer = shutil.copytree(saved[1], tmp_path / "longer")
    manifest = json.loads((longer / MANIFEST).read_text())
    manifest["policy"]["action_representation"] = "absolute"
    manifest["policy"]["backbone"]["tau_v"] = 0.25
    (longer / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"longer: its policy config differs from .*m0's "
                       r"in action_representation, backbone.tau_v$"):
        ensemble_checkpoints([saved[0], longer], tmp_path / "out")


def test_one_member_is_not_an_ensemble(saved, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="at least two members"):
        ensemble_checkpoints(saved[:1], tmp_path / "out")


def test_missing_or_miscounted_decoders_are_reported(saved, tmp_path: Path) -> None:
    folder = ensemble_checkpoints(saved[:2], tmp_path / "ensemble")
    weights, _ = head_files(1)
    (folder / weights).unlink()
    with pytest.raises(CheckpointError, match=f"{weights}: missing"):
        load_checkpoint(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    for bad in (0, "2", 1.5):
        (folder / MANIFEST).write_text(json.dumps({**manifest, "decoders": bad}))
        with pytest.raises(CheckpointError, match='"decoders" must be a positive integer'):
            load_checkpoint(folder)
    (folder / MANIFEST).write_text(json.dumps({**manifest, "format_version": 1}))
    with pytest.raises(CheckpointError, match="1 in format 1"):
        load_checkpoint(folder)


def test_format_1_checkpoints_still_load(saved, observation, tmp_path: Path) -> None:
    """Format 1 (one decoder, no `decoders` key) is what checkpoints before ensembles wrote."""
    old = shutil.copytree(saved[0], tmp_path / "old")
    manifest = json.loads((old / MANIFEST).read_text())
    del manifest["decoders"]
    (old / MANIFEST).write_text(json.dumps({**manifest, "format_version": 1}))
    policy = load_checkpoint(old)
    assert len(policy.heads) == 1
    np.testing.assert_array_equal(_predict(policy, observation),
                                  _predict(load_checkpoint(saved[0]), observation))


def test_vam_checkpoint_ensemble_cli(saved, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ensemble"
    assert main(["checkpoint", "ensemble", str(saved[0]), str(saved[2]), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out.resolve())
    assert len(load_checkpoint(out).heads) == 2
    assert main(["checkpoint", "ensemble", str(saved[0]), str(tmp_path / "nope"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err
