"""ChunkScheduler: stamp alignment, exhaustion, blending and ordering of action chunks."""

from __future__ import annotations

import numpy as np
import pytest

from vam_policy.model.chunking import ChunkScheduler


def _ramp(steps: int, joints: int = 2, start: float = 0.0) -> np.ndarray:
    """Chunk whose step k holds start + k in every joint, so positions name their step."""
    return start + np.repeat(np.arange(steps, dtype=float)[:, None], joints, axis=1)


def test_late_chunk_skips_steps_already_in_the_past() -> None:
    """Inference latency: steps meant for times before now must not be sent."""
    scheduler = ChunkScheduler(execute_steps=10, blend_steps=0)
    scheduler.submit(_ramp(10), observation_time_s=100.0, dt=0.1)
    times, positions = scheduler.plan(now_s=100.25, n_points=3)
    assert times == pytest.approx([0.05, 0.15, 0.25])
    assert positions[:, 0].tolist() == [3.0, 4.0, 5.0]


def test_a_step_due_exactly_now_is_skipped() -> None:
    scheduler = ChunkScheduler(execute_steps=10, blend_steps=0)
    scheduler.submit(_ramp(10), observation_time_s=0.0, dt=0.5)
    times, positions = scheduler.plan(now_s=1.0, n_points=1)
    assert times.tolist() == [0.5] and positions[0, 0] == 3.0


def test_steps_due_within_the_lead_are_left_out() -> None:
    """A step due 5 ms from now would be past when the controller receives it: not sent, and
    when it is the chunk's last usable step nothing is sent (the last trajectory holds it)."""
    scheduler = ChunkScheduler(execute_steps=4, blend_steps=0)
    scheduler.submit(_ramp(10), observation_time_s=0.0, dt=0.1)
    times, positions = scheduler.plan(now_s=0.195, n_points=5, min_lead_s=0.02)
    assert times == pytest.approx([0.105]) and positions[:, 0].tolist() == [3.0]
    assert scheduler.plan(now_s=0.295, n_points=5, min_lead_s=0.02) is None
    assert scheduler.plan(now_s=0.295, n_points=5)[1][:, 0].tolist() == [3.0]
    with pytest.raises(ValueError, match="min_lead_s"):
        scheduler.plan(now_s=0.0, n_points=5, min_lead_s=float("nan"))


def test_chunk_is_exhausted_after_execute_steps_and_the_node_holds() -> None:
    scheduler = ChunkScheduler(execute_steps=3, blend_steps=0)
    assert scheduler.plan(0.0, 5) is None  # nothing submitted yet
    scheduler.submit(_ramp(8), observation_time_s=0.0, dt=0.1)
    _, positions = scheduler.plan(now_s=0.0, n_points=5)
    assert positions[:, 0].tolist() == [1.0, 2.0]  # steps 3.. are never executed
    assert scheduler.plan(now_s=0.2, n_points=5) is None
    assert scheduler.plan(now_s=0.5, n_points=5) is None
    scheduler.submit(_ramp(8, start=10.0), observation_time_s=0.5, dt=0.1)
    assert scheduler.plan(now_s=0.5, n_points=5)[1][:, 0].tolist() == [11.0, 12.0]


def test_execute_steps_longer_than_the_chunk_uses_the_whole_chunk() -> None:
    scheduler = ChunkScheduler(execute_steps=50, blend_steps=0)
    scheduler.submit(_ramp(4), observation_time_s=0.0, dt=0.1)
    assert scheduler.plan(now_s=0.0, n_points=50)[1][:, 0].tolist() == [1.0, 2.0, 3.0]


def test_new_chunk_is_blended_in_from_what_the_old_one_commands() -> None:
    """First blended point equals the old chunk's point; weights then move to the new one."""
    scheduler = ChunkScheduler(execute_steps=20, blend_steps=4)
    scheduler.submit(np.zeros((20, 2)), observation_time_s=0.0, dt=0.1)
    scheduler.plan(now_s=0.05, n_points=1)
    scheduler.submit(np.ones((20, 2)), observation_time_s=0.3, dt=0.1)
    times, positions = scheduler.plan(now_s=0.42, n_points=7)
    assert times == pytest.approx([0.08, 0.18, 0.28, 0.38, 0.48, 0.58, 0.68])
    assert positions[:, 0] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_blend_reference_is_interpolated_in_time_on_the_old_chunk() -> None:
    """Chunks on offset grids: the old chunk is read at the new chunk's step times."""
    scheduler = ChunkScheduler(execute_steps=20, blend_steps=2)
    scheduler.submit(_ramp(20), observation_time_s=0.0, dt=0.1)
    scheduler.plan(now_s=0.0, n_points=1)
    scheduler.submit(np.full((20, 2), 100.0), observation_time_s=0.25, dt=0.1)
    _, positions = scheduler.plan(now_s=0.3, n_points=3)
    # New steps at 0.35, 0.45, 0.55 s; the old ramp commands 3.5 and 4.5 there.
    assert positions[:, 0] == pytest.approx([3.5, 0.5 * 4.5 + 0.5 * 100.0, 100.0])


def test_blend_is_fixed_when_the_new_chunk_takes_over() -> None:
    """Later plans continue the same blend instead of restarting it from weight 0."""
    scheduler = ChunkScheduler(execute_steps=20, blend_steps=4)
    scheduler.submit(np.zeros((20, 1)), observation_time_s=0.0, dt=0.1)
    scheduler.plan(now_s=0.0, n_points=1)
    scheduler.submit(np.ones((20, 1)), observation_time_s=0.2, dt=0.1)
    first = scheduler.plan(now_s=0.21, n_points=6)[1][:, 0]
    later = scheduler.plan(now_s=0.41, n_points=4)[1][:, 0]
    assert first == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    assert later == pytest.approx([0.5, 0.75, 1.0, 1.0])


def test_old_chunk_counts_as_held_after_its_last_executed_step() -> None:
    """The arm holds the last executed point of a used-up chunk; blending starts there."""
    scheduler = ChunkScheduler(execute_steps=4, blend_steps=2)
    scheduler.submit(_ramp(10), observation_time_s=0.0, dt=0.1)  # executes 0, 1, 2, 3
    scheduler.plan(now_s=0.0, n_points=1)
    scheduler.submit(np.full((10, 2), 9.0), observation_time_s=0.6, dt=0.1)
    _, positions = scheduler.plan(now_s=0.6, n_points=3)
    assert positions[:, 0] == pytest.approx([3.0, 0.5 * 3.0 + 0.5 * 9.0, 9.0])


def test_without_blending_a_new_chunk_switches_at_once() -> None:
    scheduler = ChunkScheduler(execute_steps=10, blend_steps=0)
    scheduler.submit(np.zeros((10, 1)), observation_time_s=0.0, dt=0.1)
    scheduler.plan(now_s=0.0, n_points=1)
    scheduler.submit(np.ones((10, 1)), observation_time_s=0.1, dt=0.1)
    assert scheduler.plan(now_s=0.1, n_points=2)[1][:, 0].tolist() == [1.0, 1.0]


def test_chunk_from_an_older_observation_is_rejected() -> None:
    scheduler = ChunkScheduler(execute_steps=5, blend_steps=2)
    scheduler.submit(_ramp(5), observation_time_s=2.0, dt=0.1)
    with pytest.raises(ValueError, match="out of order"):
        scheduler.submit(_ramp(5), observation_time_s=1.9, dt=0.1)
    scheduler.submit(_ramp(5, start=7.0), observation_time_s=2.0, dt=0.1)  # same time: replaces
    assert scheduler.plan(now_s=2.0, n_points=1)[1][0, 0] == 8.0
    scheduler.reset()
    assert scheduler.plan(now_s=2.0, n_points=1) is None
    with pytest.raises(ValueError, match="out of order"):
        scheduler.submit(_ramp(5), observation_time_s=1.0, dt=0.1)


@pytest.mark.parametrize(
    ("chunk", "dt", "expected"),
    [
        (np.zeros(5), 0.1, r"shape \[H, J\]"),
        (np.zeros((5, 3)), 0.1, "expected 2 joints"),
        (np.full((5, 2), np.nan), 0.1, "NaN"),
        (np.zeros((5, 2)), 0.0, "dt"),
    ],
)
def test_malformed_chunks_are_rejected(chunk: np.ndarray, dt: float, expected: str) -> None:
    scheduler = ChunkScheduler(execute_steps=5, blend_steps=0)
    scheduler.submit(np.zeros((5, 2)), observation_time_s=0.0, dt=0.1)
    with pytest.raises(ValueError, match=expected):
        scheduler.submit(chunk, observation_time_s=1.0, dt=dt)


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="execute_steps"):
        ChunkScheduler(execute_steps=0, blend_steps=0)
    with pytest.raises(ValueError, match="blend_steps"):
        ChunkScheduler(execute_steps=1, blend_steps=-1)
    with pytest.raises(ValueError, match="n_points"):
        ChunkScheduler(execute_steps=1, blend_steps=0).plan(0.0, 0)
