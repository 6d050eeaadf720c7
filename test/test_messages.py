"""Message building for the node: flattening, stamps, time_from_start, descriptors, JointState."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rcl_interfaces.msg import ParameterType
from sensor_msgs.msg import JointState

from vam_msgs.msg import PolicyStatus
from vam_policy.ros.buffers import State
from vam_policy.ros.messages import (
    ChunkReport,
    NonFiniteJointStateError,
    StatusReport,
    TrajectoryCommand,
    chunk_to_msg,
    flatten_chunk,
    joint_sample_from_msg,
    parameter_descriptor,
    split_ns,
    stamp_ns,
    status_to_msg,
    trajectory_to_msg,
)
from vam_policy.ros.parameters import PARAMETERS, SPECS

JOINTS = ("a", "b", "c")
STAMP = 1_700_000_000_123_456_789


@given(st.integers(min_value=0, max_value=2**31 * 10**9 - 1))
def test_split_ns_round_trips_through_a_time_message(value: int) -> None:
    sec, nanosec = split_ns(value)
    assert 0 <= nanosec < 1_000_000_000
    assert sec * 1_000_000_000 + nanosec == value


def test_flatten_chunk_is_row_major_step_by_step() -> None:
    chunk = np.array([[0.0, 0.5], [0.1, 0.6], [0.2, 0.7]])
    assert flatten_chunk(chunk) == [0.0, 0.5, 0.1, 0.6, 0.2, 0.7]
    with pytest.raises(ValueError, match=r"\[H, J\]"):
        flatten_chunk(np.zeros(4))


def test_trajectory_message_carries_stamp_names_and_time_from_start() -> None:
    positions = np.arange(6, dtype=float).reshape(2, 3)
    msg = trajectory_to_msg(TrajectoryCommand(STAMP, JOINTS, np.array([0.0375, 1.1375]),
                                              positions))
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_700_000_000, 123_456_789)
    assert list(msg.joint_names) == list(JOINTS)
    assert [list(p.positions) for p in msg.points] == positions.tolist()
    assert [(p.time_from_start.sec, p.time_from_start.nanosec) for p in msg.points] == [
        (0, 37_500_000), (1, 137_500_000)]
    assert all(len(p.velocities) == 0 for p in msg.points)  # positions only


@pytest.mark.parametrize(
    ("times", "positions", "match"),
    [
        ([0.1, 0.1], np.zeros((2, 3)), "increasing"),
        ([-0.1, 0.1], np.zeros((2, 3)), "increasing"),
        ([0.1], np.zeros((1, 2)), "positions"),
        ([0.1], np.full((1, 3), np.nan), "NaN"),
    ],
)
def test_trajectory_command_refuses_what_a_controller_would_misread(times, positions,
                                                                     match) -> None:
    with pytest.raises(ValueError, match=match):
        TrajectoryCommand(STAMP, JOINTS, np.array(times), positions)


def test_chunk_message_keeps_the_exact_observation_stamp() -> None:
    chunk = np.arange(12, dtype=float).reshape(4, 3)
    msg = chunk_to_msg(ChunkReport(STAMP + 5, JOINTS, chunk, 0.1, 7, STAMP, 0.031))
    assert stamp_ns(msg.observation_stamp) == STAMP
    assert stamp_ns(msg.header.stamp) == STAMP + 5
    assert msg.horizon == 4 and list(msg.joint_names) == list(JOINTS)
    assert msg.positions.tolist() == chunk.reshape(-1).tolist()
    assert (msg.dt, msg.chunk_id, msg.inference_latency_s) == (0.1, 7, 0.031)


def test_status_states_equal_the_message_constants() -> None:
    assert [State.IDLE, State.RUNNING, State.PAUSED, State.FAULTED] == [
        PolicyStatus.STATE_IDLE, PolicyStatus.STATE_RUNNING, PolicyStatus.STATE_PAUSED,
        PolicyStatus.STATE_FAULTED]
    msg = status_to_msg(StatusReport(STAMP, State.FAULTED, "lift", "tiny (format 1)", 0.03,
                                      9.8, "stale camera /a", ("joints: NaN", "stale camera /a")))
    assert (msg.state, msg.instruction, msg.checkpoint_id, msg.last_fault) == (
        3, "lift", "tiny (format 1)", "stale camera /a")
    assert list(msg.active_faults) == ["joints: NaN", "stale camera /a"]
    assert msg.control_rate_hz == pytest.approx(9.8)


def joint_state(names, positions, velocities=()) -> JointState:
    msg = JointState(name=list(names), position=list(positions), velocity=list(velocities))
    msg.header.stamp.sec, msg.header.stamp.nanosec = 12, 345
    return msg


def test_joint_state_is_reordered_and_extra_joints_dropped() -> None:
    msg = joint_state(["c", "gripper", "a", "b"], [3.0, 0.04, 1.0, 2.0], [0.3, 0, 0.1, 0.2])
    sample = joint_sample_from_msg(msg, JOINTS)
    assert sample.stamp_ns == 12 * 1_000_000_000 + 345
    assert sample.positions.tolist() == [1.0, 2.0, 3.0]
    assert sample.velocities is not None and sample.velocities.tolist() == [0.1, 0.2, 0.3]


def test_joint_state_velocities_are_optional() -> None:
    assert joint_sample_from_msg(joint_state(JOINTS, [1, 2, 3]), JOINTS).velocities is None
    nan_velocity = joint_state(JOINTS, [1, 2, 3], [0, math.nan, 0])
    assert joint_sample_from_msg(nan_velocity, JOINTS).velocities is None


def test_joint_state_missing_or_not_finite_is_refused() -> None:
    with pytest.raises(ValueError, match=r"lacks joints \['b'\]"):
        joint_sample_from_msg(joint_state(["a", "c"], [1, 3]), JOINTS)
    with pytest.raises(NonFiniteJointStateError, match=r"\['b'\]"):
        joint_sample_from_msg(joint_state(JOINTS, [1, math.inf, 3]), JOINTS)
    # A NaN gripper the policy does not control is no reason to stop the arm.
    sample = joint_sample_from_msg(joint_state([*JOINTS, "gripper"], [1, 2, 3, math.nan]),
                                   JOINTS)
    assert sample.positions.tolist() == [1.0, 2.0, 3.0]


def test_every_parameter_gets_a_descriptor_with_unit_and_constraints() -> None:
    for spec in PARAMETERS:
        descriptor = parameter_descriptor(spec)
        assert descriptor.name == spec.name and descriptor.type == int(spec.type)
        assert descriptor.read_only == spec.read_only
        assert descriptor.description.startswith(spec.description)
        assert spec.unit in descriptor.description
        assert descriptor.additional_constraints == spec.constraints


def test_descriptor_ranges_only_where_ros_ranges_mean_the_same() -> None:
    tau = parameter_descriptor(SPECS["tau_v"])
    assert (tau.floating_point_range[0].from_value, tau.floating_point_range[0].to_value) == (
        0.0, 1.0)
    steps = parameter_descriptor(SPECS["flow_steps"])
    assert steps.type == ParameterType.PARAMETER_INTEGER
    assert (steps.integer_range[0].from_value, steps.integer_range[0].to_value) == (1, 1000)
    # velocity_scaling is > 0: a closed ROS range would accept 0, so none is attached.
    assert len(parameter_descriptor(SPECS["velocity_scaling"]).floating_point_range) == 0
    assert len(parameter_descriptor(SPECS["execute_steps"]).integer_range) == 0
