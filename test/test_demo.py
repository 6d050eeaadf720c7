"""`vam demo`: a trained checkpoint is evaluated in closed loop over ROS 2, and the whole loop
(demos, dataset, stage 2, closed loop) closes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from bagtools import small_video_dataset

from conftest import REPO_ROOT, Processes
from vam_policy import demo_checkpoint
from vam_policy.cli import main
from vam_policy.demo_checkpoint import describe_training, write_training_record
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
    code = main(["demo", "--quick", "--backbone", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "demo")])
    assert code == 2
    assert "expected a backbone preset" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("flag", [["--demos", "4"], ["--steps", "10"], ["--backbone", "tiny"]])
def test_training_flags_are_refused_when_evaluating_a_checkpoint(
        flag: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --train or --quick nothing is trained, so a training flag would be silently
    ignored: it is refused (exit 2) with the way to train, before anything is written."""
    code = main(["demo", *flag, "--out", str(tmp_path / "demo")])
    assert code == 2
    error = capsys.readouterr().err
    assert f"{flag[0]}: only for training" in error and "--train" in error
    assert not (tmp_path / "demo").exists()


def test_checkpoint_and_train_are_refused_together(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--quick", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "d")])
    assert code == 2
    assert "give one or the other" in capsys.readouterr().err


def test_a_missing_checkpoint_folder_is_refused(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--checkpoint", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "demo")])
    assert code == 2
    assert f"--checkpoint {tmp_path / 'missing'}: no such checkpoint folder" in \
        capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_a_missing_shipped_checkpoint_says_how_to_make_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A copy without models/sim_panda: exit 1 naming the script that trains it and
    --train, and no output folder."""
    missing = tmp_path / "models" / "sim_panda" / "policy"
    monkeypatch.setattr(demo_checkpoint, "shipped_checkpoint", lambda: missing)
    code = main(["demo", "--tasks", "lift_red", "--out", str(tmp_path / "demo")])
    assert code == 1
    error = capsys.readouterr().err
    assert f"no checkpoint at {missing}" in error
    assert "scripts/train_demo_checkpoint" in error and "vam demo --train" in error
    assert not (tmp_path / "demo").exists()


def test_shipped_checkpoint_is_in_the_workspace_models_folder() -> None:
    assert demo_checkpoint.shipped_checkpoint() == REPO_ROOT / "models" / "sim_panda" / "policy"


def test_training_record_holds_how_the_checkpoint_was_made(tmp_path: Path) -> None:
    """training.json: the commands, commit, date, demos and steps asked for, the dataset's size
    and the last validation of metrics.jsonl (a line cut short is skipped)."""
    dataset = small_video_dataset(tmp_path, REPO_ROOT / "config" / "ur5e.yaml")
    shipped = tmp_path / "sim_panda"
    shipped.mkdir()
    (shipped / "metrics.jsonl").write_text(
        '{"step": 50, "loss": 0.9}\n'
        '{"step": 100, "val_loss": 0.5, "val_action_mae_rad": 0.04, '
        '"val_hold_still_mae_rad": 0.07}\n'
        '{"step": 150, "val_loss": 0.4, "val_action_mae_rad": 0.03, '
        '"val_hold_still_mae_rad": 0.07}\n{"step": 2')
    record = write_training_record(shipped, script="scripts/train_demo_checkpoint runs/x",
                                   train_command="vam train idm --steps 150", commit="abc123",
                                   demos_per_task=4, steps=150, dataset=dataset)
    assert json.loads((shipped / "training.json").read_text()) == record
    assert record["script"] == "scripts/train_demo_checkpoint runs/x"
    assert record["train_command"] == "vam train idm --steps 150"
    assert (record["commit"], record["demos_per_task"], record["steps"]) == ("abc123", 4, 150)
    assert record["dataset"]["episodes"] == 3 and record["dataset"]["val_episodes"] == 1
    assert record["dataset"]["episodes_per_instruction"] == {"stack the cubes": 3}
    assert record["dataset"]["control_steps"] > 0 and record["date"]
    assert (record["val_step"], record["val_action_mae_rad"]) == (150, 0.03)
    assert record["val_hold_still_mae_rad"] == 0.07
    assert "validation action error 0.030 rad" in describe_training(record)
    assert record["decoders"] == 1 and "ensemble" not in describe_training(record)
    ensemble = {**record, "decoders": 4}
    assert "an ensemble of 4 decoders (stage 2 with loop.seed 0..3" in describe_training(ensemble)


@pytest.mark.ros
def test_demo_evaluates_a_given_checkpoint(processes: Processes, tiny_checkpoint: Path,
                                           tmp_path: Path) -> None:
    """`vam demo --checkpoint` on a checkpoint with no training records: one closed-loop
    episode that ran on the policy's trajectories, the success per task and the average
    printed, the PNG, the video and demo.json written, and no training."""
    out = tmp_path / "demo"
    process = processes.start(sys.executable, "-m", "vam_policy.cli", "demo", "--checkpoint",
                              tiny_checkpoint, "--tasks", "lift_red", "--episodes", "1",
                              "--out", out, cwd=tmp_path)
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr[-3000:]
    assert "how it was trained is not recorded" in stdout
    assert "average success" in stdout and "over 1 episodes (seeds 1000..1000" in stdout
    assert not (out / "train").exists() and not (out / "demos").exists()
    results = json.loads((out / "eval" / "results.json").read_text())
    [episode] = results["episodes"]
    assert (episode["task"], episode["seed"]) == ("lift_red", 1000)
    assert episode["trajectories_accepted"] > 0
    demo = json.loads((out / "demo.json").read_text())
    assert demo["checkpoint"] == str(tiny_checkpoint) and demo["training"] is None
    for key in ("summary_png", "video"):
        path = Path(demo[key])
        assert path.is_file() and path.stat().st_size > 0, path
