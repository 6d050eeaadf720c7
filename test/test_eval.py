"""`vam eval`: the policy node drives the sim node over ROS 2, episode by episode."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, Processes
from vam_policy.ros.evaluation import (
    EpisodeOutcome,
    PolicyTopics,
    markdown_table,
    policy_timing,
    policy_topics,
    summarize,
)

PROFILE = REPO_ROOT / "config" / "sim_panda.yaml"


def _outcome(task: str, success: bool, sim_time_s: float, chunks: int = 0,
             latency_s: float | None = None, delay_s: float | None = None) -> EpisodeOutcome:
    return EpisodeOutcome(task, 0, "", success, sim_time_s, 1.0, 10, 0, 1.0, 1.0, chunks,
                          latency_s, delay_s)


def test_summary_rows_per_task_then_all() -> None:
    rows = summarize([_outcome("lift_red", True, 4.0), _outcome("lift_red", False, 10.0),
                      _outcome("push_red_left", False, 10.0)])
    assert [(r.task, r.episodes, r.successes) for r in rows] == [
        ("lift_red", 2, 1), ("push_red_left", 1, 0), ("all", 3, 1)]
    assert rows[0].success_rate == 0.5 and rows[0].mean_time_s == 7.0
    assert "| lift_red | 2 | 1 | 50% | 7.0 |" in markdown_table(rows)


def test_policy_timing_weighs_episodes_by_their_chunks() -> None:
    timing = policy_timing([_outcome("lift_red", True, 4.0, 3, 0.1, 0.2),
                            _outcome("lift_red", False, 10.0),
                            _outcome("lift_red", False, 10.0, 1, 0.5, 0.6)])
    assert timing["chunks"] == 4
    assert timing["inference_latency_s"] == pytest.approx(0.2)
    assert timing["chunk_delay_s"] == pytest.approx(0.3)
    assert policy_timing([_outcome("lift_red", True, 4.0)]) == {
        "chunks": 0, "inference_latency_s": None, "chunk_delay_s": None}


def test_policy_topics_follow_the_profile(tmp_path: Path) -> None:
    assert policy_topics(PROFILE) == PolicyTopics("/vam_policy_node/status",
                                                  "/vam_policy_node/action_chunk")
    document = yaml.safe_load(PROFILE.read_text())
    document["vam_policy_node"]["ros__parameters"].update(
        status_topic="/arm/policy_status", action_chunk_topic="debug/chunks")
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump(document))
    assert policy_topics(profile) == PolicyTopics("/arm/policy_status", "/debug/chunks")


@pytest.mark.ros
def test_eval_closes_the_loop_on_the_tiny_checkpoint(processes: Processes,
                                                     tiny_checkpoint: Path,
                                                     tmp_path: Path) -> None:
    """Untrained policy, two 3 s episodes: each ends at the time limit, the sim executed the
    policy node's trajectories (the arm moved far more than an idle arm drifts), results are
    written and printed, and both node processes are gone afterwards."""
    out = tmp_path / "eval"
    # From zero start noise (the sim profile's noise_scale 0) an untrained decoder barely moves.
    document = yaml.safe_load(PROFILE.read_text())
    document["vam_policy_node"]["ros__parameters"]["noise_scale"] = 1.0
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump(document))
    process = processes.start(
        sys.executable, "-m", "vam_policy.cli", "eval", "--checkpoint", tiny_checkpoint,
        "--episodes", "1", "--tasks", "lift_red,push_blue_left", "--max-time-s", "3",
        "--profile", profile, "--out", out,
    )
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr
    results = json.loads((out / "results.json").read_text())
    episodes = results["episodes"]
    assert [(e["task"], e["seed"]) for e in episodes] == [("lift_red", 1000),
                                                          ("push_blue_left", 1000)]
    for episode in episodes:
        assert episode["success"] or episode["sim_time_s"] == pytest.approx(3.0, abs=0.06)
        # At most one refused: sent just before the pause, delivered after the next reset.
        assert episode["trajectories_accepted"] >= 5 and episode["trajectories_rejected"] <= 1
        assert episode["joint_travel_rad"] > 0.05, episode  # idle drift: ~2e-4 rad/s
        assert episode["real_time_factor"] > 0.5
        # Chunks are ready after their inference, which starts once the observation is taken.
        assert episode["chunks"] >= 1 and episode["inference_latency_s"] > 0
        assert episode["chunk_delay_s"] >= episode["inference_latency_s"] - 0.005
    assert [row["task"] for row in results["summary"]] == ["lift_red", "push_blue_left", "all"]
    table = (out / "results.md").read_text()
    assert "| push_blue_left | 1 |" in table and "| all | 2 |" in table
    assert "| all | 2 |" in stdout
    timing = results["policy_timing"]
    assert timing["chunks"] == sum(e["chunks"] for e in episodes)
    assert f"published {timing['chunks']} action chunks" in table
    for node in results["nodes"].values():
        assert node["exit_code"] is not None and Path(node["log"]).is_file()
        with pytest.raises(ProcessLookupError):
            os.kill(node["pid"], 0)
