"""`vam sim diagnose`: the in-process chunk follower, the summary, and the verb on the shipped
checkpoint with real MuJoCo physics."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from vam_policy.model.policy import VAMPolicy
from vam_policy.model.policy_config import policy_preset
from vam_policy.ros.parameters import load_parameters_file, settings_from_parameters
from vam_policy.ros.sim_parameters import load_sim_settings
from vam_policy.sim.arm import Observation, SimArm
from vam_policy.sim.diagnose import (
    REACH_TOLERANCE_M,
    ChunkFollower,
    EpisodeDiagnosis,
    compare_reports,
    comparison_markdown,
    markdown_table,
    moved_cube,
    nearest_cube,
    note_grip,
    summarize,
)
from vam_policy.sim.node_loop import NodeLoop
from vam_policy.sim.scene import CUBE_COLORS

PROFILE = REPO_ROOT / "config" / "sim_panda.yaml"
SHIPPED = REPO_ROOT / "models" / "sim_panda" / "policy"
INSTRUCTION = "lift the red cube"


@pytest.fixture(scope="module")
def policy() -> VAMPolicy:
    torch.manual_seed(0)
    joints = load_parameters_file(PROFILE)["joint_names"]
    return VAMPolicy.build(policy_preset("tiny", joint_names=joints)).eval()


def _observation(t: float, rng: np.random.Generator) -> Observation:
    return Observation(images=(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),),
                       joint_positions=rng.uniform(-0.5, 0.5, 7),
                       joint_velocities=np.zeros(7), gripper_opening=0.5, time=t)


def test_follower_plays_each_chunk_on_its_time_grid_then_replans(policy: VAMPolicy) -> None:
    """A chunk predicted at t0 from the first frame (standing for the still scene before it)
    is followed on the node's and training's grid: step k at t0 + k * action_dt, linear in
    between; after replan_steps actions it re-plans from the state and frames of that moment,
    with the next seed."""
    cfg, rng = policy.config, np.random.default_rng(0)
    follower = ChunkFollower(policy, INSTRUCTION, replan_steps=3, seed=7)
    first = _observation(2.0, rng)
    follower.observe(first)
    start = np.r_[first.joint_positions, first.gripper_opening]
    chunk = policy.predict(np.stack([first.rgb] * cfg.history_frames), start, INSTRUCTION,
                           seed=7000)
    assert follower.started_s is None
    command = follower.command(first)
    assert follower.started_s == 2.0  # its clock: the first chunk's observation
    np.testing.assert_allclose(command.joint_targets, chunk[0, :7], atol=1e-6)
    assert command.gripper == pytest.approx(np.clip(chunk[0, 7], 0.0, 1.0), abs=1e-6)
    for k in (1, 2):
        on_step = _observation(2.0 + k * cfg.action_dt, rng)
        follower.observe(on_step)
        np.testing.assert_allclose(follower.command(on_step).joint_targets, chunk[k, :7],
                                   atol=1e-6)
        between = _observation(2.0 + (k + 0.25) * cfg.action_dt, rng)
        follower.observe(between)
        np.testing.assert_allclose(follower.command(between).joint_targets,
                                   0.75 * chunk[k, :7] + 0.25 * chunk[k + 1, :7], atol=1e-6)

    replan = _observation(2.0 + 3 * cfg.action_dt, rng)
    follower.observe(replan)
    state = np.r_[replan.joint_positions, replan.gripper_opening]
    history = follower._history.sample(replan.time, cfg.history_frames, cfg.fps)
    new_chunk = policy.predict(history, state, INSTRUCTION, seed=7001)
    np.testing.assert_allclose(follower.command(replan).joint_targets, new_chunk[0, :7],
                               atol=1e-6)
    with pytest.raises(ValueError, match="replan_steps"):
        ChunkFollower(policy, INSTRUCTION, replan_steps=cfg.horizon + 1, seed=0)


def test_node_loop_runs_the_nodes_timing_and_safety_filter(policy: VAMPolicy) -> None:
    """The node's loop on the sim's clock, with a random policy sampling wild chunks: the arm
    holds its start until the first chunk arrives (the history spans the model's frames, then
    the inference latency), chunks start from frames replan_steps * action_dt apart, every
    command moves within the profile's velocity limits, and a rerun is identical."""
    sim = load_sim_settings(PROFILE)
    node = dataclasses.replace(settings_from_parameters(load_parameters_file(PROFILE)),
                               noise_scale=1.0)
    cfg, latency, period = policy.config, 0.3, 1.0 / sim.control_rate_hz

    def rollout(arm: SimArm) -> tuple[np.ndarray, NodeLoop, list[tuple[float, np.ndarray]]]:
        observation = arm.reset("lift_red", 1000)
        start = np.r_[observation.joint_positions, observation.gripper_opening]
        loop = NodeLoop(arm, policy, INSTRUCTION, node, sim.camera_rate_hz, latency, seed=3)
        commands = []
        while observation.time < 4.0:
            loop.observe(observation)
            command = loop.command(observation)
            commands.append((observation.time + period,
                             np.r_[command.joint_targets, command.gripper]))
            observation = arm.apply(command)
        return start, loop, commands

    with SimArm(sim.arm_config()) as arm:
        start, loop, commands = rollout(arm)
        _, again, repeated = rollout(arm)
    assert len(loop.arrivals) >= 2 and loop.fault is None
    stamps, arrivals = np.array(loop.arrivals).T
    assert stamps[0] >= (cfg.history_frames - 1) / cfg.fps - 1e-6  # first frame stamped 0
    assert np.all((arrivals - stamps >= latency - 1e-9) & (arrivals - stamps < latency + period))
    assert np.all(np.diff(stamps) >= node.replan_steps * cfg.action_dt - 1e-3)
    assert loop.started_s == stamps[0]
    times = np.array([t for t, _ in commands])
    targets = np.stack([target for _, target in commands])
    np.testing.assert_allclose(targets[times <= arrivals[0]], start[None].repeat(
        int(np.sum(times <= arrivals[0])), axis=0), atol=1e-9)
    assert np.abs(targets - start).max() > 0.05  # it moved
    speed = np.abs(np.diff(targets, axis=0)) / period
    limit = np.array(node.max_joint_velocity) * node.velocity_scaling
    assert np.all(speed <= limit + 1e-6), (speed.max(axis=0), limit)
    assert again.arrivals == loop.arrivals
    np.testing.assert_array_equal(np.stack([t for _, t in repeated]), targets)


def test_the_approached_cube_is_the_nearest_start() -> None:
    """A grip site between two rows counts for the nearer cube, whatever the instruction."""
    cubes = {"red": np.array([-0.135, 0.0]), "green": np.array([-0.02, 0.05]),
             "blue": np.array([0.095, -0.03])}
    assert nearest_cube(cubes, np.array([-0.12, 0.03])) == "red"
    assert nearest_cube(cubes, np.array([0.04, 0.0])) == "blue"
    assert nearest_cube(cubes, np.array([0.03, 0.05])) == "green"


def test_the_touched_cube_is_the_one_moved_more_than_a_centimetre() -> None:
    """Of the cubes, the one moved farthest from its start if it moved more than 1 cm (a cube
    lifted straight up has moved)."""
    starts = {"red": np.array([-0.135, 0.0, 0.82]), "green": np.array([-0.02, 0.05, 0.82])}
    assert moved_cube(starts, {"red": np.array([-0.13, 0.0, 0.82]),
                               "green": np.array([-0.02, 0.05, 0.825])}) is None
    assert moved_cube(starts, {"red": np.array([-0.135, 0.0, 0.82]),
                               "green": np.array([-0.02, 0.05, 0.95])}) == "green"
    assert moved_cube(starts, {"red": np.array([-0.12, 0.0, 0.82]),
                               "green": np.array([-0.02, 0.07, 0.82])}) == "green"
    assert moved_cube(starts, {"red": np.array([-0.12, 0.0, 0.82]),
                               "green": np.array([-0.02, 0.05, 0.82])}) == "red"


def test_marks_are_taken_on_the_policys_clock() -> None:
    """The grip site is noted under a mark once the mark's time has passed since the policy's
    first chunk's observation, and not at all before that chunk."""
    with SimArm(load_sim_settings(PROFILE).arm_config()) as arm:
        arm.reset("lift_red", 1000)
        times, notes = {"approach": 1.5, "reach": 2.5}, {}
        note_grip(notes, times, arm, 3.0, None)
        assert notes == {}
        note_grip(notes, times, arm, 1.8, 0.4)
        assert notes == {}
        note_grip(notes, times, arm, 1.9, 0.4)
        assert list(notes) == ["approach"]
        np.testing.assert_allclose(notes["approach"], arm.grip_position()[:2])


def test_summary_rates_errors_and_tolerance() -> None:
    """Per task and over all: success shares, the share that approached the named cube, mean
    absolute approach and reach errors per axis, and the shares of approaches and reaches
    within the tolerance on both axes."""
    episodes = [
        EpisodeDiagnosis("lift_red", 1000, 0, False, True, 1.6, (-0.10, 0.01), 2.6, (0.0, 0.04),
                         "green", (0.09, 0.02), "safety filter: joint 'robot0_gripper' ...",
                         "green"),
        EpisodeDiagnosis("lift_red", 1000, 1, True, True, 1.6, (0.01, -0.015), 2.6, (0.0, 0.0),
                         "red", (0.09, 0.02), None, "red"),
        EpisodeDiagnosis("push_red_left", 1000, 0, False, False, 2.4, (0.0, 0.03), 3.4,
                         (0.01, 0.01), "red", (-0.13, -0.05)),
    ]
    rows = {row["task"]: row for row in summarize(episodes)}
    assert list(rows) == ["lift_red", "push_red_left", "all"]
    assert rows["lift_red"]["safety_faults"] == 0.5 and rows["all"]["safety_faults"] == 1 / 3
    lift = rows["lift_red"]
    assert (lift["rollouts"], lift["success"], lift["success_handed_over"]) == (2, 0.5, 1.0)
    assert lift["approach_error_x_m"] == pytest.approx(0.055)
    assert lift["approach_error_y_m"] == pytest.approx(0.0125)
    assert lift["approach_within_tolerance"] == 0.5
    assert lift["approached_named_cube"] == 0.5
    assert rows["all"]["approached_named_cube"] == pytest.approx(2 / 3)
    assert (lift["touched_named_cube_first"], lift["touched_no_cube"]) == (0.5, 0.0)
    assert rows["push_red_left"]["touched_no_cube"] == 1.0
    assert rows["all"]["touched_named_cube_first"] == pytest.approx(1 / 3)
    assert rows["push_red_left"]["approach_within_tolerance"] == 0.0  # 3 cm > 2 cm
    assert (lift["reach_error_x_m"], lift["reach_error_y_m"]) == pytest.approx((0.0, 0.02))
    assert lift["reach_within_tolerance"] == 0.5
    assert rows["push_red_left"]["reach_within_tolerance"] == 1.0
    assert rows["all"]["reach_within_tolerance"] == pytest.approx(2 / 3)
    assert rows["all"]["success"] == pytest.approx(1 / 3)
    assert REACH_TOLERANCE_M == 0.02

    by_row = {row["row"]: row for row in summarize(episodes, by="row")}
    assert list(by_row) == ["row x +0.095 m", "row x -0.135 m", "all"]
    assert (by_row["row x +0.095 m"]["rollouts"], by_row["row x +0.095 m"]["success"]) == (2, 0.5)
    assert by_row["row x -0.135 m"]["success"] == 0.0
    table = markdown_table(summarize(episodes, by="row"))
    assert table.startswith("| row | rollouts |") and "| row x +0.095 m | 2 | 50% |" in table
    with pytest.raises(ValueError, match="by must be"):
        summarize(episodes, by="seed")


def _report(*outcomes: tuple[str, int, bool]) -> dict:
    return {"episodes": [{"task": task, "seed": seed, "noise_draw": 0, "success": success}
                         for task, seed, success in outcomes]}


def test_comparing_two_reports_counts_the_layouts_won_and_lost() -> None:
    """Paired by layout: only the shared ones count; the sign test is of won against lost."""
    before = _report(("lift_red", 1000, True), ("lift_red", 1001, False),
                     ("push_red_left", 1000, True), ("push_red_left", 1001, False),
                     ("lift_red", 1002, True))
    after = _report(("lift_red", 1000, False), ("lift_red", 1001, True),
                    ("push_red_left", 1000, True), ("push_red_left", 1001, True),
                    ("lift_red", 1003, True))
    result = compare_reports(before, after)
    assert (result["layouts"], result["solved_before"], result["solved_after"]) == (4, 2, 3)
    assert result["won"] == [("lift_red", 1001, 0), ("push_red_left", 1001, 0)]
    assert result["lost"] == [("lift_red", 1000, 0)]
    assert result["sign_test_p"] == pytest.approx(1.0)  # 2 against 1 is no evidence
    eight = compare_reports(_report(*[("lift_red", seed, False) for seed in range(8)]),
                            _report(*[("lift_red", seed, True) for seed in range(8)]))
    assert eight["sign_test_p"] == pytest.approx(2 / 2**8)
    same = compare_reports(before, before)
    assert (same["won"], same["lost"], same["sign_test_p"]) == ([], [], 1.0)
    text = comparison_markdown(result)
    assert "| 4 | 2 | 3 | 2 | 1 | 1.00 |" in text and "Lost: lift_red 1000" in text
    with pytest.raises(ValueError, match="share no layout"):
        compare_reports(before, _report(("lift_red", 2000, True)))


def test_vam_sim_compare_prints_the_comparison_and_refuses_unrelated_reports(
        tmp_path: Path) -> None:
    before, after = tmp_path / "before", tmp_path / "after.json"
    before.mkdir()
    (before / "diagnosis.json").write_text(json.dumps(_report(("lift_red", 1000, False))))
    after.write_text(json.dumps(_report(("lift_red", 1000, True))))
    done = subprocess.run([sys.executable, "-m", "vam_policy.cli", "sim", "compare",
                           str(before), str(after)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| 1 | 0 | 1 | 1 | 0 | 1.00 |" in done.stdout
    after.write_text(json.dumps(_report(("lift_red", 2000, True))))
    done = subprocess.run([sys.executable, "-m", "vam_policy.cli", "sim", "compare",
                           str(before), str(after)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "share no layout" in done.stderr


def _diagnose(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vam_policy.cli", "sim", "diagnose", *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_diagnose_the_shipped_checkpoint(tmp_path: Path) -> None:
    """One lift layout under two noise draws, alone and handed over after the expert's 1.6 s
    approach (its fingers are down at the cube at 2.6 s): the table is printed and the report
    written; a missing checkpoint is one line and exit 2."""
    done = _diagnose("--checkpoint", str(SHIPPED), "--tasks", "lift_red", "--episodes", "1",
                     "--noise-draws", "2", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "| lift_red | 2 |" in done.stdout
    report = json.loads((tmp_path / "diagnosis.json").read_text())
    assert [(e["task"], e["seed"], e["noise_draw"], e["approach_s"], e["reach_s"])
            for e in report["episodes"]] == [("lift_red", 1000, 0, 1.6, 2.6),
                                             ("lift_red", 1000, 1, 1.6, 2.6)]
    assert all(np.all(np.isfinite(e["approach_error_m"] + e["reach_error_m"]))
               for e in report["episodes"])
    assert all(e["approached_cube"] in CUBE_COLORS for e in report["episodes"])
    assert all(e["touched_cube"] in (*CUBE_COLORS, None) for e in report["episodes"])
    assert all(e["touched_cube"] == "red" for e in report["episodes"] if e["success"])
    assert report["replan_steps"] == max(1, load_parameters_file(PROFILE).get("replan_steps", 0))
    assert all(e["fault"] is None for e in report["episodes"])  # chunks: no safety filter
    # lift_red at seed 1000 starts in the row nearest the robot
    assert [row["row"] for row in report["summary_by_row"]] == ["row x -0.135 m"]
    markdown = (tmp_path / "diagnosis.md").read_text()
    assert "| lift_red | 2 |" in markdown and "| row x -0.135 m | 2 |" in markdown

    missing = _diagnose("--checkpoint", str(tmp_path / "nothing"), "--episodes", "1")
    assert missing.returncode == 2
    assert missing.stderr.startswith("vam sim diagnose:") and missing.stderr.count("\n") == 1
