"""The safety filter between the policy and the arm: pure numpy, no ROS.

A chunk of joint targets from a learned model is a suggestion. Before it reaches the
controller it is rejected if it holds a non-finite number (no command is better than a wrong
one), and otherwise bent, never stretched, into the arm's limits: positions, velocity,
acceleration and distance from the measured joint position. The filter also keeps a braking
reserve, so that a target sequence never runs into a bound it could only stop at by
exceeding the acceleration limit.

`CommandStream` filters the node's trajectories one after another. A position-controlled arm
lags behind its command by its tracking error, and the controller starts each new trajectory
from the position it commands (a ros2_control JointTrajectoryController with
`open_loop_control: true`, and the sim's), so velocity and acceleration are bounded from
there: measured from the arm instead, each trajectory would pull the command back onto the
lagging arm, a jerk at every control tick that also slows the arm down.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vam_policy.ros.parameters import NodeSettings

_CONSTRAINTS = ("position", "distance", "velocity", "acceleration", "braking")


class UnsafeTargetsError(ValueError):
    """Targets or joint state are not finite, a joint is outside its limits, or the arm does not
    follow its commands: the node must not command anything now."""


@dataclass(frozen=True, eq=False)
class SafetyLimits:
    """Per-joint limits in the order of the robot profile's joint_names.

    lower/upper [J] rad, max_velocity [J] rad/s, max_acceleration [J] rad/s^2,
    max_step_from_current [J] rad (a single value applies to every joint). Arrays are stored
    as read-only float64 copies. A joint measured up to `limit_tolerance` rad outside its
    position limits counts as at the limit: a position controller sent a target at the limit
    overshoots it by a little.
    """

    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray
    max_acceleration: np.ndarray
    max_step_from_current: np.ndarray | float
    joint_names: tuple[str, ...] = field(default=())
    limit_tolerance: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.limit_tolerance < np.inf:
            raise ValueError(f"SafetyLimits.limit_tolerance: expected a finite value >= 0, got "
                             f"{self.limit_tolerance!r}")
        arrays = {}
        for name in ("lower", "upper", "max_velocity", "max_acceleration"):
            value = np.array(getattr(self, name), dtype=np.float64)
            if value.ndim != 1 or value.size == 0 or not np.all(np.isfinite(value)):
                raise ValueError(f"SafetyLimits.{name}: expected a non-empty 1-D array of "
                                 f"finite numbers, got {value!r}")
            value.setflags(write=False)
            arrays[name] = value
            object.__setattr__(self, name, value)
        sizes = {name: value.size for name, value in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"SafetyLimits: arrays must have one value per joint, got {sizes}")
        if self.joint_names and len(self.joint_names) != self.lower.size:
            raise ValueError(f"SafetyLimits: {len(self.joint_names)} joint names for "
                             f"{self.lower.size} joints")
        if not np.all(self.lower < self.upper):
            raise ValueError(f"SafetyLimits: lower {self.lower} must be < upper {self.upper}")
        if not (np.all(self.max_velocity > 0) and np.all(self.max_acceleration > 0)):
            raise ValueError("SafetyLimits: max_velocity and max_acceleration must be > 0")
        step = np.array(self.max_step_from_current, dtype=np.float64)
        if step.ndim == 0:
            step = np.full(self.lower.size, float(step))
        if step.shape != self.lower.shape or not np.all(np.isfinite(step) & (step > 0)):
            raise ValueError(f"SafetyLimits.max_step_from_current: expected one value > 0, or "
                             f"one per joint, got {step!r}")
        step.setflags(write=False)
        object.__setattr__(self, "max_step_from_current", step)

    @classmethod
    def from_settings(cls, settings: NodeSettings) -> SafetyLimits:
        """Limits of the node's profile, velocities scaled by `velocity_scaling`."""
        return cls(
            lower=np.array(settings.joint_position_lower),
            upper=np.array(settings.joint_position_upper),
            max_velocity=np.array(settings.max_joint_velocity) * settings.velocity_scaling,
            max_acceleration=np.array(settings.max_joint_acceleration),
            max_step_from_current=settings.max_step_from_current,
            joint_names=settings.joint_names,
            limit_tolerance=settings.joint_limit_tolerance,
        )

    @property
    def num_joints(self) -> int:
        return int(self.lower.size)

    def joint_label(self, index: int) -> str:
        return repr(self.joint_names[index]) if self.joint_names else f"#{index}"


@dataclass(frozen=True, eq=False)
class SafeTargets:
    """Filtered targets [H, J] rad, their step velocities [H, J] rad/s, and what was changed.

    `adjusted` names the constraints the input broke (a subset of position, distance,
    velocity, acceleration, braking); empty means the input came through unchanged.
    """

    positions: np.ndarray
    velocities: np.ndarray
    adjusted: tuple[str, ...]

    @property
    def modified(self) -> bool:
        return bool(self.adjusted)


def filter_targets(
    targets: np.ndarray,
    current: np.ndarray,
    dt: float,
    limits: SafetyLimits,
    start_velocity: np.ndarray | None = None,
    first_dt: float | None = None,
    start: np.ndarray | None = None,
) -> SafeTargets:
    """Bend `targets` [H, J] (step k at first_dt + k*dt from now) into `limits`.

    `current` is the measured joint position; `start` the position the controller commands
    now, which the targets continue (None: `current`), and `start_velocity` its velocity
    (None: at rest, the cautious guess). With q[-1] = start and v[-1] = start_velocity, every
    step k keeps lower <= q[k] <= upper, |q[k] - current| <= max_step_from_current,
    |v[k]| <= max_velocity and |v[k] - v[k-1]| <= max_acceleration * step_k, where
    v[k] = (q[k] - q[k-1]) / step_k, step_0 = first_dt (default dt), else dt.
    Each target is clamped to the reachable interval, so already-safe targets come back
    unchanged and filtering twice changes nothing more.

    Position, distance and velocity bounds always hold. The acceleration bound holds from the
    second step on, and at the first step too unless start_velocity is already too fast to
    stop within the bounds, in which case it brakes harder rather than pass a limit.
    A joint measured outside its position limits, by more than `limit_tolerance`, is an
    error, not something to steer out of: every target it could be sent would either lie
    outside the limits or jump, and a joint out of range means a wrong profile, a sensor
    offset or a collision. Within the tolerance it counts as at the limit, and its targets
    stay inside the limits. So is a `start` more than max_step_from_current from `current`.

    Raises UnsafeTargetsError on any NaN/inf in targets, current, start or start_velocity,
    and ValueError on wrong shapes or non-positive time steps.
    """
    joints = limits.num_joints
    targets = _finite(targets, "targets", (None, joints), limits)
    current = _finite(current, "current joint position", (joints,), limits)
    origin = np.clip(current if start is None else
                     _finite(start, "commanded joint position", (joints,), limits),
                     limits.lower, limits.upper)
    velocity = (np.zeros(joints) if start_velocity is None
                else _finite(start_velocity, "commanded joint velocity", (joints,), limits))
    if targets.shape[0] == 0:
        raise ValueError("targets: expected at least one step, got shape (0, J)")
    dt = _positive_time(dt, "dt")
    first_dt = dt if first_dt is None else _positive_time(first_dt, "first_dt")

    vmax, amax, reach = limits.max_velocity, limits.max_acceleration, limits.max_step_from_current
    tolerance = limits.limit_tolerance
    outside = np.flatnonzero((current < limits.lower - tolerance)
                             | (current > limits.upper + tolerance))
    if outside.size:
        j = int(outside[0])
        raise UnsafeTargetsError(
            f"joint {limits.joint_label(j)} is measured at {current[j]:.4f} rad, outside its "
            f"limits [{limits.lower[j]:.4f}, {limits.upper[j]:.4f}] by more than "
            f"joint_limit_tolerance {tolerance:g} rad: no target is sent"
        )
    apart = np.flatnonzero(np.abs(origin - current) > reach)
    if apart.size:
        j = int(apart[0])
        raise UnsafeTargetsError(
            f"joint {limits.joint_label(j)} is commanded at {origin[j]:.4f} rad but measured at "
            f"{current[j]:.4f} rad, more than max_step_from_current {reach[j]:g} rad apart: the "
            "arm does not follow its commands (blocked, or its controller is not running)"
        )
    box_lo, box_hi = limits.lower, limits.upper
    low = np.maximum(box_lo, current - reach)
    high = np.minimum(box_hi, current + reach)

    positions = np.empty_like(targets)
    velocities = np.empty_like(targets)
    broken: set[str] = set()
    previous, speed = origin, np.clip(velocity, -vmax, vmax)
    for k, wanted in enumerate(targets):
        step = first_dt if k == 0 else dt
        brake_hi = np.minimum(vmax, _stoppable_speed(high - previous, amax, step, dt))
        brake_lo = np.maximum(-vmax, -_stoppable_speed(previous - low, amax, step, dt))
        accel_lo, accel_hi = speed - amax * step, speed + amax * step
        # Acceleration first, then the hard bounds: when both cannot hold, the hard ones win.
        q = np.clip(wanted, previous + accel_lo * step, previous + accel_hi * step)
        q = np.clip(q, previous + brake_lo * step, previous + brake_hi * step)
        q = np.clip(q, low, high)  # the braking interval lies inside; this absorbs rounding
        if not np.array_equal(q, wanted):
            broken.update(_broken(wanted, {
                "position": (box_lo, box_hi),
                "distance": (current - reach, current + reach),
                "velocity": (previous - vmax * step, previous + vmax * step),
                "acceleration": (previous + accel_lo * step, previous + accel_hi * step),
                "braking": (previous + brake_lo * step, previous + brake_hi * step),
            }))
        positions[k] = q
        velocities[k] = speed = (q - previous) / step
        previous = q
    for array in (positions, velocities):
        array.setflags(write=False)
    return SafeTargets(positions, velocities, tuple(c for c in _CONSTRAINTS if c in broken))


@dataclass(frozen=True, eq=False)
class _Sent:
    """A trajectory as the controller runs it: from `origin` at `start_s`, linear through
    `positions` [P, J] at `start_s + times` [P], then holding the last point."""

    start_s: float
    origin: np.ndarray
    times: np.ndarray
    positions: np.ndarray

    def commanded(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Position and velocity [J] commanded at `t` (velocity 0 once the last point holds)."""
        grid = np.concatenate([[0.0], self.times])
        points = np.vstack([self.origin, self.positions])
        elapsed = t - self.start_s
        k = int(np.clip(np.searchsorted(grid, elapsed, side="right"), 1, len(grid)))
        if k == len(grid):
            return points[-1].copy(), np.zeros(points.shape[1])
        velocity = (points[k] - points[k - 1]) / (grid[k] - grid[k - 1])
        return points[k - 1] + velocity * (elapsed - grid[k - 1]), velocity


class CommandStream:
    """Filters a stream of trajectories, each from where the one before commands when it
    starts (module docstring), so the commanded motion keeps within `limits` across them.

    Not thread-safe. The first trajectory, and the first after `reset` (call it whenever the
    node stops sending: a hold, a pause, a fault), starts from the measured state.
    """

    def __init__(self, limits: SafetyLimits, dt: float) -> None:
        self.limits = limits
        self._dt = dt
        self._sent: _Sent | None = None

    def reset(self) -> None:
        """Forget what was sent: the controller may have been reset or commanded by others."""
        self._sent = None

    def filter(self, now_s: float, times: np.ndarray, targets: np.ndarray,
               measured: np.ndarray, measured_velocity: np.ndarray | None) -> SafeTargets:
        """`filter_targets` for the trajectory sent at `now_s`: `targets` [P, J] at `times` [P]
        s from now; remembered as sent (raises as `filter_targets` does, remembering nothing)."""
        times = np.asarray(times, dtype=np.float64)
        if self._sent is None:
            start, velocity = np.asarray(measured, dtype=np.float64), measured_velocity
        else:
            start, velocity = self._sent.commanded(now_s)
        safe = filter_targets(targets, measured, self._dt, self.limits, start_velocity=velocity,
                              first_dt=float(times[0]), start=start)
        # `start` lies within the limits: the measured state passed filter_targets' check, and
        # a commanded position lies between filtered points.
        self._sent = _Sent(now_s, start, times, safe.positions)
        return safe


def _stoppable_speed(room: np.ndarray, amax: np.ndarray, step: float, dt: float) -> np.ndarray:
    """Largest speed v >= 0 from which the arm can still stop within `room` [J] rad.

    Moving at v for `step`, then braking by amax*dt per later step of dt, covers
    f(v) = v*step + dt * sum_{i>=1} max(0, v - i*amax*dt). f is convex and piecewise linear
    (piece m covers v in [m, m+1] * amax*dt); each piece's line lies below f, so the answer is
    the smallest solution of line_m(v) = room over the pieces around the estimated one.
    """
    room = np.maximum(room, 0.0)
    b = step - dt / 2.0
    estimate = np.floor((np.sqrt(b * b + 2.0 * room / amax) - b) / dt)
    best = np.full_like(room, np.inf)
    for m in (estimate - 1.0, estimate, estimate + 1.0):
        m = np.maximum(m, 0.0)
        speed = (room + amax * dt * dt * m * (m + 1.0) / 2.0) / (step + m * dt)
        best = np.minimum(best, speed)
    return best


def _broken(wanted: np.ndarray, bounds: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[str]:
    return [name for name, (lo, hi) in bounds.items() if np.any((wanted < lo) | (wanted > hi))]


def _finite(
    value: np.ndarray, what: str, shape: tuple[int | None, ...], limits: SafetyLimits
) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(array.shape, shape, strict=True)
    ):
        expected = "[H, J]" if len(shape) == 2 else "[J]"
        raise ValueError(f"{what}: expected shape {expected} with J = {limits.num_joints}, "
                         f"got {array.shape}")
    bad = np.argwhere(~np.isfinite(array))
    if bad.size:
        where = tuple(int(i) for i in bad[0])
        joint = limits.joint_label(where[-1])
        at = f"step {where[0]}, joint {joint}" if len(where) == 2 else f"joint {joint}"
        raise UnsafeTargetsError(
            f"{what} holds {array[where]} at {at} ({len(bad)} non-finite value(s)); "
            "refusing to command the arm"
        )
    return array


def _positive_time(value: float, what: str) -> float:
    value = float(value)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{what}: expected a finite time step > 0 s, got {value}")
    return value
