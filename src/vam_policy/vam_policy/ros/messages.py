"""numpy <-> ROS messages for the policy node: plain values in, messages out (and back).

Frozen records (`TrajectoryCommand`, `ChunkReport`, `StatusReport`) carry what the node
computed; only the final `*_to_msg` functions build message types, and `joint_sample_from_msg`
is the one function that reads a JointState. Stamps stay integer nanoseconds until they are
written, so an observation stamp goes out exactly as the camera stamped it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from builtin_interfaces.msg import Duration, Time
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vam_msgs.msg import ActionChunk, PolicyStatus
from vam_policy.model.transforms import reorder_joints
from vam_policy.ros.buffers import JointSample, State
from vam_policy.ros.parameters import ParameterSpec, ParamType

_NS = 1_000_000_000


class NonFiniteJointStateError(ValueError):
    """A joint state holds NaN or inf for a controlled joint."""


def split_ns(stamp_ns: int) -> tuple[int, int]:
    """(sec, nanosec) of a time in ns, nanosec in [0, 1e9) as builtin_interfaces requires."""
    sec, nanosec = divmod(int(stamp_ns), _NS)
    return sec, nanosec


def stamp_ns(stamp: Any) -> int:
    """Integer nanoseconds of a builtin_interfaces Time (or anything with sec/nanosec)."""
    return int(stamp.sec) * _NS + int(stamp.nanosec)


def seconds_to_ns(seconds: float) -> int:
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite time, got {seconds}")
    return round(seconds * _NS)


def flatten_chunk(positions: np.ndarray) -> list[float]:
    """[H, J] -> H*J floats, row-major (step by step), as ActionChunk.positions is defined."""
    array = np.asarray(positions, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"expected a chunk [H, J], got shape {array.shape}")
    return array.reshape(-1).tolist()


@dataclass(frozen=True, eq=False)
class TrajectoryCommand:
    """Points to send: positions [n, J] at times_from_start [n] s after stamp_ns."""

    stamp_ns: int
    joint_names: tuple[str, ...]
    times_from_start: np.ndarray
    positions: np.ndarray

    def __post_init__(self) -> None:
        times = np.asarray(self.times_from_start, dtype=np.float64)
        positions = np.asarray(self.positions, dtype=np.float64)
        if times.ndim != 1 or positions.shape != (times.size, len(self.joint_names)):
            raise ValueError(
                f"expected times [n] and positions [n, J={len(self.joint_names)}], got "
                f"{times.shape} and {positions.shape}"
            )
        if times.size == 0 or np.any(times < 0) or np.any(np.diff(times) <= 0):
            raise ValueError(f"times_from_start must be >= 0 and increasing, got {times}")
        if not (np.all(np.isfinite(times)) and np.all(np.isfinite(positions))):
            raise ValueError("trajectory holds NaN or inf")
        object.__setattr__(self, "times_from_start", times)
        object.__setattr__(self, "positions", positions)


def trajectory_to_msg(command: TrajectoryCommand) -> JointTrajectory:
    """JointTrajectory with positions only: the controller interpolates between points."""
    msg = JointTrajectory()
    msg.header.stamp = _time(command.stamp_ns)
    msg.joint_names = list(command.joint_names)
    for t, row in zip(command.times_from_start, command.positions, strict=True):
        sec, nanosec = split_ns(seconds_to_ns(float(t)))
        msg.points.append(JointTrajectoryPoint(
            positions=row.tolist(), time_from_start=Duration(sec=sec, nanosec=nanosec)
        ))
    return msg


@dataclass(frozen=True, eq=False)
class ChunkReport:
    """One inference's chunk [H, J], for the ActionChunk debug topic."""

    stamp_ns: int
    joint_names: tuple[str, ...]
    positions: np.ndarray
    dt: float
    chunk_id: int
    observation_stamp_ns: int
    inference_latency_s: float


def chunk_to_msg(report: ChunkReport) -> ActionChunk:
    positions = np.asarray(report.positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != len(report.joint_names):
        raise ValueError(f"expected a chunk [H, J={len(report.joint_names)}], got "
                         f"{positions.shape}")
    msg = ActionChunk()
    msg.header.stamp = _time(report.stamp_ns)
    msg.joint_names = list(report.joint_names)
    msg.horizon = positions.shape[0]
    msg.positions = flatten_chunk(positions)
    msg.dt = float(report.dt)
    msg.chunk_id = int(report.chunk_id)
    msg.observation_stamp = _time(report.observation_stamp_ns)
    msg.inference_latency_s = float(report.inference_latency_s)
    return msg


@dataclass(frozen=True)
class StatusReport:
    stamp_ns: int
    state: State
    instruction: str
    checkpoint_id: str
    last_inference_latency_s: float
    control_rate_hz: float
    last_fault: str
    active_faults: tuple[str, ...]


def status_to_msg(report: StatusReport) -> PolicyStatus:
    msg = PolicyStatus()
    msg.header.stamp = _time(report.stamp_ns)
    msg.state = int(report.state)
    msg.instruction = report.instruction
    msg.checkpoint_id = report.checkpoint_id
    msg.last_inference_latency_s = float(report.last_inference_latency_s)
    msg.control_rate_hz = float(report.control_rate_hz)
    msg.last_fault = report.last_fault
    msg.active_faults = list(report.active_faults)
    return msg


def joint_sample_from_msg(msg: Any, joint_names: Sequence[str]) -> JointSample:
    """A sensor_msgs/JointState in profile order (extra joints such as grippers dropped).

    Raises ValueError naming missing joints or mismatched array lengths, and
    NonFiniteJointStateError for NaN/inf positions of controlled joints. Velocities are used
    when given for every joint and finite; otherwise they are left out (the safety filter then
    assumes the arm at rest), since many drivers leave them empty or NaN.
    """
    names = list(msg.name)
    positions = reorder_joints(names, np.asarray(msg.position, dtype=np.float64),
                               tuple(joint_names))
    bad = [name for name, value in zip(joint_names, positions, strict=True)
           if not math.isfinite(value)]
    if bad:
        raise NonFiniteJointStateError(f"joint state holds NaN/inf positions for {bad}")
    velocities = None
    if len(msg.velocity) == len(names):
        candidate = reorder_joints(names, np.asarray(msg.velocity, dtype=np.float64),
                                   tuple(joint_names))
        velocities = candidate if np.all(np.isfinite(candidate)) else None
    return JointSample(stamp_ns(msg.header.stamp), positions, velocities)


def parameter_descriptor(spec: ParameterSpec) -> ParameterDescriptor:
    """The ParameterDescriptor the node declares for `spec`.

    A range is attached only where ROS can express it: a double or integer with both bounds,
    the lower one inclusive (ROS ranges are closed). Other bounds are in
    `additional_constraints` and enforced by the node's own validation.
    """
    description = spec.description + (f" [{spec.unit}]" if spec.unit else "")
    descriptor = ParameterDescriptor(
        name=spec.name,
        type=int(spec.type),
        description=description,
        additional_constraints=spec.constraints,
        read_only=spec.read_only,
    )
    closed = spec.minimum is not None and spec.maximum is not None and not spec.minimum_exclusive
    if closed and spec.type is ParamType.DOUBLE:
        descriptor.floating_point_range = [FloatingPointRange(
            from_value=float(spec.minimum), to_value=float(spec.maximum), step=0.0
        )]
    elif closed and spec.type is ParamType.INTEGER:
        descriptor.integer_range = [IntegerRange(
            from_value=int(spec.minimum), to_value=int(spec.maximum), step=0
        )]
    return descriptor


def _time(stamp: int) -> Time:
    sec, nanosec = split_ns(stamp)
    return Time(sec=sec, nanosec=nanosec)
