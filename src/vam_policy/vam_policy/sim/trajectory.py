"""Executing JointTrajectory messages as a ros2_control JointTrajectoryController does.

Pure numpy (no rclpy): the sim node converts each message to plain arrays and hands them over.
Semantics, kept close to the controller a real arm runs so that a policy meets the same
behaviour in simulation and on hardware:

- a trajectory starts at its header stamp (a zero stamp means "on receipt"); positions are
  linearly interpolated over `time_from_start`, from the position commanded when it starts
  (an implicit point at time 0 unless the first point is at 0) to its points, and the last
  point is held afterwards;
- a new trajectory replaces the current one from its start time on (one starting in the future
  lets the current one run until then, and supersedes any queued one starting later);
- a goal may name a subset of the controlled joints; the others hold their command;
- unknown or repeated joint names, wrong point sizes, non-finite values, time_from_start not
  increasing, a trajectory that ended before it arrived or one that starts before the last
  reset of the arm are rejected (`TrajectoryError`);
- targets are clipped to the joint limits, as the hardware's own limits would.

The controlled joints are the arm's seven plus a virtual `robot0_gripper` joint: the finger
opening in [0, 1] (1 = open), so a policy commands the gripper exactly like the arm.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

GRIPPER_JOINT = "robot0_gripper"
GRIPPER_LIMITS: tuple[float, float] = (0.0, 1.0)


class TrajectoryError(ValueError):
    """A trajectory the controller refuses; the message says why."""


def controlled_joints(arm_joints: Sequence[str]) -> tuple[str, ...]:
    """Joint names the controller owns: the arm's, then the virtual gripper joint."""
    return (*arm_joints, GRIPPER_JOINT)


def controller_state(joint_positions: np.ndarray, joint_velocities: np.ndarray, gripper: float,
                     previous_gripper: float | None, period_s: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Positions and velocities [J + 1] in controller order, as JointState reports them.

    The sim measures only the gripper's opening, so its velocity is the change over the last
    control period (0 right after a reset, `previous_gripper` None).
    """
    speed = 0.0 if previous_gripper is None else (gripper - previous_gripper) / period_s
    return (np.append(np.asarray(joint_positions, dtype=np.float64), gripper),
            np.append(np.asarray(joint_velocities, dtype=np.float64), speed))


@dataclass(frozen=True, eq=False)
class _Goal:
    """An accepted trajectory in controller order: NaN marks joints it does not command."""

    start_s: float
    times: np.ndarray  # [P] s from start, strictly increasing, >= 0
    positions: np.ndarray  # [P, J]


@dataclass(frozen=True, eq=False)
class _Active:
    """The trajectory being executed, with its implicit start point filled in."""

    start_s: float
    times: np.ndarray  # [P'] starting at 0
    positions: np.ndarray  # [P', J], every joint set

    def at(self, t: float) -> np.ndarray:
        elapsed = t - self.start_s
        return np.array([np.interp(elapsed, self.times, self.positions[:, j])
                         for j in range(self.positions.shape[1])])


class JointTrajectoryExecutor:
    """Turns accepted trajectories into a position command for any time (seconds, one clock).

    Not thread-safe: the sim node calls it under its own lock.
    """

    def __init__(self, joint_names: Sequence[str], lower: Sequence[float],
                 upper: Sequence[float]) -> None:
        self.joint_names = tuple(joint_names)
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        count = len(self.joint_names)
        if len(set(self.joint_names)) != count or self.lower.shape != (count,) or (
            self.upper.shape != (count,)
        ) or not np.all(self.lower < self.upper):
            raise ValueError(f"expected unique joint names and one lower < upper limit each, "
                             f"got {self.joint_names}, {self.lower}, {self.upper}")
        self._index = {name: i for i, name in enumerate(self.joint_names)}
        self._hold = np.clip(np.zeros(count), self.lower, self.upper)
        self._active: _Active | None = None
        self._queue: list[_Goal] = []  # sorted by start_s
        self._reset_s = -np.inf

    def reset(self, positions: Sequence[float], now_s: float = -np.inf) -> None:
        """Forget every trajectory and hold `positions` (after a reset of the arm at `now_s`).

        Trajectories starting before `now_s` are refused from then on: one sent for the old
        episode and delivered late must not move the arm out of its new start pose.
        """
        held = np.asarray(positions, dtype=np.float64)
        if held.shape != self.lower.shape or not np.all(np.isfinite(held)):
            raise ValueError(f"expected {len(self.joint_names)} finite positions, got {held}")
        self._hold = np.clip(held, self.lower, self.upper)
        self._active = None
        self._queue.clear()
        self._reset_s = float(now_s)

    def submit(self, joint_names: Sequence[str], start_s: float, times: Sequence[float],
               positions: Sequence[Sequence[float]], now_s: float) -> None:
        """Accept a trajectory starting at `start_s` or raise TrajectoryError saying why.

        `positions` [P, len(joint_names)] at `times` [P] seconds after `start_s`; `now_s` is the
        time it arrived (a trajectory that ended before then is stale). No points: stop, and
        hold what is commanded at `start_s` (as the controller does on an empty trajectory).
        """
        goal = self._validate(joint_names, start_s, times, positions, now_s)
        cut = bisect.bisect_left([g.start_s for g in self._queue], goal.start_s)
        self._queue[cut:] = [goal]

    def sample(self, t: float) -> np.ndarray:
        """The command [J] at time `t`; activates every queued trajectory started by then."""
        while self._queue and self._queue[0].start_s <= t:
            goal = self._queue.pop(0)
            anchor = self._command_at(goal.start_s)
            self._active = self._activate(goal, anchor)
        return self._command_at(t)

    def executing(self, t: float) -> bool:
        """Whether a trajectory is still moving towards its last point at `t`."""
        if self._queue:
            return True
        return self._active is not None and t < self._active.start_s + self._active.times[-1]

    def _command_at(self, t: float) -> np.ndarray:
        return self._hold.copy() if self._active is None else self._active.at(t)

    @staticmethod
    def _activate(goal: _Goal, anchor: np.ndarray) -> _Active:
        positions = np.where(np.isnan(goal.positions), anchor, goal.positions)
        times = goal.times
        if times.size == 0 or times[0] > 0:
            times = np.concatenate([[0.0], times])
            positions = np.concatenate([anchor[None], positions.reshape(-1, anchor.size)])
        return _Active(goal.start_s, times, positions)

    def _validate(self, joint_names: Sequence[str], start_s: float, times: Sequence[float],
                  positions: Sequence[Sequence[float]], now_s: float) -> _Goal:
        names = list(joint_names)
        unknown = [name for name in names if name not in self._index]
        if unknown:
            raise TrajectoryError(f"unknown joint names {unknown}; this controller has "
                                  f"{list(self.joint_names)}")
        if not names or len(set(names)) != len(names):
            raise TrajectoryError(f"joint_names must be non-empty and unique, got {names}")
        point_times = np.asarray(times, dtype=np.float64).reshape(-1)
        rows = [np.asarray(row, dtype=np.float64).reshape(-1) for row in positions]
        if len(rows) != point_times.size:
            raise TrajectoryError(f"{len(rows)} points but {point_times.size} times")
        sizes = sorted({row.size for row in rows} - {len(names)})
        if sizes:
            raise TrajectoryError(f"points must hold {len(names)} positions (one per joint "
                                  f"name), got sizes {sizes}")
        if not np.isfinite(start_s) or not np.all(np.isfinite(point_times)) or not all(
            np.all(np.isfinite(row)) for row in rows
        ):
            raise TrajectoryError("trajectory holds NaN or inf")
        if np.any(point_times < 0) or np.any(np.diff(point_times) <= 0):
            raise TrajectoryError(f"time_from_start must be >= 0 and strictly increasing, got "
                                  f"{point_times.tolist()}")
        if start_s < self._reset_s:
            raise TrajectoryError(f"trajectory starts {self._reset_s - start_s:.3f} s before "
                                  "the arm was reset (sent for the previous episode)")
        if point_times.size and start_s + point_times[-1] < now_s:
            raise TrajectoryError(f"trajectory ended {now_s - start_s - point_times[-1]:.3f} s "
                                  "before it arrived (stale or stamped in the past)")
        full = np.full((point_times.size, len(self.joint_names)), np.nan)
        columns = [self._index[name] for name in names]
        for p, row in enumerate(rows):
            full[p, columns] = np.clip(row, self.lower[columns], self.upper[columns])
        return _Goal(float(start_s), point_times, full)
