"""VAMPolicy and its checkpoints on the tiny preset: shapes, reproducibility, bad inputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from vam_policy.model.checkpoint import (
    DECODER_WEIGHTS,
    MANIFEST,
    NORMALIZATION,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from vam_policy.model.policy import NormStats, VAMPolicy
from vam_policy.model.policy_config import PolicyConfig, policy_preset
from vam_policy.model.transforms import Normalizer

JOINTS = [f"joint{i}" for i in range(1, 8)]


@pytest.fixture(scope="module")
def policy() -> VAMPolicy:
    config = policy_preset("tiny", joint_names=JOINTS)
    rng = np.random.default_rng(0)
    stats = NormStats(
        Normalizer(rng.normal(size=7), rng.uniform(0.5, 2, size=7)),
        Normalizer(rng.normal(size=7), rng.uniform(0.1, 1, size=7)),
    )
    return VAMPolicy.build(config, stats).eval()


@pytest.fixture(scope="module")
def observation() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (5, 48, 64, 3), dtype=np.uint8), rng.normal(size=7)


@pytest.fixture(scope="module")
def saved(policy: VAMPolicy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(policy, tmp_path_factory.mktemp("ckpt") / "tiny")


def test_predict_returns_finite_joint_targets(policy: VAMPolicy, observation) -> None:
    frames, state = observation
    targets = policy.predict(frames, state, "lift the red cube", seed=0)
    assert targets.shape == (policy.config.horizon, 7)
    assert np.all(np.isfinite(targets))


def test_predict_batched_matches_shapes_and_mixed_instructions(policy, observation) -> None:
    frames, state = observation
    targets = policy.predict(
        np.stack([frames, frames[:, ::-1]]), np.stack([state, state + 0.1]),
        ["lift the red cube", "push the blue cube to the left"], seed=0,
    )
    assert targets.shape == (2, policy.config.horizon, 7)


def test_same_seed_same_chunk_other_seed_other_chunk(policy, observation) -> None:
    frames, state = observation
    first = policy.predict(frames, state, "lift the red cube", seed=3)
    assert np.array_equal(first, policy.predict(frames, state, "lift the red cube", seed=3))
    assert not np.allclose(first, policy.predict(frames, state, "lift the red cube", seed=4))


def test_relative_actions_are_anchored_at_the_current_state(policy, observation) -> None:
    """Relative coding: decode(encode(targets, state), state) gives the targets back."""
    _, state = observation
    coded = policy.actions.encode(np.ones((8, 7)), state)
    assert np.allclose(policy.actions.decode(coded, state), 1.0)


def test_instruction_embeddings_are_cached(policy, observation) -> None:
    frames, state = observation
    policy.predict(frames, state, "stack the cubes", seed=0)
    cached = policy._text_cache["stack the cubes"]
    policy.predict(frames, state, "stack the cubes", seed=0)
    assert policy._text_cache["stack the cubes"] is cached


@pytest.mark.parametrize(
    ("frames_shape", "state", "message"),
    [
        ((4, 48, 64, 3), np.zeros(7), "T=5"),
        ((5, 48, 64, 4), np.zeros(7), "RGB"),
        ((5, 48, 64, 3), np.zeros(6), "J=7"),
        ((5, 48, 64, 3), np.array([0, 0, np.nan, 0, 0, 0, 0.0]), "finite"),
    ],
)
def test_bad_inputs_raise_value_error_saying_what_was_expected(
    policy, frames_shape, state, message
) -> None:
    frames = np.zeros(frames_shape, dtype=np.uint8)
    with pytest.raises(ValueError, match=message):
        policy.predict(frames, state, "lift the red cube")


def test_float_frames_are_rejected(policy) -> None:
    with pytest.raises(ValueError, match="uint8"):
        policy.predict(np.zeros((5, 48, 64, 3), np.float32), np.zeros(7), "x")


def test_save_load_gives_bit_identical_predictions(policy, observation, saved) -> None:
    frames, state = observation
    loaded = load_checkpoint(saved)
    expected = policy.predict(frames, state, "lift the red cube", seed=11)
    assert np.array_equal(loaded.predict(frames, state, "lift the red cube", seed=11), expected)
    # The manifest keeps the config as trained; loading points the backbone at its folder.
    assert dataclasses.replace(loaded.config.backbone, source="tiny") == policy.config.backbone
    assert loaded.config.decoder == policy.config.decoder


def test_config_round_trips_through_json(policy) -> None:
    again = PolicyConfig.from_dict(json.loads(json.dumps(policy.config.to_dict())))
    assert again == policy.config


def test_decoder_video_grid_follows_the_backbone_frame_size() -> None:
    config = policy_preset("tiny", joint_names=JOINTS)
    assert config.decoder.video_grid == config.backbone.token_grid == (4, 2, 2)
    bigger = config.with_backbone(height=64, width=96)
    assert bigger.decoder.video_grid == bigger.backbone.token_grid == (4, 4, 6)
    with pytest.raises(ValueError, match=r"decoder.video_grid is \[4, 2, 2\] but"):
        dataclasses.replace(config, backbone=bigger.backbone)


def test_each_camera_keeps_the_preset_frame_size() -> None:
    """Two cameras tiled side by side: a frame twice as wide, twice the tokens a latent frame,
    so neither view is cropped to fit the preset's width."""
    one = policy_preset("tiny", joint_names=JOINTS)
    two = policy_preset("tiny", joint_names=JOINTS, cameras=2)
    assert (two.backbone.height, two.backbone.width) == (one.backbone.height,
                                                         2 * one.backbone.width)
    assert two.decoder.video_grid == two.backbone.token_grid == (4, 2, 4)


def test_unknown_preset_suggests_the_close_name() -> None:
    with pytest.raises(ValueError, match="Did you mean 'tiny'"):
        policy_preset("tinny", joint_names=JOINTS)


def _copy(saved: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(saved, tmp_path / "copy"))


def test_missing_checkpoint_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_checkpoint(tmp_path / "nope")


def test_missing_weights_file_is_named(saved: Path, tmp_path: Path) -> None:
    ckpt = _copy(saved, tmp_path)
    (ckpt / DECODER_WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=f"{DECODER_WEIGHTS}: missing"):
        load_checkpoint(ckpt)


def test_truncated_weights_are_reported_as_corrupt(saved: Path, tmp_path: Path) -> None:
    ckpt = _copy(saved, tmp_path)
    data = (ckpt / DECODER_WEIGHTS).read_bytes()
    (ckpt / DECODER_WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{DECODER_WEIGHTS}: corrupt or truncated"):
        load_checkpoint(ckpt)


def test_weights_that_do_not_fit_the_config_are_reported(saved: Path, tmp_path: Path) -> None:
    ckpt = _copy(saved, tmp_path)
    manifest = json.loads((ckpt / MANIFEST).read_text())
    manifest["policy"]["decoder"]["width"] = 32
    (ckpt / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="does not match the config"):
        load_checkpoint(ckpt)


def test_corrupt_manifest_and_future_version_are_reported(saved: Path, tmp_path: Path) -> None:
    ckpt = _copy(saved, tmp_path)
    manifest = json.loads((ckpt / MANIFEST).read_text())
    (ckpt / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(ckpt)
    (ckpt / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(ckpt)


def test_missing_statistics_are_reported(saved: Path, tmp_path: Path) -> None:
    ckpt = _copy(saved, tmp_path)
    (ckpt / NORMALIZATION).unlink()
    with pytest.raises(CheckpointError, match=f"{NORMALIZATION}: missing"):
        load_checkpoint(ckpt)


def test_random_backbone_cannot_be_referenced_instead_of_embedded(policy, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="embed it"):
        save_checkpoint(policy, tmp_path / "ref", embed_backbone=False)
