"""The simulated arm: real MuJoCo physics, the tasks' success checks and the scripted experts.

One `SimArm` serves the whole module (building it loads robosuite and compiles its numba code);
every test resets it, so tests do not depend on each other.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import yaml

from conftest import REPO_ROOT
from vam_policy.sim.arm import SimArm, SimConfig
from vam_policy.sim.disturbance import approach_offset
from vam_policy.sim.experts import make_expert, run_expert_episode
from vam_policy.sim.scene import CUBE_COLORS, CUBE_HALF_SIZE_M, TABLE_TOP_Z
from vam_policy.sim.tasks import (
    MIN_CUBE_SPACING_M,
    ROW_X,
    ROW_X_JITTER_M,
    START_Y_RANGE,
    TASKS,
    LiftTask,
    PushLeftTask,
    episode_name,
    get_task,
    parse_episode_name,
)

REST_Z = TABLE_TOP_Z + CUBE_HALF_SIZE_M


@pytest.fixture(scope="module")
def arm() -> Iterator[SimArm]:
    with SimArm(SimConfig()) as sim:
        yield sim


def _profile() -> dict:
    text = (REPO_ROOT / "config" / "sim_panda.yaml").read_text()
    return yaml.safe_load(text)["vam_policy_node"]["ros__parameters"]


def test_joint_names_and_limits_match_the_robot_profile(arm: SimArm) -> None:
    """The node's profile names the sim's joints in order, then the virtual gripper joint,
    and its arm limits cover the sim's."""
    profile = _profile()
    assert profile["joint_names"] == [*arm.joint_names, "robot0_gripper"]
    assert np.all(np.array(profile["joint_position_lower"][:7]) <= arm.joint_lower + 1e-6)
    assert np.all(np.array(profile["joint_position_upper"][:7]) >= arm.joint_upper - 1e-6)


def test_observation_shapes_and_image_shows_the_cubes(arm: SimArm) -> None:
    """A 128x128 uint8 RGB frame in which each cube's colour is visible, plus 7-joint state."""
    obs = arm.reset("lift_red", seed=0)
    assert obs.rgb.shape == (128, 128, 3) and obs.rgb.dtype == np.uint8
    assert obs.joint_positions.shape == (7,) and obs.joint_velocities.shape == (7,)
    assert obs.gripper_opening == pytest.approx(1.0, abs=0.01)
    assert obs.time == 0.0
    rgb = obs.rgb.astype(int)
    for channel in range(3):
        others = [c for c in range(3) if c != channel]
        dominant = (rgb[..., channel] > 100) & np.all(
            rgb[..., others] < 0.5 * rgb[..., [channel]], -1
        )
        assert dominant.sum() >= 4, f"no {list(CUBE_COLORS)[channel]} cube pixels in the image"


def test_cameras_are_rendered_in_order_and_tiled() -> None:
    """The front view and the wrist camera, each 128x128, side by side in `rgb` (what the policy
    sees); unknown or repeated cameras are refused."""
    with SimArm(SimConfig(cameras=("agentview", "robot0_eye_in_hand"))) as two:
        obs = two.reset("lift_red", seed=0)
        front, wrist = obs.images
        assert front.shape == wrist.shape == (128, 128, 3)
        np.testing.assert_array_equal(obs.rgb, np.concatenate([front, wrist], axis=1))
        assert np.abs(front.astype(int) - wrist.astype(int)).mean() > 10
    with pytest.raises(ValueError, match=r"unknown camera.*'wrist'.*robot0_eye_in_hand"):
        SimArm(SimConfig(cameras=("agentview", "wrist")))
    with pytest.raises(ValueError, match="unique"):
        SimConfig(cameras=("agentview", "agentview"))


def test_reset_is_deterministic_per_seed(arm: SimArm) -> None:
    """Same seed: same cubes, first image and trajectory, even after another episode ran."""
    first = arm.reset("push_blue_left", seed=7)
    cubes = arm.cube_positions()
    command = first.joint_positions + 0.1
    path = [arm.step(command, 0.5).joint_positions for _ in range(10)]
    arm.reset("lift_green", seed=8)
    again = arm.reset("push_blue_left", seed=7)
    np.testing.assert_array_equal(again.rgb, first.rgb)
    np.testing.assert_array_equal(again.joint_positions, first.joint_positions)
    for color in CUBE_COLORS:
        np.testing.assert_array_equal(arm.cube_positions()[color], cubes[color])
    for expected in path:
        np.testing.assert_array_equal(arm.step(command, 0.5).joint_positions, expected)


def test_different_seeds_give_different_scenes(arm: SimArm) -> None:
    """Seeds vary the cube layout and the start pose, so demonstrations are not all alike."""
    a = arm.reset("lift_red", seed=1)
    cubes_a = arm.cube_positions()
    b = arm.reset("lift_red", seed=2)
    cubes_b = arm.cube_positions()
    assert not np.array_equal(a.rgb, b.rgb)
    assert not np.allclose(a.joint_positions, b.joint_positions)
    assert all(np.linalg.norm(cubes_a[c] - cubes_b[c]) > 1e-3 for c in CUBE_COLORS)


def test_one_seed_lays_out_the_same_scene_for_every_task(arm: SimArm) -> None:
    """Demos of all six tasks at one seed show one picture under six instructions, so only
    the instruction tells them apart (the policy cannot learn each picture's motion)."""
    first = arm.reset("lift_red", seed=5)
    cubes = arm.cube_positions()
    for name in sorted(TASKS):
        again = arm.reset(name, seed=5)
        np.testing.assert_array_equal(again.rgb, first.rgb)
        np.testing.assert_array_equal(again.joint_positions, first.joint_positions)
        for color in CUBE_COLORS:
            np.testing.assert_array_equal(arm.cube_positions()[color], cubes[color])


def test_arm_tracks_an_absolute_joint_target(arm: SimArm) -> None:
    """Absolute targets (not deltas): the joints settle on them within 0.01 rad in 1.5 s,
    and the fingers follow the gripper opening command."""
    start = arm.reset("lift_red", seed=3)
    target = start.joint_positions + np.array([0.3, -0.2, 0.25, 0.3, -0.3, 0.2, -0.4])
    for _ in range(30):
        obs = arm.step(target, 0.0)
    np.testing.assert_allclose(obs.joint_positions, target, atol=0.01)
    assert np.abs(obs.joint_velocities).max() < 0.05
    assert obs.gripper_opening < 0.05
    assert obs.time == pytest.approx(1.5)
    for _ in range(10):
        obs = arm.step(target, 1.0)
    assert obs.gripper_opening > 0.95


def test_grip_position_at_joint_positions_is_where_the_arm_gets_and_leaves_it_be(
        arm: SimArm) -> None:
    """Forward kinematics of a joint target: the grip site the arm reaches when it settles
    there, computed without moving the arm or its grip site."""
    start = arm.reset("lift_red", seed=3)
    target = start.joint_positions + np.array([0.3, -0.2, 0.25, 0.3, -0.3, 0.2, -0.4])
    here = arm.grip_position()
    predicted = arm.grip_position_at(target)
    np.testing.assert_array_equal(arm.grip_position(), here)
    np.testing.assert_allclose(arm.grip_position_at(start.joint_positions), here, atol=1e-12)
    assert np.linalg.norm(predicted - here) > 0.05
    for _ in range(30):
        obs = arm.step(target, 1.0)
    np.testing.assert_allclose(arm.grip_position(), predicted, atol=0.01)
    np.testing.assert_allclose(arm.grip_position_at(obs.joint_positions), arm.grip_position(),
                               atol=1e-9)
    with pytest.raises(ValueError, match="7 arm joint positions"):
        arm.grip_position_at(np.zeros(6))


def test_step_rejects_a_malformed_command(arm: SimArm) -> None:
    """A 6-joint or NaN command is refused, not silently broadcast or fed to the physics."""
    arm.reset("lift_red", seed=0)
    with pytest.raises(ValueError, match="7 finite"):
        arm.step(np.zeros(6), 1.0)
    with pytest.raises(ValueError, match="7 finite"):
        arm.step(np.full(7, np.nan), 1.0)


def test_unknown_task_names_the_closest_ones() -> None:
    """A typo in a task name says which names were meant."""
    with pytest.raises(ValueError, match="lift_red"):
        get_task("lift_rde")
    with pytest.raises(ValueError, match="Known tasks"):
        get_task("stack everything")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_layouts_are_spaced_and_shuffled_over_the_rows(name: str) -> None:
    """200 seeds: no overlaps, a free lane for a pushed cube, every colour in every row."""
    task = get_task(name)
    rows_seen: dict[str, set[int]] = {color: set() for color in CUBE_COLORS}
    for seed in range(200):
        poses = task.sample_layout(np.random.default_rng(seed))
        points = np.array([(p.x, p.y) for p in poses.values()])
        gaps = np.linalg.norm(points[:, None] - points[None, :], axis=-1)
        assert gaps[np.triu_indices(3, k=1)].min() >= MIN_CUBE_SPACING_M
        assert np.all((START_Y_RANGE[0] <= points[:, 1]) & (points[:, 1] <= START_Y_RANGE[1]))
        for color, pose in poses.items():
            row = int(np.argmin(np.abs(np.array(ROW_X) - pose.x)))
            assert abs(pose.x - ROW_X[row]) <= ROW_X_JITTER_M
            rows_seen[color].add(row)
        if isinstance(task, PushLeftTask):
            pushed = poses[task.cube]
            for color, pose in poses.items():
                assert color == task.cube or abs(pose.x - pushed.x) > 0.08
    assert all(len(rows) == len(ROW_X) for rows in rows_seen.values())


def test_success_checks_follow_the_instruction() -> None:
    """Lifting needs height; pushing needs leftward travel and the cube still on the table."""
    start = {color: np.array([0.0, 0.1, REST_Z]) for color in CUBE_COLORS}
    lift = LiftTask("lift_red", "lift the red cube", "red")
    assert not lift.success(start, start)
    assert lift.success(start, {**start, "red": np.array([0.0, 0.1, REST_Z + 0.06])})
    assert not lift.success(start, {**start, "green": np.array([0.0, 0.1, REST_Z + 0.06])})
    push = PushLeftTask("push_blue_left", "push the blue cube to the left", "blue")
    assert push.success(start, {**start, "blue": np.array([0.0, -0.02, REST_Z])})
    assert not push.success(start, {**start, "blue": np.array([0.0, 0.22, REST_Z])})
    assert not push.success(start, {**start, "blue": np.array([0.0, -0.02, REST_Z + 0.05])})


@pytest.mark.parametrize("name", sorted(TASKS))
def test_success_is_false_at_reset(arm: SimArm, name: str) -> None:
    """No task starts solved, whatever the seed."""
    for seed in range(3):
        arm.reset(name, seed)
        assert not arm.success()


@pytest.mark.parametrize("name", ["lift_red", "push_blue_left"])
def test_idle_and_random_policies_do_not_succeed(arm: SimArm, name: str) -> None:
    """Holding still or flailing near the start pose does not trip the success check."""
    start = arm.reset(name, seed=4)
    for _ in range(30):
        arm.step(start.joint_positions, 1.0)
    assert not arm.success()
    rng = np.random.default_rng(0)
    arm.reset(name, seed=4)
    for _ in range(6):
        target = start.joint_positions + rng.uniform(-0.3, 0.3, 7)
        gripper = float(rng.uniform())
        for _ in range(8):
            arm.step(target, gripper)
    assert not arm.success()


@pytest.mark.parametrize(
    ("name", "seed"),
    [
        ("lift_red", 100),
        ("lift_red", 101),
        ("lift_green", 100),
        ("lift_green", 101),
        ("push_blue_left", 100),
        ("push_blue_left", 101),
        ("lift_blue", 102),
        ("push_red_left", 102),
        ("push_green_left", 102),
    ],
)
def test_expert_solves_its_task(arm: SimArm, name: str, seed: int) -> None:
    """The scripted expert's absolute joint targets solve the task within 8 s of sim time."""
    result = run_expert_episode(arm, name, seed)
    assert result.success, result
    assert result.time_s <= 8.0


@pytest.mark.parametrize("name", ["lift_red", "push_blue_left"])
def test_expert_commands_respect_the_profile_limits(arm: SimArm, name: str) -> None:
    """Demonstrations move within the node's velocity and acceleration limits, so a policy that
    imitates them is not reshaped by the node's safety filter."""
    profile = _profile()
    obs = arm.reset(name, seed=103)
    expert = make_expert(arm)
    targets = []
    while obs.time < expert.duration_s:
        command = expert.act(obs)
        targets.append(command.joint_targets)
        obs = arm.apply(command)
    period = 1.0 / arm.config.control_hz
    velocity = np.diff(np.array(targets), axis=0) / period
    acceleration = np.diff(velocity, axis=0) / period
    assert np.all(np.abs(velocity) <= np.array(profile["max_joint_velocity"][:7]))
    assert np.all(np.abs(acceleration) <= np.array(profile["max_joint_acceleration"][:7]))
    assert arm.success()


@pytest.mark.parametrize("name", ["lift_red", "push_blue_left"])
def test_an_expert_approach_ending_off_the_cube_is_corrected_on_the_way_down(
        arm: SimArm, name: str) -> None:
    """`approach_offset`: the approach ends that far off the usual point; the descent takes the
    fingers to where the plain expert's go all the same, and the task is still solved."""
    offset = (0.025, -0.02)
    grips = {}
    for shift in ((0.0, 0.0), offset):
        obs = arm.reset(name, seed=7)
        expert = make_expert(arm, shift)
        at = {}
        while obs.time < expert.duration_s + 0.3:
            for moment in ("approach", "reach"):
                when = getattr(expert, f"{moment}_s")
                if moment not in at and obs.time >= when:
                    at[moment] = arm.grip_position()
            obs = arm.apply(expert.act(obs))
        assert arm.success(), shift
        grips[shift] = at
    plain, shifted = grips[(0.0, 0.0)], grips[offset]
    np.testing.assert_allclose(shifted["approach"][:2] - plain["approach"][:2], offset,
                               atol=0.005)
    np.testing.assert_allclose(shifted["reach"], plain["reach"], atol=0.005)


def test_approach_offsets_fill_their_disc_evenly() -> None:
    """Uniform over the disc: none outside it, a quarter within half its radius, no direction
    preferred; a radius of 0 is no offset."""
    rng = np.random.default_rng(0)
    offsets = np.array([approach_offset(rng, 0.04) for _ in range(4000)])
    distance = np.linalg.norm(offsets, axis=1)
    assert distance.max() <= 0.04
    assert np.mean(distance < 0.02) == pytest.approx(0.25, abs=0.03)
    np.testing.assert_allclose(offsets.mean(axis=0), 0.0, atol=0.002)
    assert approach_offset(rng, 0.0) == (0.0, 0.0)
    with pytest.raises(ValueError, match="radius_m >= 0"):
        approach_offset(rng, -0.01)


def test_a_recording_path_names_its_task_and_seed() -> None:
    """`vam sim record` names each bag `<task>_<seed>`; a colour-swapped copy names its
    recording's (its renamed cube lies where the task's lies); other sources name none."""
    name = episode_name("push_green_left", 7)
    assert name == "push_green_left_0007"
    assert parse_episode_name(f"/data/demos/{name}") == (TASKS["push_green_left"], 7)
    assert parse_episode_name("lift_red_1003") == (TASKS["lift_red"], 1003)
    assert parse_episode_name("/data/demos/lift_red_0003#brg") == (TASKS["lift_red"], 3)
    for other in ("/data/demos/lift_purple_0003", "/data/demos/lift_red_0003#xyz",
                  "/data/demos/lift_red", "bags/run_0001/rosbag"):
        assert parse_episode_name(other) is None, other
