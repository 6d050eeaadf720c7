"""State shared by the node's callbacks, its control timer and its inference thread.

Subscriptions copy into `ObservationBuffers`, the inference thread reads consistent
observations out of it, and `RunState` decides whether the arm may move. Each class guards
itself with one lock, so the node needs no locking of its own around them. Pure Python and
numpy: no rclpy, so every rule here (stamp order, watchdog, fault latching) has unit tests.
Camera histories are the `FrameHistory` objects the dataset builder uses, so the node samples
frames exactly as training did.
"""

from __future__ import annotations

import bisect
import enum
import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vam_policy.model.transforms import FrameHistory, tile_cameras

_NS = 1_000_000_000
MAX_CAMERA_RATE_HZ = 120.0
"""Camera rate the frame histories are sized for; faster cameras get too short a history."""


@dataclass(frozen=True, eq=False)
class JointSample:
    """One joint state in profile order: stamp (ns), positions [J], velocities [J] or None."""

    stamp_ns: int
    positions: np.ndarray
    velocities: np.ndarray | None = None

    @property
    def stamp_s(self) -> float:
        return self.stamp_ns / _NS


@dataclass(frozen=True, eq=False)
class Observation:
    """What one inference sees: frames [T, H, W*cameras, 3] ending at t0, joints nearest t0."""

    stamp_ns: int
    frames: np.ndarray
    joints: JointSample

    @property
    def stamp_s(self) -> float:
        return self.stamp_ns / _NS


def history_capacity(history_frames: int, fps: float, slack_s: float = 0.25) -> int:
    """Frames a camera history must hold to reach (T-1)/fps back at MAX_CAMERA_RATE_HZ."""
    span_s = (history_frames - 1) / fps + slack_s
    return max(8, math.ceil(span_s * MAX_CAMERA_RATE_HZ) + 2)


class ObservationBuffers:
    """Camera histories (one per camera) and recent joint states, filled by subscriptions.

    `push_frame` and `push_joints` reject stamps that are not newer than the newest kept one
    (ValueError): a replayed or reordered message must not become "the newest observation".
    `observation` picks t0 = the newest stamp every camera has reached (the oldest of the
    cameras' newest frames), samples each history at the model's fps ending at t0, and takes
    the joint state nearest t0.
    """

    def __init__(self, cameras: int, capacity: int, joint_capacity: int = 256) -> None:
        if cameras < 1 or capacity < 1 or joint_capacity < 1:
            raise ValueError(f"need cameras, capacity and joint_capacity >= 1, got "
                             f"{cameras}, {capacity}, {joint_capacity}")
        self._histories = [FrameHistory(capacity=capacity) for _ in range(cameras)]
        self._newest_ns: list[int | None] = [None] * cameras
        self._joints: deque[JointSample] = deque(maxlen=joint_capacity)
        self._changed = threading.Condition()

    @property
    def cameras(self) -> int:
        return len(self._histories)

    def push_frame(self, camera: int, stamp_ns: int, frame: np.ndarray) -> None:
        """Add an RGB frame [H, W, 3]; ValueError when the stamp is not newer than the last."""
        with self._changed:
            self._histories[camera].push(stamp_ns / _NS, frame)
            self._newest_ns[camera] = stamp_ns
            self._changed.notify_all()

    def forget_frames_before(self, stamp_ns: int) -> None:
        """Drop every camera's frames older than `stamp_ns` (on resume): until new frames
        span the history again, `observation` is None and the arm holds."""
        with self._changed:
            for history in self._histories:
                history.forget_before(stamp_ns / _NS)

    def push_joints(self, sample: JointSample) -> None:
        """Add a joint state; ValueError when its stamp is not newer than the newest kept."""
        with self._changed:
            if self._joints and sample.stamp_ns <= self._joints[-1].stamp_ns:
                raise ValueError(
                    f"joint state stamp {sample.stamp_s:.6f} s is not newer than the last one "
                    f"{self._joints[-1].stamp_s:.6f} s"
                )
            self._joints.append(sample)

    def newest_frame_stamps_ns(self) -> tuple[int | None, ...]:
        """Per camera, the stamp (ns) of its newest frame, None before the first one."""
        with self._changed:
            return tuple(self._newest_ns)

    def newest_joints(self) -> JointSample | None:
        with self._changed:
            return self._joints[-1] if self._joints else None

    def observation(
        self, history_frames: int, fps: float, max_joint_gap_s: float
    ) -> Observation | None:
        """The newest consistent observation, or None while some input is missing.

        None also when a camera's history does not yet reach (T-1)/fps back, or when the joint
        state nearest t0 is more than `max_joint_gap_s` away from it.
        """
        with self._changed:
            if not self._joints or any(stamp is None for stamp in self._newest_ns):
                return None
            t0_ns = min(stamp for stamp in self._newest_ns if stamp is not None)
            views = [h.sample(t0_ns / _NS, history_frames, fps) for h in self._histories]
            if any(view is None for view in views):
                return None
            joints = self._nearest_joints(t0_ns)
        if abs(joints.stamp_ns - t0_ns) > max_joint_gap_s * _NS:
            return None
        frames = tile_cameras([view for view in views if view is not None])
        return Observation(t0_ns, frames, joints)

    def wait_for_frames_after(self, stamp_ns: int | None, timeout_s: float) -> bool:
        """Block until every camera has a frame newer than `stamp_ns` (True) or timeout."""

        def ready() -> bool:
            stamps = self._newest_ns
            if any(stamp is None for stamp in stamps):
                return False
            return stamp_ns is None or min(s for s in stamps if s is not None) > stamp_ns

        with self._changed:
            return self._changed.wait_for(ready, timeout=timeout_s)

    def _nearest_joints(self, stamp_ns: int) -> JointSample:
        stamps = [sample.stamp_ns for sample in self._joints]
        i = bisect.bisect_left(stamps, stamp_ns)
        candidates = [self._joints[j] for j in (i - 1, i) if 0 <= j < len(stamps)]
        return min(candidates, key=lambda sample: abs(sample.stamp_ns - stamp_ns))


def stale_input(
    now_ns: int,
    camera_topics: Sequence[str],
    frame_stamps_ns: Sequence[int | None],
    joint_stamp_ns: int | None,
    max_age_s: float,
) -> str | None:
    """The watchdog: why the node must hold (first stale input), or None when all are fresh.

    The reason names the input but not its age, so that it stays the same while the input
    stays stale (status messages go out on every change of reason).
    """
    limit_ns = max_age_s * _NS
    for topic, stamp in zip(camera_topics, frame_stamps_ns, strict=True):
        if stamp is None:
            return f"stale camera {topic}: no frame received yet"
        if now_ns - stamp > limit_ns:
            return f"stale camera {topic}: newest frame older than max_obs_age_s {max_age_s:g} s"
    if joint_stamp_ns is None:
        return "stale joint states: none received yet"
    if now_ns - joint_stamp_ns > limit_ns:
        return f"stale joint states: newest older than max_obs_age_s {max_age_s:g} s"
    return None


class State(enum.IntEnum):
    """Node states; values equal vam_msgs/PolicyStatus STATE_* constants."""

    IDLE = 0
    RUNNING = 1
    PAUSED = 2
    FAULTED = 3


@dataclass(frozen=True)
class StateView:
    """A consistent snapshot of `RunState` for status messages."""

    state: State
    instruction: str
    faults: tuple[str, ...]
    last_fault: str


class RunState:
    """Whether the arm may move: policy loaded, not paused, and no active fault.

    Faults are keyed by source (e.g. a camera topic, "joint_states", "watchdog"). A data fault
    clears itself when good data returns; a latched fault (the safety filter refused to
    command the arm) stays until an operator resumes, because it means a wrong profile, a
    sensor offset or a collision. `running` is set exactly while the state is RUNNING, for
    the inference thread to wait on. `on_change` is called with the new view after every
    change of state, instruction or fault reason (from whichever thread made it).
    """

    def __init__(
        self,
        has_policy: bool,
        paused: bool,
        instruction: str,
        on_change: Callable[[StateView], None] = lambda view: None,
    ) -> None:
        self._has_policy = has_policy
        self._paused = paused
        self._instruction = instruction
        self._faults: dict[str, str] = {}
        self._latched: set[str] = set()
        self._last_fault = ""
        self._on_change = on_change
        self._lock = threading.Lock()
        self.running = threading.Event()
        if self._state() is State.RUNNING:
            self.running.set()

    def view(self) -> StateView:
        with self._lock:
            return self._view()

    def set_paused(self, paused: bool) -> bool:
        return self._update(lambda: setattr(self, "_paused", paused))

    def set_instruction(self, instruction: str) -> bool:
        return self._update(lambda: setattr(self, "_instruction", instruction))

    def raise_fault(self, source: str, reason: str, latch: bool = False) -> bool:
        """Record a fault; True when it is new or its reason changed."""

        def apply() -> None:
            if self._faults.get(source) == reason:
                return  # repeated (e.g. every bad frame): no change, no status message
            self._faults.pop(source, None)  # re-insert: the newest fault is listed last
            self._faults[source] = reason
            self._last_fault = reason
            if latch:
                self._latched.add(source)

        return self._update(apply)

    def clear_fault(self, source: str) -> bool:
        """Clear a data fault; latched faults stay (see `clear_latched`)."""

        def apply() -> None:
            if source not in self._latched:
                self._faults.pop(source, None)

        return self._update(apply)

    def clear_latched(self) -> bool:
        def apply() -> None:
            for source in self._latched:
                self._faults.pop(source, None)
            self._latched.clear()

        return self._update(apply)

    def _state(self) -> State:
        if not self._has_policy:
            return State.IDLE
        if self._paused:
            return State.PAUSED
        return State.FAULTED if self._faults else State.RUNNING

    def _view(self) -> StateView:
        active = tuple(self._faults.values())
        return StateView(self._state(), self._instruction, active,
                         active[-1] if active else self._last_fault)

    def _update(self, apply: Callable[[], None]) -> bool:
        with self._lock:
            before = self._view()
            apply()
            after = self._view()
            if after.state is State.RUNNING:
                self.running.set()
            else:
                self.running.clear()
        if after == before:
            return False
        self._on_change(after)
        return True


class RateMeter:
    """Measured rate of events (published trajectories) over a sliding window."""

    def __init__(self, window_s: float = 2.0) -> None:
        self._window_ns = int(window_s * _NS)
        self._stamps: deque[int] = deque()
        self._lock = threading.Lock()

    def tick(self, now_ns: int) -> None:
        with self._lock:
            self._stamps.append(now_ns)
            self._trim(now_ns)

    def rate_hz(self, now_ns: int) -> float:
        """Events per second in the window; 0 once events stop for longer than two gaps."""
        with self._lock:
            self._trim(now_ns)
            if len(self._stamps) < 2:
                return 0.0
            span = self._stamps[-1] - self._stamps[0]
            if span <= 0:
                return 0.0
            gap = span / (len(self._stamps) - 1)
            if now_ns - self._stamps[-1] > 2 * gap:
                return 0.0
            return (len(self._stamps) - 1) * _NS / span

    def _trim(self, now_ns: int) -> None:
        while self._stamps and now_ns - self._stamps[0] > self._window_ns:
            self._stamps.popleft()
