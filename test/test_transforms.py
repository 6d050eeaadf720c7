"""Transforms shared by the dataset builder and the node."""

from __future__ import annotations

import numpy as np
import pytest

from vam_policy.model.transforms import (
    ActionCoding,
    FrameHistory,
    FramePreprocess,
    Normalizer,
    reorder_joints,
    tile_cameras,
)


def test_frame_preprocess_keeps_the_centre_field_of_view() -> None:
    """A 40x80 frame with a bright centre square comes out 32x32 with the square centred."""
    frame = np.zeros((1, 40, 80, 3), np.uint8)
    frame[:, 10:30, 30:50] = 255
    out = FramePreprocess(32, 32)(frame)
    assert out.shape == (3, 1, 32, 32) and out.dtype == np.float32
    assert out.min() == -1.0 and out.max() == 1.0
    bright = np.argwhere(out[0, 0] > 0)
    assert np.allclose(bright.mean(axis=0), [15.5, 15.5], atol=1.0)


def test_frame_preprocess_rejects_bgra_and_float_frames() -> None:
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        FramePreprocess(32, 32)(np.zeros((2, 32, 32, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        FramePreprocess(32, 32)(np.zeros((2, 32, 32, 3), np.float32))


def test_reorder_joints_by_name_and_drops_extras() -> None:
    out = reorder_joints(["b", "gripper", "a"], np.array([2.0, 9.0, 1.0]), ("a", "b"))
    assert out.tolist() == [1.0, 2.0]


def test_reorder_joints_names_missing_and_duplicate_joints() -> None:
    with pytest.raises(ValueError, match=r"lacks joints \['c'\]"):
        reorder_joints(["a", "b"], np.zeros(2), ("a", "c"))
    with pytest.raises(ValueError, match="duplicates"):
        reorder_joints(["a", "a"], np.zeros(2), ("a",))
    with pytest.raises(ValueError, match="expected 2 values"):
        reorder_joints(["a", "b"], np.zeros(3), ("a",))


def test_normalizer_fit_keeps_unit_std_for_still_joints() -> None:
    samples = np.stack([np.linspace(-1, 1, 50), np.full(50, 0.3)], axis=1)
    norm = Normalizer.fit(samples)
    assert norm.std[1] == 1.0
    x = np.array([0.5, 0.31])
    assert np.allclose(norm.unnormalize(norm.normalize(x)), x, atol=1e-6)


def test_normalizer_rejects_zero_or_nan_std() -> None:
    with pytest.raises(ValueError, match="std > 0"):
        Normalizer(np.zeros(2), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="finite"):
        Normalizer(np.array([np.nan, 0.0]), np.ones(2))


def test_action_coding_relative_round_trip_and_unknown_name() -> None:
    coding = ActionCoding("relative")
    targets, state = np.random.default_rng(0).normal(size=(4, 3)), np.array([1.0, 2.0, 3.0])
    assert np.allclose(coding.encode(targets, state)[0], targets[0] - state)
    assert np.allclose(coding.decode(coding.encode(targets, state), state), targets, atol=1e-6)
    with pytest.raises(ValueError, match="absolute"):
        ActionCoding("delta")


def test_frame_history_samples_at_model_fps_from_a_faster_camera() -> None:
    """A 30 Hz camera sampled at 10 Hz gives the newest frame at or before each instant."""
    history = FrameHistory()
    for k in range(31):
        history.push(k / 30, np.full((2, 2, 3), k, np.uint8))
    frames = history.sample(t=1.0, n=3, fps=10)
    assert [int(f[0, 0, 0]) for f in frames] == [24, 27, 30]
    assert history.sample(t=1.0, n=20, fps=10) is None  # reaches before the first frame


def test_frame_history_rejects_out_of_order_and_nan_stamps() -> None:
    history = FrameHistory()
    history.push(1.0, np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="not newer"):
        history.push(0.5, np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="finite"):
        history.push(float("nan"), np.zeros((2, 2, 3), np.uint8))


def test_tile_cameras_side_by_side() -> None:
    a, b = np.zeros((2, 4, 5, 3), np.uint8), np.ones((2, 4, 6, 3), np.uint8)
    assert tile_cameras([a, b]).shape == (2, 4, 11, 3)
    with pytest.raises(ValueError, match="share"):
        tile_cameras([a, np.zeros((2, 3, 5, 3), np.uint8)])
