"""`vam sim record`: expert demonstrations as rosbag2 that the dataset builder reads unchanged."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO_ROOT, Processes
from vam_policy.data.bag_reader import BagReader, find_bags
from vam_policy.data.dataset import build_dataset
from vam_policy.data.episodes import RecordingProfile
from vam_policy.ros.sim_parameters import load_sim_settings
from vam_policy.sim.recording import PolicyRollIn, RecordingTopics, sent_by_timer

PROFILE = REPO_ROOT / "config" / "sim_panda.yaml"
SIM = load_sim_settings(PROFILE)
INSTRUCTION_TOPIC = "/vam_policy_node/instruction"


def _record(processes: Processes, out: Path, *args: str, profile: Path = PROFILE,
            expect: str = "") -> int:
    """`vam sim record` in a process of its own: after an EGL context, importing triton (as
    torch-based tests do) crashes a process, so the test process never renders. `expect`:
    text its stderr must hold."""
    process = processes.start(sys.executable, "-m", "vam_policy.cli", "sim", "record",
                              "--out", out, "--profile", profile, *args)
    _, err = process.communicate(timeout=120)
    assert process.returncode in (0, 1, 2) and "Traceback" not in err, err
    assert expect in err, err
    return process.returncode


def _profile_with(tmp_path: Path, **sim_changes: object) -> Path:
    document = yaml.safe_load(PROFILE.read_text())
    document["vam_sim_node"]["ros__parameters"].update(sim_changes)
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_timers_send_each_state_once_at_their_rate() -> None:
    """As the sim node's timers do: at 20 Hz physics a 15 Hz camera sends 3 of every 4
    states, a 50 Hz joint state timer every state."""
    times = np.arange(40) / 20.0
    camera = [k for k, t in enumerate(times) if sent_by_timer(t, 0.05, 15.0)]
    assert len(camera) == 30 and camera[:6] == [0, 1, 2, 4, 5, 6]
    assert all(sent_by_timer(t, 0.05, 50.0) for t in times)


def test_recorded_bags_build_into_a_dataset(processes: Processes, tmp_path: Path) -> None:
    """mcap and sqlite3 bags hold exactly the live topics and types; `build_dataset` with the
    same profile reads them as they are: 8 joints, 128x128 frames of both cameras (front and
    wrist), commands as actions that the arm then reached, the instruction from its topic."""
    demos = tmp_path / "demos"
    assert _record(processes, demos, "--tasks", "lift_red", "--seed", "3") == 0
    assert _record(processes, demos, "--tasks", "push_blue_left", "--seed", "3", "--storage",
                   "sqlite3") == 0
    bags = find_bags([demos])
    assert [bag.name for bag in bags] == ["lift_red_0003", "push_blue_left_0003"]
    assert json.loads((demos / "recording.json").read_text())["kept"] == 1
    assert (bags[0] / "instruction.txt").read_text() == "lift the red cube\n"
    assert len(SIM.camera_topics) == 2
    expected_types = {
        **{topic: "sensor_msgs/msg/Image" for topic in SIM.camera_topics},
        SIM.joint_states_topic: "sensor_msgs/msg/JointState",
        SIM.trajectory_topic: "trajectory_msgs/msg/JointTrajectory",
        INSTRUCTION_TOPIC: "std_msgs/msg/String",
    }
    for bag in bags:
        with BagReader(bag) as reader:
            topics = reader.topics
        assert {name: info.msgtype for name, info in topics.items()} == expected_types
        states = topics[SIM.joint_states_topic].count
        assert topics[SIM.trajectory_topic].count == states - 1
        for topic in SIM.camera_topics:
            assert topics[topic].count == pytest.approx(0.75 * states, abs=2)

    profile = RecordingProfile.load(PROFILE)
    dataset = build_dataset(bags, profile, tmp_path / "dataset", progress=False)
    assert dataset.joint_names == profile.joint_names and len(profile.joint_names) == 8
    for index, instruction in enumerate(["lift the red cube",
                                         "push the blue cube to the left"]):
        episode = dataset.load_episode(index)
        assert episode.instruction == instruction and episode.instruction_source == "topic"
        assert episode.action_source == "commands" and not episode.notes
        assert episode.duration_s > 5.0 and len(episode.frames) == 2
        front, wrist = episode.frames
        assert front.shape == wrist.shape and front.shape[1:] == (128, 128, 3)
        assert np.abs(front.astype(int) - wrist.astype(int)).mean() > 10  # two different views
        # A command is reached by the arm about one control step later.
        reached = np.abs(episode.action[:-1, :7] - episode.state[1:, :7]).mean()
        held_back = np.abs(episode.action[:-1, :7] - episode.state[:-1, :7]).mean()
        assert reached < 0.02 and reached < held_back, (reached, held_back)
    lift = dataset.load_episode(0)
    assert lift.action[:, 7].min() == 0.0 and lift.action[0, 7] == 1.0  # commanded closed
    assert 0.3 < lift.state[-1, 7] < 0.7  # fingers stopped by the 4 cm cube

    assert _record(processes, demos, "--tasks", "lift_red", "--seed", "3") == 2  # never overwrites


def test_disturbed_reaches_keep_the_expert_commands(processes: Processes,
                                                    tmp_path: Path) -> None:
    """--disturbance-rad: the same expert commands (the bag's actions), but during the approach
    and the descent the arm is off its undisturbed path by cm, not mm; the offset fades out
    before the grasp, so the episode is still solved and its last second is the undisturbed
    one. --approach-offset-m: the commands themselves end the approach off the plain one's
    point (that the fingers still get to the cube: `test_sim.py`)."""
    bags = {}
    for name, extra in (("plain", ()), ("disturbed", ("--disturbance-rad", "0.04")),
                        ("offset", ("--approach-offset-m", "0.04"))):
        demos = tmp_path / name
        assert _record(processes, demos, "--tasks", "lift_red", "--seed", "5", *extra) == 0
        summary = json.loads((demos / "recording.json").read_text())
        assert summary["disturbance_rad"] == (0.04 if name == "disturbed" else 0.0)
        assert summary["approach_offset_m"] == (0.04 if name == "offset" else 0.0)
        bags[name] = find_bags([demos])[0]
    profile = RecordingProfile.load(PROFILE)
    dataset = build_dataset(list(bags.values()), profile, tmp_path / "dataset", progress=False)
    plain, disturbed, offset = (dataset.load_episode(i) for i in range(3))
    np.testing.assert_allclose(disturbed.action, plain.action, atol=1e-6)  # same commands
    off_path = np.abs(disturbed.state[:, :7] - plain.state[:, :7]).mean(axis=1)  # [steps] rad
    assert off_path[2:14].mean() > 0.02, off_path  # the 1.6 s approach, 10 Hz
    assert off_path[16:20].mean() > 0.01, off_path  # the way down (1.6-2.6 s), fading out
    assert off_path[-10:].max() < 0.01, off_path
    commanded_off = np.abs(offset.action[:, :7] - plain.action[:, :7]).mean(axis=1)  # [steps]
    assert commanded_off[14:17].mean() > 0.005, commanded_off  # the approach's end


def test_a_policy_roll_in_keeps_the_expert_commands(processes: Processes,
                                                    tmp_path: Path) -> None:
    """--policy: the shipped checkpoint drives the arm until the handover (half the expert's
    2.6 s reach here), the expert from then on; the bag's commands are the plain expert's
    throughout, while the arm's states before the handover are the policy's own."""
    bags = {}
    for name, extra in (("plain", ()),
                        ("roll_in", ("--policy", str(REPO_ROOT / "models/sim_panda/policy"),
                                     "--policy-share", "0.5", "0.5"))):
        demos = tmp_path / name
        assert _record(processes, demos, "--tasks", "lift_red", "--seed", "5", *extra) == 0
        bags[name] = find_bags([demos])[0]
    summary = json.loads((tmp_path / "roll_in" / "recording.json").read_text())
    assert summary["policy"].endswith("policy") and summary["policy_reach_share"] == [0.5, 0.5]
    assert summary["episodes"][0]["handover_s"] == pytest.approx(1.3)
    profile = RecordingProfile.load(PROFILE)
    dataset = build_dataset(list(bags.values()), profile, tmp_path / "dataset", progress=False)
    plain, roll_in = (dataset.load_episode(i) for i in range(2))
    np.testing.assert_allclose(roll_in.action, plain.action, atol=1e-6)  # the expert's labels
    off_path = np.abs(roll_in.state[:, :7] - plain.state[:, :7]).max(axis=1)  # [steps] rad
    assert off_path[5:14].max() > 0.005, off_path  # the policy drove the approach
    assert off_path[-10:].max() < 0.005, off_path  # the expert finished it


def test_policy_roll_in_handover_times() -> None:
    """Drawn per seed (the same each time) within the share range of the reach time."""
    roll_in = PolicyRollIn(lambda arm, instruction, seed: None, "ckpt", (0.25, 0.75))
    times = [roll_in.handover_s(seed, 2.0) for seed in range(50)]
    assert times == [roll_in.handover_s(seed, 2.0) for seed in range(50)]
    assert 0.5 <= min(times) < 0.7 and 1.3 < max(times) <= 1.5
    with pytest.raises(ValueError, match="reach_share"):
        PolicyRollIn(lambda arm, instruction, seed: None, "ckpt", (0.8, 0.2))


def test_a_missing_profile_is_a_clear_error(processes: Processes, tmp_path: Path) -> None:
    """Exit 2 and no traceback (e.g. the default relative profile path outside the repo)."""
    assert _record(processes, tmp_path / "demos", "--tasks", "lift_red",
                   profile=tmp_path / "missing.yaml") == 2


def test_a_negative_approach_offset_is_a_clear_error(processes: Processes,
                                                     tmp_path: Path) -> None:
    """Exit 2 before any episode is recorded; so for a missing --policy checkpoint, a
    reversed --policy-share and a --policy-share without --policy."""
    out = tmp_path / "demos"
    assert _record(processes, out, "--tasks", "lift_red", "--approach-offset-m", "-0.01") == 2
    assert _record(processes, out, "--tasks", "lift_red", "--policy", tmp_path / "none") == 2
    assert _record(processes, out, "--tasks", "lift_red", "--policy", tmp_path / "none",
                   "--policy-share", "0.8", "0.2", expect="reach_share") == 2
    assert _record(processes, out, "--tasks", "lift_red", "--policy-share", "0.2", "0.8",
                   expect="needs --policy") == 2
    assert not out.exists()


def test_profile_sections_must_agree(tmp_path: Path) -> None:
    """A sim publishing where the policy does not listen would record useless bags."""
    profile = _profile_with(tmp_path, cameras=["agentview"],
                            camera_topics=["/sim/camera/agentview/image_raw"])
    with pytest.raises(ValueError, match="camera topics: vam_sim_node has"):
        RecordingTopics.from_profile(profile)
