"""`vam demo`: the whole loop (demos, dataset, stage 2, closed loop over ROS 2) closes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import Processes
from vam_policy.sim.experts import GRIPPER_MAX_ACCEL, GRIPPER_MAX_SPEED, RateLimiter


def test_gripper_limiter_ramps_a_step_within_the_profile_limits() -> None:
    """The experts' gripper went 1 -> 0 in one 50 ms step (20 /s), far past the sim profile's
    3 /s and 16 /s^2, so the node's filter would reshape a policy's gripper unlike the demos:
    the command now ramps within the limits, ends exactly at the target and never overshoots."""
    period = 0.05
    for start, target in ((1.0, 0.0), (0.0, 1.0), (1.0, 0.3), (0.31, 0.3)):
        limiter = RateLimiter(start, GRIPPER_MAX_SPEED, GRIPPER_MAX_ACCEL, period)
        values = np.array([start] + [limiter.step(target) for _ in range(40)])
        velocity = np.diff(values) / period
        acceleration = np.diff(np.concatenate([[0.0], velocity])) / period
        assert np.all(np.abs(velocity) <= 3.0) and np.all(np.abs(acceleration) <= 16.0)
        assert values[-1] == pytest.approx(target, abs=1e-12)
        assert np.all((values - target) * np.sign(start - target) >= -1e-12)


@pytest.mark.ros
def test_quick_demo_closes_the_loop(processes: Processes, tmp_path: Path) -> None:
    """`vam demo --quick` from a folder outside the workspace: every stage runs, each
    evaluation episode executed the policy's trajectories and was judged, and the summary PNG
    and the rollout video are written."""
    out = tmp_path / "demo"
    process = processes.start(sys.executable, "-m", "vam_policy.cli", "demo", "--quick",
                              "--out", out, cwd=tmp_path)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert "RANDOM weights" in stdout and "loop closed" in stdout
    results = json.loads((out / "eval" / "results.json").read_text())
    episodes = results["episodes"]
    assert len(episodes) > 0
    for episode in episodes:
        assert episode["trajectories_accepted"] > 0, episode
        assert isinstance(episode["success"], bool)
    demo = json.loads((out / "demo.json").read_text())
    for key in ("summary_png", "video"):
        path = Path(demo[key])
        assert path.is_file() and path.stat().st_size > 0, path
    assert Path(demo["video"]).suffix in (".mp4", ".gif")
    assert str(out / "summary.png") in stdout


def test_a_backbone_that_is_neither_preset_nor_folder_is_refused(tmp_path: Path, capsys) -> None:
    from vam_policy.cli import main

    code = main(["demo", "--quick", "--backbone", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "demo")])
    assert code == 2
    assert "expected a backbone preset" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
