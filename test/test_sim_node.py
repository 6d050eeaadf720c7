"""vam_sim_node as a real process over DDS, seen by a probe peer (peers/arm_probe.py).

One node run (module fixture `sim`) serves the behaviour tests; each starts its own episode
through ~/reset, so the tests do not depend on each other's motions.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import PEERS, REPO_ROOT, NodeAndPeer, Processes
from vam_policy.ros.parameters import load_parameters_file, settings_from_parameters
from vam_policy.ros.sim_parameters import load_sim_settings
from vam_policy.sim.scene import ARM_JOINTS
from vam_policy.sim.trajectory import GRIPPER_JOINT

pytestmark = pytest.mark.ros

PROFILE = REPO_ROOT / "config" / "sim_panda.yaml"
SIM = load_sim_settings(PROFILE)
JOINTS = [*ARM_JOINTS, GRIPPER_JOINT]
NODE = [sys.executable, "-m", "vam_policy.ros.sim_node", "--ros-args", "--params-file",
        str(PROFILE)]


def test_profile_sections_agree() -> None:
    """The sim node publishes what the policy node reads and executes what it commands: the
    same topics, the policy's joints are the sim's (gripper last), limits within the sim's."""
    policy = settings_from_parameters(load_parameters_file(PROFILE))
    assert policy.camera_topics == SIM.camera_topics
    assert policy.joint_states_topic == SIM.joint_states_topic
    assert policy.trajectory_topic == SIM.trajectory_topic
    assert list(policy.joint_names) == JOINTS
    assert (policy.joint_position_lower[-1], policy.joint_position_upper[-1]) == (0.0, 1.0)
    # A full close (1 -> 0) at the gripper's velocity and acceleration limits takes ~0.5 s.
    velocity, acceleration = policy.max_joint_velocity[-1], policy.max_joint_acceleration[-1]
    close_s = velocity / acceleration + 1.0 / velocity
    assert 0.4 <= close_s <= 0.6, close_s


def test_bad_parameters_stop_the_node_with_exit_2(processes: Processes) -> None:
    """A typo in a task or parameter name is reported, with the closest name, before any
    physics starts."""
    process = processes.start(*NODE, "-p", "task:=lift_rde", "-p", "camera_rat_hz:=5.0",
                              "-p", "image_width:=8")
    _, err = process.communicate(timeout=90)
    assert process.returncode == 2, err
    for fragment in ("[FATAL]", "cannot start", "did you mean 'lift_red'",
                     "did you mean 'camera_rate_hz'", "image_width"):
        assert fragment in err, (fragment, err)


class Sim(NodeAndPeer):
    """The node and the probe: what the node published, and commands sent through the probe."""

    STAMPED = ("image", "joints")

    def new_episode(self, task: str, seed: int) -> tuple[float, np.ndarray]:
        """Reset; return the reset time and the first joint positions after it."""
        reply = self.command("reset", task=task, seed=seed)
        assert reply["success"], reply
        first = self.wait_for("joints", since=reply["t"], timeout=5.0)
        return reply["t"], np.array(first["positions"])

    def positions_after(self, t: float) -> np.ndarray:
        """Joint positions [n, 8] stamped after `t`, with their stamps [n]."""
        return np.array([e["positions"] for e in self.events("joints", since=t)])


@pytest.fixture(scope="module")
def sim(module_processes: Processes) -> Sim:
    node = module_processes.start(*NODE)
    probe = module_processes.start(
        sys.executable, PEERS / "arm_probe.py",
        *(arg for topic in SIM.camera_topics for arg in ("--camera-topic", topic)),
        "--joint-states-topic", SIM.joint_states_topic,
        "--trajectory-topic", SIM.trajectory_topic, stdin=subprocess.PIPE,
    )
    robot = Sim(node, probe)
    robot.wait_for("episode", timeout=90.0)
    return robot


def test_reset_then_camera_and_joint_states_in_real_time(sim: Sim) -> None:
    """After ~/reset: 128x128 rgb8 frames from each camera (the front view and the wrist) at
    the camera rate, one stamp for both views of a state, joint states of the 8 joints (gripper
    open) with increasing stamps, and an episode status whose sim time runs with the wall
    clock."""
    refused = sim.command("reset", task="lift_rde", seed=0)
    assert not refused["success"] and "lift_red" in refused["message"]
    reply = sim.command("reset", task="lift_blue", seed=3)
    assert reply["success"] and reply["instruction"] == "lift the blue cube", reply
    start = reply["t"]
    time.sleep(2.2)
    views = {camera: [e for e in sim.events("image", since=start + 0.2) if e["topic"] == topic]
             for camera, topic in zip(SIM.cameras, SIM.camera_topics, strict=True)}
    joints = sim.events("joints", since=start + 0.2)
    assert SIM.cameras == ("agentview", "robot0_eye_in_hand") and joints
    for camera, images in views.items():
        assert images, camera
        for image in images:
            assert image["frame_id"] == camera
            assert (image["width"], image["height"], image["encoding"]) == (128, 128, "rgb8")
            assert image["step"] == 128 * 3 and image["bytes"] == 128 * 128 * 3
            assert image["mean"] > 10  # a rendered scene, not an empty buffer
        image_rate = (len(images) - 1) / (images[-1]["stamp"] - images[0]["stamp"])
        assert 11.0 <= image_rate <= 16.0, (camera, image_rate)
    front, wrist = ({e["stamp"] for e in images} for images in views.values())
    assert len(front & wrist) >= min(len(front), len(wrist)) - 2
    assert views["agentview"][-1]["mean"] != views["robot0_eye_in_hand"][-1]["mean"]  # two views
    stamps = np.array([e["stamp"] for e in joints])
    assert np.all(np.diff(stamps) > 0)
    joint_rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    assert 15.0 <= joint_rate <= 21.0, joint_rate  # each 20 Hz physics state once
    assert all(e["names"] == JOINTS and len(e["velocities"]) == 8 for e in joints)
    assert joints[-1]["positions"][-1] == pytest.approx(1.0, abs=0.02)
    # Status comes at 4 Hz: wait for one from 2 s on (the 0.2 s left of the sleep is shorter
    # than its period, so one need not have arrived yet).
    status = sim.wait_for("episode", since=start + 2.0)
    assert (status["episode"] >= 2 and status["task"] == "lift_blue" and status["seed"] == 3)
    assert status["sim_time"] == pytest.approx(status["recv"] - start, abs=0.4)
    assert status["rtf"] > 0.7 and not status["done"] and status["accepted"] == 0


def test_trajectory_moves_joint_one_and_the_state_follows(sim: Sim) -> None:
    """Joint 1 by +0.2 rad over 1 s, the other joints not named (they hold): joint 1 ramps
    through ~0.1 at half time, ends at +0.2, nothing else moves; gripper closes likewise."""
    _, start = sim.new_episode("push_red_left", 5)
    ack = sim.command("trajectory", joint_names=["robot0_joint1"],
                      positions=[[start[0] + 0.2]], times=[1.0])
    sent = ack["t"]
    # Wait on stamps, not a fixed sleep: under load the state stream may arrive late.
    sim.wait_for("joints", lambda e: e["stamp"] > sent + 1.6, since=sent)
    joints = sim.events("joints", since=sent)
    stamps = np.array([e["stamp"] for e in joints]) - sent
    moved = np.array([e["positions"] for e in joints]) - start
    halfway = moved[np.argmin(np.abs(stamps - 0.5)), 0]
    assert 0.05 <= halfway <= 0.15, halfway
    assert np.all(np.diff(moved[:, 0]) > -0.003), moved[:, 0]
    assert moved[-1, 0] == pytest.approx(0.2, abs=0.01)
    assert np.abs(moved[:, 1:]).max() < 0.01

    ack = sim.command("trajectory", joint_names=[GRIPPER_JOINT], positions=[[0.0]],
                      times=[0.5])
    sim.wait_for("joints", lambda e: e["stamp"] > ack["t"] + 1.2, since=ack["t"])
    gripper = np.array([e["positions"][-1] for e in sim.events("joints", since=ack["t"])])
    assert gripper[-1] < 0.1 and gripper[0] > 0.5, gripper
    # Status comes at 4 Hz: wait for one after both trajectories ended rather than assume
    # one fell into the time the joint-state wait took.
    status = sim.wait_for("episode", since=ack["t"] + 1.0)
    assert status["accepted"] == 2 and status["rejected"] == 0 and status["travel"] > 0.19


def test_unknown_joint_and_wrong_sizes_are_rejected_and_nothing_moves(sim: Sim) -> None:
    reset_t, start = sim.new_episode("lift_green", 6)
    bad = [
        (["robot0_joint1", "robot0_joint9"], [[start[0] + 0.3, 0.1]],
         "unknown joint names ['robot0_joint9']"),
        (["robot0_joint1"], [[start[0] + 0.3, 0.1]], "points must hold 1 positions"),
    ]
    for names, positions, _ in bad:
        sim.command("trajectory", joint_names=names, positions=positions, times=[0.5])
    time.sleep(1.2)
    moved = sim.positions_after(reset_t) - start
    assert np.abs(moved).max() < 0.005
    log = "".join(sim.node_log.snapshot())
    for *_, reason in bad:
        assert f"trajectory rejected: {reason}" in log, log
    status = sim.events("episode")[-1]
    assert status["rejected"] == 2 and status["accepted"] == 0


def test_an_ended_episode_keeps_its_record(sim: Sim) -> None:
    """After the time limit the arm is still simulated (a trajectory moves it), but the
    episode's report stays as it was when it ended: what eval reads after pausing the policy
    is the episode, not the seconds it took to pause."""
    reset_t, start = sim.new_episode("lift_red", 7)
    ended = sim.wait_for("episode", lambda e: e["done"], since=reset_t,
                         timeout=SIM.episode_time_limit_s + 10.0)
    assert ended["sim_time"] == pytest.approx(SIM.episode_time_limit_s, abs=0.06)
    assert not ended["success"] and ended["accepted"] == 0
    ack = sim.command("trajectory", joint_names=["robot0_joint1"],
                      positions=[[start[0] + 0.2]], times=[0.5])
    sim.wait_for("joints", lambda e: e["stamp"] > ack["t"] + 1.0, since=ack["t"])
    assert sim.positions_after(ack["t"] + 0.8)[-1, 0] - start[0] == pytest.approx(0.2, abs=0.01)
    status = sim.wait_for("episode", since=ack["t"] + 1.0)
    keys = ("episode", "sim_time", "success", "done", "accepted", "rejected", "travel")
    assert {k: status[k] for k in keys} == {k: ended[k] for k in keys}
