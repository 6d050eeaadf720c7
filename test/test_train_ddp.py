"""Stage 2 under torchrun: two CPU processes on gloo train one decoder, rank 0 alone writes."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from bagtools import DemoSpec, write_demo_bag

from conftest import REPO_ROOT
from vam_policy.data.dataset import build_dataset
from vam_policy.data.episodes import EpisodeOptions, RecordingProfile
from vam_policy.model.checkpoint import load_checkpoint


def test_two_gloo_processes_train_in_sync(tmp_path: Path, processes) -> None:
    """Both ranks run all steps on their own shards and end with identical weights (the
    gradients were all-reduced); one set of checkpoints is written, and it loads."""
    bags = [write_demo_bag(tmp_path / f"bag{i}", DemoSpec(duration_s=1.5, motion_offset=0.2 * i,
                                                          seed=i)).path for i in range(3)]
    profile = RecordingProfile.load(REPO_ROOT / "config" / "ur5e.yaml")
    build_dataset(bags, profile, tmp_path / "dataset", val_fraction=0.34, progress=False,
                  options=EpisodeOptions(instruction="stack the cubes"))
    out = tmp_path / "run"
    process = processes.start(
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "vam_policy.cli", "train", "idm", "--dataset", tmp_path / "dataset",
        "--config", "idm:tiny", "--out", out, "--steps", "4", "--no-progress",
    )
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr[-3000:]
    finished = dict(re.findall(r"rank (\d)/2: idm at step 4/4, weights checksum (\S+)", stdout))
    assert set(finished) == {"0", "1"}, stdout
    assert finished["0"] == finished["1"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_0000004"]
    assert (out / "train.log").read_text().count("finished 4 steps") == 1
    policy = load_checkpoint(out / "policy")
    assert policy.config.joint_names == profile.joint_names
