"""The sim's JointTrajectoryController semantics (`sim/trajectory.py`), without ROS or physics."""

from __future__ import annotations

import numpy as np
import pytest

from vam_policy.sim.trajectory import (
    GRIPPER_JOINT,
    JointTrajectoryExecutor,
    TrajectoryError,
    controlled_joints,
)

JOINTS = controlled_joints(("j1", "j2"))
LOWER, UPPER = [-1.0, -1.0, 0.0], [1.0, 1.0, 1.0]
HOME = np.array([0.0, 0.5, 1.0])


@pytest.fixture
def executor() -> JointTrajectoryExecutor:
    executor = JointTrajectoryExecutor(JOINTS, LOWER, UPPER)
    executor.reset(HOME)
    return executor


def test_gripper_is_the_last_controlled_joint() -> None:
    assert JOINTS == ("j1", "j2", GRIPPER_JOINT) and GRIPPER_JOINT == "robot0_gripper"


def test_holds_the_reset_position_without_a_trajectory(executor: JointTrajectoryExecutor
                                                       ) -> None:
    np.testing.assert_array_equal(executor.sample(0.0), HOME)
    np.testing.assert_array_equal(executor.sample(100.0), HOME)
    assert not executor.executing(0.0)


def test_interpolates_from_the_command_at_start_and_holds_the_last_point(
    executor: JointTrajectoryExecutor,
) -> None:
    """An implicit point at time 0 (where the arm was told to be), then linear per segment."""
    executor.submit(JOINTS, 10.0, [1.0, 2.0], [[0.4, 0.5, 1.0], [0.4, -0.5, 0.0]], now_s=10.0)
    assert executor.executing(10.5)
    np.testing.assert_allclose(executor.sample(9.0), HOME)  # not started yet
    np.testing.assert_allclose(executor.sample(10.5), [0.2, 0.5, 1.0])
    np.testing.assert_allclose(executor.sample(11.5), [0.4, 0.0, 0.5])
    np.testing.assert_allclose(executor.sample(15.0), [0.4, -0.5, 0.0])
    assert not executor.executing(15.0)


def test_a_first_point_at_time_zero_is_taken_at_once(executor: JointTrajectoryExecutor) -> None:
    executor.submit(JOINTS, 1.0, [0.0, 1.0], [[0.5, 0.5, 1.0], [1.0, 0.5, 1.0]], now_s=1.0)
    np.testing.assert_allclose(executor.sample(1.0), [0.5, 0.5, 1.0])
    np.testing.assert_allclose(executor.sample(1.5), [0.75, 0.5, 1.0])


def test_new_trajectory_replaces_the_old_from_its_start_time(
    executor: JointTrajectoryExecutor,
) -> None:
    """The old one runs until the new one starts; the new one starts from where the old one
    had got to (no jump), and a later-starting queued one is superseded."""
    executor.submit(["j1"], 0.0, [2.0], [[1.0]], now_s=0.0)
    executor.submit(["j1"], 5.0, [1.0], [[-1.0]], now_s=0.1)  # superseded below
    executor.submit(["j1"], 1.0, [1.0], [[0.0]], now_s=0.2)
    np.testing.assert_allclose(executor.sample(0.5)[0], 0.25)
    np.testing.assert_allclose(executor.sample(1.0)[0], 0.5)  # switch point: no jump
    np.testing.assert_allclose(executor.sample(1.5)[0], 0.25)
    np.testing.assert_allclose(executor.sample(9.0)[0], 0.0)


def test_partial_goal_moves_only_the_named_joints(executor: JointTrajectoryExecutor) -> None:
    executor.submit([GRIPPER_JOINT], 0.0, [0.5], [[0.0]], now_s=0.0)
    np.testing.assert_allclose(executor.sample(0.25), [0.0, 0.5, 0.5])
    executor.submit(["j2"], 1.0, [1.0], [[0.0]], now_s=1.0)
    np.testing.assert_allclose(executor.sample(3.0), [0.0, 0.0, 0.0])  # gripper stays closed


def test_targets_are_clipped_to_the_joint_limits(executor: JointTrajectoryExecutor) -> None:
    executor.submit(JOINTS, 0.0, [1.0], [[3.0, -2.0, 1.5]], now_s=0.0)
    np.testing.assert_allclose(executor.sample(2.0), [1.0, -1.0, 1.0])


def test_empty_trajectory_stops_where_the_arm_was_told_to_be(
    executor: JointTrajectoryExecutor,
) -> None:
    executor.submit(["j1"], 0.0, [2.0], [[1.0]], now_s=0.0)
    executor.submit(["j1"], 1.0, [], [], now_s=1.0)
    np.testing.assert_allclose(executor.sample(5.0)[0], 0.5)


@pytest.mark.parametrize(
    ("names", "times", "positions", "reason"),
    [
        (["j1", "j9"], [1.0], [[0.1, 0.2]], "unknown joint names ['j9']"),
        (["j1", "j1"], [1.0], [[0.1, 0.2]], "unique"),
        (["j1", "j2"], [1.0], [[0.1]], "points must hold 2 positions"),
        (["j1"], [1.0, 0.5], [[0.1], [0.2]], "strictly increasing"),
        (["j1"], [1.0], [[float("nan")]], "NaN or inf"),
        (["j1"], [1.0, 2.0], [[0.1]], "1 points but 2 times"),
        (["j1"], [0.5], [[0.1]], "before it arrived"),
    ],
)
def test_bad_trajectories_are_rejected_and_change_nothing(
    executor: JointTrajectoryExecutor, names: list[str], times: list[float],
    positions: list[list[float]], reason: str,
) -> None:
    executor.submit(["j1"], 0.0, [1.0], [[0.8]], now_s=0.0)
    with pytest.raises(TrajectoryError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        executor.submit(names, 0.0, times, positions, now_s=0.9)
    np.testing.assert_allclose(executor.sample(2.0), [0.8, 0.5, 1.0])


def test_reset_forgets_every_trajectory_and_refuses_older_ones(
    executor: JointTrajectoryExecutor,
) -> None:
    """A trajectory stamped before the reset (sent for the previous episode, delivered late)
    must not pull the arm out of its new start pose."""
    executor.submit(["j1"], 5.0, [1.0], [[1.0]], now_s=0.0)
    executor.reset([0.1, 0.2, 0.3], now_s=6.0)
    np.testing.assert_allclose(executor.sample(10.0), [0.1, 0.2, 0.3])
    with pytest.raises(TrajectoryError, match="before the arm was reset"):
        executor.submit(["j1"], 5.9, [1.0], [[1.0]], now_s=6.1)
    executor.submit(["j1"], 6.0, [1.0], [[1.0]], now_s=6.1)
    with pytest.raises(ValueError, match="3 finite positions"):
        executor.reset([0.0, 0.0])
