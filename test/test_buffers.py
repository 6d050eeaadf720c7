"""The node's shared state without ROS: observation buffers, watchdog, run state, rate meter,
and when the inference worker replans."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from vam_policy.model.transforms import FrameHistory
from vam_policy.ros.buffers import (
    JointSample,
    ObservationBuffers,
    RateMeter,
    RunState,
    State,
    StateView,
    history_capacity,
    stale_input,
)
from vam_policy.ros.inference import replan_after_ns

S = 1_000_000_000  # ns per second
T0 = 1_700_000_000 * S


def frame(value: int, height: int = 4, width: int = 6) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


def joints(stamp_ns: int, value: float = 0.0) -> JointSample:
    return JointSample(stamp_ns, np.full(3, value))


def test_observation_ends_at_the_newest_stamp_every_camera_has_reached() -> None:
    """t0 is the older of the cameras' newest frames, so no view is sampled into its future."""
    buffers = ObservationBuffers(cameras=2, capacity=64)
    for k in range(10):  # camera 0 at 20 Hz, camera 1 at 10 Hz and 0.12 s behind
        buffers.push_frame(0, T0 + k * S // 20, frame(k))
    for k in range(4):
        buffers.push_frame(1, T0 + k * S // 10, frame(100 + k))
    buffers.push_joints(joints(T0 + 280_000_000, 1.0))
    buffers.push_joints(joints(T0 + 310_000_000, 2.0))
    observation = buffers.observation(history_frames=3, fps=10.0, max_joint_gap_s=0.5)
    assert observation is not None
    assert observation.stamp_ns == T0 + 300_000_000
    assert observation.frames.shape == (3, 4, 12, 3)  # two views tiled side by side
    assert observation.frames[:, 0, 0, 0].tolist() == [2, 4, 6]  # camera 0 at t0-0.2 .. t0
    assert observation.frames[:, 0, 6, 0].tolist() == [101, 102, 103]
    assert observation.joints.positions[0] == 2.0  # 10 ms from t0 beats 20 ms


def test_node_buffers_sample_like_the_dataset_builder() -> None:
    """Training/serving parity: a camera at 30 Hz sampled at 10 fps gives FrameHistory's frames."""
    stamps = [T0 + round(k * S / 30) for k in range(40)]
    offline = FrameHistory(capacity=64)
    buffers = ObservationBuffers(cameras=1, capacity=64)
    for k, stamp in enumerate(stamps):
        offline.push(stamp / S, frame(k))
        buffers.push_frame(0, stamp, frame(k))
    buffers.push_joints(joints(stamps[-1]))
    observation = buffers.observation(history_frames=5, fps=10.0, max_joint_gap_s=0.1)
    assert observation is not None
    expected = offline.sample(stamps[-1] / S, 5, 10.0)
    assert np.array_equal(observation.frames, expected)


def test_observation_waits_for_every_input_and_enough_history() -> None:
    buffers = ObservationBuffers(cameras=2, capacity=64)
    assert buffers.observation(2, 10.0, 0.5) is None
    buffers.push_frame(0, T0, frame(0))
    buffers.push_joints(joints(T0))
    assert buffers.observation(2, 10.0, 0.5) is None  # camera 1 never sent a frame
    buffers.push_frame(1, T0, frame(0))
    assert buffers.observation(2, 10.0, 0.5) is None  # history does not reach 0.1 s back
    buffers.push_frame(0, T0 + S // 10, frame(1))
    buffers.push_frame(1, T0 + S // 10, frame(1))
    assert buffers.observation(2, 10.0, 0.5) is not None


def test_joint_state_far_from_the_frames_is_not_an_observation() -> None:
    """Frames of now with joints of a second ago would condition the policy on a wrong state."""
    buffers = ObservationBuffers(cameras=1, capacity=8)
    buffers.push_frame(0, T0 + 2 * S, frame(0))
    buffers.push_joints(joints(T0))
    assert buffers.observation(1, 10.0, max_joint_gap_s=0.5) is None
    buffers.push_joints(joints(T0 + 2 * S - S // 10))
    assert buffers.observation(1, 10.0, max_joint_gap_s=0.5) is not None


def test_frames_before_a_resume_never_reach_the_model() -> None:
    """After `forget_frames_before(t)` the history must be rebuilt from frames at or after t;
    an old frame replayed later is still refused."""
    buffers = ObservationBuffers(cameras=1, capacity=64)
    for k in range(10):
        buffers.push_frame(0, T0 + k * S // 10, frame(0))
    buffers.push_joints(joints(T0 + 9 * S // 10))
    assert buffers.observation(3, 10.0, 0.5) is not None
    resume = T0 + S
    buffers.forget_frames_before(resume)
    assert buffers.observation(3, 10.0, 0.5) is None
    with pytest.raises(ValueError, match="not newer"):
        buffers.push_frame(0, T0 + 5 * S // 10, frame(0))
    for k in range(3):
        stamp = resume + k * S // 10
        buffers.push_frame(0, stamp, frame(1))
        buffers.push_joints(joints(stamp))
    observation = buffers.observation(3, 10.0, 0.5)
    assert observation is not None
    assert np.array_equal(observation.frames, np.stack([frame(1)] * 3))


@pytest.mark.parametrize("offset_ns", [0, -1])
def test_duplicate_and_older_stamps_are_refused(offset_ns: int) -> None:
    buffers = ObservationBuffers(cameras=1, capacity=8)
    buffers.push_frame(0, T0, frame(0))
    buffers.push_joints(joints(T0))
    with pytest.raises(ValueError, match="not newer"):
        buffers.push_frame(0, T0 + offset_ns, frame(1))
    with pytest.raises(ValueError, match="not newer"):
        buffers.push_joints(joints(T0 + offset_ns))
    assert buffers.newest_frame_stamps_ns() == (T0,)


def test_wait_for_frames_after_wakes_on_a_newer_frame_from_another_thread() -> None:
    buffers = ObservationBuffers(cameras=1, capacity=8)
    buffers.push_frame(0, T0, frame(0))
    assert not buffers.wait_for_frames_after(T0, timeout_s=0.01)
    threading.Timer(0.05, buffers.push_frame, (0, T0 + S // 1000, frame(1))).start()
    assert buffers.wait_for_frames_after(T0, timeout_s=5.0)


def test_replanning_waits_for_frames_replan_steps_newer_less_a_millisecond() -> None:
    assert replan_after_ns(T0, 2, 0.1) == T0 + 199_000_000
    assert replan_after_ns(T0, 0, 0.1) == T0  # any newer frame
    buffers = ObservationBuffers(cameras=1, capacity=8)
    buffers.push_frame(0, T0 + 199_500_000, frame(1))  # half a millisecond early: on time
    assert buffers.wait_for_frames_after(replan_after_ns(T0, 2, 0.1), timeout_s=0.0)
    assert not buffers.wait_for_frames_after(replan_after_ns(T0, 3, 0.1), timeout_s=0.0)


def test_history_capacity_reaches_back_at_the_fastest_supported_camera() -> None:
    capacity = history_capacity(history_frames=5, fps=10.0)
    buffers = ObservationBuffers(cameras=1, capacity=capacity)
    stamps = [T0 + round(k * S / 120) for k in range(200)]
    for k, stamp in enumerate(stamps):
        buffers.push_frame(0, stamp, frame(k % 256))
    buffers.push_joints(joints(stamps[-1]))
    assert buffers.observation(5, 10.0, 0.1) is not None


@pytest.mark.parametrize(
    ("frames", "joint", "expected"),
    [
        ((T0, T0), T0, None),
        ((T0, None), T0, "stale camera /b: no frame received yet"),
        ((T0 - S, T0), T0, "stale camera /a: newest frame older than max_obs_age_s 0.5 s"),
        ((T0, T0), None, "stale joint states: none received yet"),
        ((T0, T0), T0 - S, "stale joint states: newest older than max_obs_age_s 0.5 s"),
        ((T0 - S // 2, T0), T0, None),  # exactly max_obs_age_s old is still fresh
    ],
)
def test_watchdog_names_the_stale_input(frames, joint, expected) -> None:
    assert stale_input(T0, ["/a", "/b"], frames, joint, 0.5) == expected


def test_run_state_precedence_and_fault_recovery() -> None:
    changes: list[StateView] = []
    run = RunState(has_policy=True, paused=True, instruction="lift", on_change=changes.append)
    assert run.view().state is State.PAUSED and not run.running.is_set()
    assert run.set_paused(False)
    assert run.view().state is State.RUNNING and run.running.is_set()
    assert run.raise_fault("camera /a", "camera /a: encoding 16UC1")
    assert not run.raise_fault("camera /a", "camera /a: encoding 16UC1")  # repeat: no change
    assert run.view().state is State.FAULTED and not run.running.is_set()
    assert run.raise_fault("watchdog", "stale camera /a")
    assert run.clear_fault("watchdog")
    assert run.view().last_fault == "camera /a: encoding 16UC1"  # the newest active one
    assert run.clear_fault("camera /a")
    view = run.view()
    assert view.state is State.RUNNING and view.last_fault == "stale camera /a"  # last raised
    assert [c.state for c in changes] == [State.RUNNING, State.FAULTED, State.FAULTED,
                                          State.FAULTED, State.RUNNING]


def test_latched_fault_stays_until_an_operator_clears_it() -> None:
    run = RunState(has_policy=True, paused=False, instruction="")
    run.raise_fault("safety", "joint outside limits", latch=True)
    run.clear_fault("safety")
    assert run.view().state is State.FAULTED
    run.clear_latched()
    assert run.view().state is State.RUNNING


def test_without_a_policy_the_node_is_idle_whatever_else_happens() -> None:
    run = RunState(has_policy=False, paused=False, instruction="")
    run.raise_fault("watchdog", "stale")
    run.set_paused(True)
    assert run.view().state is State.IDLE and not run.running.is_set()


def test_rate_meter_measures_and_drops_to_zero_when_publishing_stops() -> None:
    meter = RateMeter(window_s=2.0)
    for k in range(30):
        meter.tick(T0 + k * S // 10)
    now = T0 + 29 * S // 10
    assert meter.rate_hz(now) == pytest.approx(10.0)
    assert meter.rate_hz(now + S) == 0.0
