"""vam_policy_node as a real process over DDS, around it a synthetic robot (peers/sensor_feeder.py).

Startup failures and the checkpoint-less node get node runs of their own; then one node run
(module fixture `robot`) serves the behaviour tests, each of which leaves it running again.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import PEERS, REPO_ROOT, NodeAndPeer, Processes
from vam_policy.ros.parameters import load_parameters_file

pytestmark = pytest.mark.ros

PROFILE = REPO_ROOT / "config" / "sim_panda.yaml"
PROFILE_VALUES = load_parameters_file(PROFILE)
JOINTS = list(PROFILE_VALUES["joint_names"])
LOWER = np.array(PROFILE_VALUES["joint_position_lower"])
UPPER = np.array(PROFILE_VALUES["joint_position_upper"])
CAMERAS = list(PROFILE_VALUES["camera_topics"])
CAMERA = CAMERAS[0]  # the feeder's faults hit this one; the wrist camera keeps streaming
MAX_OBS_AGE_S = 0.5
IDLE, RUNNING, PAUSED, FAULTED = range(4)
# Mid-range, except joints 4 and 6 parked 0.01 rad from a limit: a random policy's targets
# there cross the limit unless the safety filter holds them back.
POSITIONS = (LOWER + UPPER) / 2
POSITIONS[3], POSITIONS[5] = UPPER[3] - 0.01, LOWER[5] + 0.01
NODE_COMMAND = [shutil.which("vam_policy_node") or "vam_policy_node"]
MODULE_COMMAND = [sys.executable, "-m", "vam_policy.ros.node"]


def _event(line: str) -> dict[str, Any]:
    return json.loads(line) if line.startswith("{") else {"event": "text", "text": line}


class Robot(NodeAndPeer):
    """The node and the feeder: what the node published, and commands that inject faults."""

    STAMPED = ("trajectory", "chunk")

    def __init__(self, node: subprocess.Popen[str], feeder: subprocess.Popen[str]) -> None:
        super().__init__(node, feeder, _event)

    def timeout_detail(self, since: float) -> str:
        statuses = [(e["state"], e["last_fault"]) for e in self.events("status", since)][-5:]
        return f"statuses {statuses}; "

    def ensure_running(self) -> None:
        """Resume if needed and wait until trajectories flow (each test starts from here)."""
        now = time.time()
        self.command("trigger", service="resume")
        self.wait_for("trajectory", since=now, timeout=20.0)


def start_feeder(processes: Processes) -> subprocess.Popen[str]:
    return processes.start(
        sys.executable, PEERS / "sensor_feeder.py",
        "--joint-names", json.dumps(JOINTS), "--positions", json.dumps(POSITIONS.tolist()),
        *(arg for topic in CAMERAS for arg in ("--camera-topic", topic)),
        "--trajectory-topic", PROFILE_VALUES["trajectory_topic"],
        "--camera-hz", "20", "--joint-hz", "100",
        stdin=subprocess.PIPE,
    )


def start_node(processes: Processes, command: list[str], *overrides: str
               ) -> subprocess.Popen[str]:
    params = [arg for override in overrides for arg in ("-p", override)]
    return processes.start(*command, "--ros-args", "--params-file", PROFILE, *params)


# Node runs of their own first: the module's `robot` node lives until the module ends.


def test_startup_errors_are_clear_and_exit_2(processes: Processes, tiny_checkpoint: Path
                                            ) -> None:
    """Each wrong configuration stops the node before it subscribes, saying what is wrong."""
    checkpoint = f"checkpoint:={tiny_checkpoint}"
    other_joints = "joint_names:=[" + ",".join(f"arm_joint{i}" for i, _ in enumerate(JOINTS)) + "]"
    cases = {
        "joint names": ([checkpoint, other_joints],
                        ["do not match the checkpoint", "robot0_joint1", "arm_joint1"]),
        "checkpoint": (["checkpoint:=/nonexistent/vam_ckpt"],
                       ["failed to load", "no such checkpoint folder"]),
        "cameras": ([checkpoint, "camera_topics:=[/cam/left]"],
                    ["camera_topics has 1 topic(s)", "2 camera view"]),
        "parameters": (["control_rate_hz:=-5.0", "max_obs_age_s:=0", "max_obs_age:=0.2"],
                       ["control_rate_hz: -5.0 out of range",
                        "max_obs_age_s: expected double, got integer 0",
                        "did you mean 'max_obs_age_s'"]),
    }
    started = {name: start_node(processes, MODULE_COMMAND, *overrides)
               for name, (overrides, _) in cases.items()}
    for name, process in started.items():
        _, err = process.communicate(timeout=150)
        assert process.returncode == 2, (name, err)
        assert "[FATAL]" in err and "cannot start" in err, (name, err)
        for fragment in cases[name][1]:
            assert fragment in err, (name, fragment, err)


def test_without_checkpoint_the_node_idles_and_never_moves(processes: Processes) -> None:
    feeder = start_feeder(processes)
    node = start_node(processes, NODE_COMMAND, "start_paused:=false")
    robot = Robot(node, feeder)
    idle = robot.wait_for("status", lambda e: e["state"] == IDLE, timeout=90.0)
    assert idle["checkpoint_id"] == ""
    reply = robot.command("trigger", service="resume")
    assert not reply["success"] and "no checkpoint" in reply["message"]
    time.sleep(2.0)
    assert robot.events("trajectory") == [] and robot.events("chunk") == []
    assert robot.events("status")[-1]["state"] == IDLE


def test_launch_file_describes_the_node() -> None:
    """policy.launch.py (for users' ROS 2 installs) builds; skipped without `launch`."""
    pytest.importorskip("launch")
    pytest.importorskip("launch_ros")
    path = REPO_ROOT / "src" / "vam_bringup" / "launch" / "policy.launch.py"
    spec = importlib.util.spec_from_file_location("policy_launch", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {argument.name for argument in description.get_launch_arguments()}
    assert names == {"robot", "checkpoint", "camera_topics", "start_paused"}


@pytest.fixture(scope="module")
def robot(tiny_checkpoint: Path, module_processes: Processes) -> Robot:
    feeder = start_feeder(module_processes)
    node = start_node(
        module_processes, NODE_COMMAND, f"checkpoint:={tiny_checkpoint}", "start_paused:=true",
        "instruction:=stack the cubes", "image_width:=64", "image_height:=48",
        "execute_steps:=8",
    )
    return Robot(node, feeder)


def test_starts_paused_then_follows_the_policy_safely_at_control_rate(robot: Robot) -> None:
    """Paused at start; after ~/resume, trajectories at ~10 Hz with the profile's joints,
    every point inside the joint limits, plus ActionChunks and a RUNNING status."""
    paused = robot.wait_for("status", lambda e: e["state"] == PAUSED, timeout=90.0)
    assert paused["checkpoint_id"] == "tiny_sim_panda (format 2)"
    assert paused["instruction"] == "stack the cubes"
    time.sleep(1.0)
    assert robot.events("trajectory") == [] and robot.events("chunk") == []

    reply = robot.command("trigger", service="resume")
    assert reply["success"], reply
    first = robot.wait_for("trajectory", timeout=20.0)
    time.sleep(3.5)
    window = robot.events("trajectory", since=first["stamp"] + 0.5)
    stamps = [e["stamp"] for e in window]
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    assert 7.0 <= rate <= 12.0, f"control rate {rate:.1f} Hz, configured 10 Hz"

    for trajectory in robot.events("trajectory"):
        assert trajectory["joint_names"] == JOINTS
        points = np.array(trajectory["positions"])
        assert 1 <= len(points) <= 5  # trajectory_points
        assert np.all((points >= LOWER) & (points <= UPPER)), points
        times = np.array(trajectory["times"])
        assert np.all(times > 0) and np.all(np.diff(times) > 0)

    chunks = robot.events("chunk")
    assert len(chunks) >= 3
    ids = [chunk["chunk_id"] for chunk in chunks]
    assert ids == sorted(set(ids)), ids
    for chunk in chunks:
        assert chunk["joint_names"] == JOINTS and chunk["horizon"] == 8
        assert len(chunk["positions"]) == 8 * len(JOINTS) and chunk["dt"] == pytest.approx(0.1)
        assert 0 < chunk["latency"] < chunk["stamp"] - chunk["observation_stamp"] + 1e-3
    status = robot.events("status")[-1]
    assert status["state"] == RUNNING and status["latency"] > 0
    assert 7.0 <= status["rate"] <= 12.0


def test_instruction_by_service_and_topic_shows_in_status(robot: Robot) -> None:
    robot.ensure_running()
    refused = robot.command("set_instruction", text="  ")
    assert not refused["success"] and "empty" in refused["message"]
    reply = robot.command("set_instruction", text="put the cube in the bowl")
    assert reply["success"] and reply["message"] == "following: put the cube in the bowl"
    robot.wait_for("status", lambda e: e["instruction"] == "put the cube in the bowl")
    ack = robot.command("publish_instruction", text="open the drawer")
    robot.wait_for("status", lambda e: e["instruction"] == "open the drawer", since=ack["t"])
    robot.wait_for("trajectory", since=ack["t"] + 0.2)  # a new chunk for the new instruction


def test_runtime_parameter_changes_are_checked_and_applied(robot: Robot) -> None:
    """execute_steps applies to the next chunks (re-planning from every frame, so that a chunk
    of 3 steps is followed by the next: its first step lies in the past by the inference time,
    its second at most 0.1 s ahead); read-only and out-of-range values are rejected with the
    reason."""
    robot.ensure_running()
    reply = robot.command("set_params", params={"execute_steps": 3, "replan_steps": 0})
    assert reply["results"] == [{"successful": True, "reason": ""}] * 2
    time.sleep(1.0)
    short = robot.events("trajectory", since=reply["t"] + 0.5)
    assert short and all(len(e["positions"]) <= 3 for e in short)

    rejected = {
        "joint_names": (["a", "b"], "read-only"),
        "velocity_scaling": (0.0, "velocity_scaling: 0.0 out of range: must be > 0"),
        "instruction": ("", "instruction is empty"),
    }
    for name, (value, reason) in rejected.items():
        result = robot.command("set_params", params={name: value})["results"][0]
        assert not result["successful"] and reason in result["reason"], (name, result)

    reply = robot.command("set_params", params={"execute_steps": 8, "velocity_scaling": 0.5})
    assert all(r["successful"] for r in reply["results"]), reply
    time.sleep(1.0)
    assert max(len(e["positions"]) for e in robot.events("trajectory", since=reply["t"])) > 3


def test_replan_steps_spaces_the_observations_chunks_start_from(robot: Robot) -> None:
    """replan_steps k: each chunk starts from an observation k chunk steps (k * 0.1 s) after
    the one before; 0: from the next newer camera frame."""
    robot.ensure_running()
    reply = robot.command("set_params", params={"replan_steps": 6})
    assert reply["results"] == [{"successful": True, "reason": ""}]
    time.sleep(3.0)
    chunks = robot.events("chunk", since=reply["t"] + 0.8)
    gaps = np.diff([chunk["observation_stamp"] for chunk in chunks])
    assert len(gaps) >= 2 and np.all(gaps >= 0.6 - 0.002), gaps
    reply = robot.command("set_params", params={"replan_steps": 0})
    assert reply["results"] == [{"successful": True, "reason": ""}]
    time.sleep(2.0)
    chunks = robot.events("chunk", since=reply["t"] + 0.8)
    gaps = np.diff([chunk["observation_stamp"] for chunk in chunks])
    assert len(gaps) >= 2 and np.median(gaps) < 0.3, gaps


def test_pause_stops_trajectories_and_resume_restarts_them(robot: Robot) -> None:
    robot.ensure_running()
    reply = robot.command("trigger", service="pause")
    assert reply["success"]
    robot.wait_for("status", lambda e: e["state"] == PAUSED, since=reply["t"] - 0.5)
    time.sleep(1.0)
    assert robot.events("trajectory", since=reply["t"]) == []
    reply = robot.command("trigger", service="resume")
    assert reply["success"] and reply["message"] == "resumed"
    robot.wait_for("trajectory", since=reply["t"], timeout=10.0)


def test_paused_status_lists_the_faults_a_resume_would_hold_on(robot: Robot) -> None:
    """While paused the watchdog still runs: the status names the stale camera, and is clear
    again once frames return (what `vam eval` waits for before its first episode)."""
    robot.ensure_running()
    reply = robot.command("trigger", service="pause")
    assert reply["success"]
    ack = robot.command("camera", on=False)
    status = robot.wait_for(
        "status", lambda e: e["state"] == PAUSED and e["active_faults"], since=ack["t"])
    assert any(CAMERA in fault for fault in status["active_faults"]), status
    ack = robot.command("camera", on=True)
    robot.wait_for("status", lambda e: e["state"] == PAUSED and not e["active_faults"],
                   since=ack["t"])
    assert robot.command("trigger", service="resume")["message"] == "resumed"
    robot.wait_for("trajectory", since=ack["t"])


def test_watchdog_holds_when_the_camera_stops_and_recovers(robot: Robot) -> None:
    """No trajectory is stamped later than max_obs_age_s after the last frame, although the
    last chunk (execute_steps 8 at 0.1 s) would reach further; the fault names the camera."""
    robot.ensure_running()
    ack = robot.command("camera", on=False)
    last_frame = ack["last_frame_stamp"]
    status = robot.wait_for(
        "status", lambda e: e["state"] == FAULTED and "stale camera" in e["last_fault"],
        since=ack["t"])
    assert CAMERA in status["last_fault"]
    time.sleep(0.5)
    late = robot.events("trajectory", since=last_frame + MAX_OBS_AGE_S + 0.02)
    assert late == [], [e["stamp"] - last_frame for e in late]

    ack = robot.command("camera", on=True)
    robot.wait_for("status", lambda e: e["state"] == RUNNING, since=ack["t"])
    robot.wait_for("trajectory", since=ack["t"])


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("nan", "NaN/inf positions for ['robot0_joint2']"), ("missing", "lacks joints")],
)
def test_bad_joint_states_stop_trajectories(robot: Robot, mode: str, reason: str) -> None:
    robot.ensure_running()
    ack = robot.command("joints", mode=mode)
    robot.wait_for("status", lambda e: e["state"] == FAULTED and reason in e["last_fault"],
                   since=ack["t"])
    time.sleep(0.5)
    assert robot.events("trajectory", since=ack["t"] + 0.1) == []
    ack = robot.command("joints", mode="ok")
    robot.wait_for("trajectory", since=ack["t"])


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ({"cmd": "encoding", "value": "16UC1"}, "image encoding '16UC1' is not supported"),
        ({"cmd": "size", "width": 32, "height": 24}, "32x24 px, expected 64x48"),
    ],
)
def test_unusable_frames_are_refused_with_a_clear_error(
    robot: Robot, command: dict[str, Any], reason: str
) -> None:
    robot.ensure_running()
    ack = robot.command(**command)
    robot.wait_for("status", lambda e: e["state"] == FAULTED and reason in e["last_fault"],
                   since=ack["t"])
    time.sleep(0.5)
    assert robot.events("trajectory", since=ack["t"] + 0.15) == []
    logged = [line for line in robot.node_log.snapshot() if reason in line]
    assert logged and CAMERA in logged[0] and "[ERROR]" in logged[0]
    ack = robot.command("encoding", value="rgb8") if command["cmd"] == "encoding" else (
        robot.command("size", width=64, height=48))
    robot.wait_for("trajectory", since=ack["t"], timeout=10.0)
