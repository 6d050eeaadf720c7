"""Bags to episodes to a dataset folder: grids, quirks of real bags, splits, stats, CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from bagtools import (
    COMMAND_OFFSET,
    INSTRUCTION_TOPIC,
    START_NS,
    UR5E_CAMERA,
    UR5E_TRAJECTORY,
    DemoSpec,
    DemoTruth,
    decode_frame_code,
    write_demo_bag,
)

from conftest import REPO_ROOT
from vam_policy.data.bag_reader import BagError, MissingTopicError
from vam_policy.data.cli import add_dataset_commands
from vam_policy.data.dataset import (
    DatasetError,
    build_dataset,
    load_dataset,
    split_episodes,
)
from vam_policy.data.episodes import Episode, EpisodeOptions, RecordingProfile, build_episode
from vam_policy.model.transforms import Normalizer

UR5E = REPO_ROOT / "config" / "ur5e.yaml"
PROFILE = RecordingProfile.load(UR5E)
WITH_FLAG = EpisodeOptions(instruction="from the flag")
QUIRKS = DemoSpec(storage="mcap", camera_encoding="jpeg", jitter_s=0.004, drop_every=7,
                  swap_every=5, duplicate_every=9, nan_every=11, odd_size_frames=(3, 4))


def _abs_times(episode: Episode, times: np.ndarray) -> np.ndarray:
    """Episode times -> seconds since the bag's START_NS (the truth's clock)."""
    return (episode.start_ns - START_NS) / 1e9 + times


def _expected_codes(truth: DemoTruth, topic: str, times: np.ndarray) -> list[int]:
    """Independently of FrameHistory: the frame with the latest stamp not later than t."""
    stamps = truth.frame_stamps[topic]
    return [int(np.nanargmax(np.where(stamps <= t + 1e-9, stamps, np.nan))) for t in times]


def _interpolation_tolerance(truth: DemoTruth) -> float:
    """|q''| <= 2 rad/s^2 for the demo motion: linear interpolation errs <= 2 h^2 / 8."""
    h = float(np.max(np.diff(np.sort(truth.joint_stamps))))
    return 2 * h * h / 8 + 1e-6  # + float32 storage


@pytest.mark.parametrize("spec", [DemoSpec(), QUIRKS], ids=["clean-sqlite3", "quirks-mcap"])
def test_frames_states_and_actions_on_their_grids(tmp_path: Path, spec: DemoSpec) -> None:
    """Each frame-grid time gets the newest frame not later than it; joint states (shuffled,
    with a gripper, jittered, dropped, out of order, repeated, NaN) are interpolated in the
    profile's joint order; actions are the measured position one control step later."""
    truth = write_demo_bag(tmp_path / "bag", spec)
    episode = build_episode(tmp_path / "bag", PROFILE, WITH_FLAG)

    assert episode.joint_names == PROFILE.joint_names  # gripper dropped
    assert episode.action_source == "joint_states"
    np.testing.assert_allclose(np.diff(episode.control_times), 0.1, atol=1e-9)
    np.testing.assert_allclose(np.diff(episode.frame_times), 0.1, atol=1e-9)
    assert 17 <= episode.length <= 19 and len(episode.frame_times) >= episode.length

    (frames,) = episode.frames
    assert frames.shape == (len(episode.frame_times), 24, 32, 3) and frames.dtype == np.uint8
    picked = [decode_frame_code(f) for f in frames]
    assert picked == _expected_codes(truth, UR5E_CAMERA, _abs_times(episode, episode.frame_times))

    t = _abs_times(episode, episode.control_times)
    tolerance = _interpolation_tolerance(truth)
    np.testing.assert_allclose(episode.state, truth.position(t), atol=tolerance)
    np.testing.assert_allclose(episode.action, truth.position(t + 0.1), atol=tolerance)


def test_quirks_are_reported_in_notes(tmp_path: Path) -> None:
    """NaN samples, repeated and out-of-order stamps and resized frames leave a note each."""
    write_demo_bag(tmp_path / "bag", QUIRKS)
    notes = " | ".join(build_episode(tmp_path / "bag", PROFILE, WITH_FLAG).notes)
    for expected in ("NaN", "repeated stamp", "out of stamp order",
                     "resized 1 frames to the first frame's 32x24"):
        assert expected in notes


def test_two_cameras_share_the_frame_grid(tmp_path: Path) -> None:
    """Cameras with different phases each get their own newest frame at every grid time."""
    wrist = "/wrist/image_raw"
    truth = write_demo_bag(tmp_path / "bag", DemoSpec(cameras=(UR5E_CAMERA, wrist),
                                                      camera_hz=15.0, camera_encoding="bgr8"))
    profile = dataclasses.replace(PROFILE, camera_topics=(UR5E_CAMERA, wrist))
    episode = build_episode(tmp_path / "bag", profile, WITH_FLAG)
    times = _abs_times(episode, episode.frame_times)
    for topic, frames in zip(profile.camera_topics, episode.frames, strict=True):
        assert [decode_frame_code(f) for f in frames] == _expected_codes(truth, topic, times)


def test_commands_are_the_actions_in_auto_mode(tmp_path: Path) -> None:
    """With JointTrajectory commands in the bag, auto uses the newest command at each control
    time (joint order of the command fixed); joint_states mode still ignores them."""
    truth = write_demo_bag(tmp_path / "bag", DemoSpec(trajectory_topic=UR5E_TRAJECTORY))
    episode = build_episode(tmp_path / "bag", PROFILE, WITH_FLAG)
    assert episode.action_source == "commands"
    t = _abs_times(episode, episode.control_times)
    newest = np.searchsorted(truth.command_stamps, t + 1e-9, side="right") - 1
    assert newest.min() == 0
    np.testing.assert_allclose(episode.action, truth.command_positions[newest], atol=1e-6)
    assert np.abs(episode.action - episode.state).mean() > COMMAND_OFFSET / 2

    measured = build_episode(tmp_path / "bag", PROFILE,
                             dataclasses.replace(WITH_FLAG, action_source="joint_states"))
    assert measured.action_source == "joint_states"
    np.testing.assert_allclose(measured.action, truth.position(
        _abs_times(measured, measured.control_times) + 0.1), atol=1e-4)


def test_commands_mode_requires_the_trajectory_topic(tmp_path: Path) -> None:
    write_demo_bag(tmp_path / "bag", DemoSpec())
    options = dataclasses.replace(WITH_FLAG, action_source="commands")
    with pytest.raises(MissingTopicError, match=UR5E_TRAJECTORY):
        build_episode(tmp_path / "bag", PROFILE, options)


def test_instruction_sources_in_priority_order(tmp_path: Path) -> None:
    """The bag's topic beats instruction.txt, which beats the flag; none at all is an error."""
    write_demo_bag(tmp_path / "topic", DemoSpec(instruction_topic=INSTRUCTION_TOPIC,
                                                duration_s=0.5))
    write_demo_bag(tmp_path / "plain", DemoSpec(duration_s=0.5))
    (tmp_path / "topic" / "instruction.txt").write_text("from the file\n")

    def source(bag: str, flag: str | None) -> tuple[str, str]:
        options = EpisodeOptions(instruction=flag)
        episode = build_episode(tmp_path / bag, PROFILE, options)
        return episode.instruction, episode.instruction_source

    assert source("topic", "from the flag") == ("pick up the red cube", "topic")
    assert source("plain", "from the flag") == ("from the flag", "flag")
    (tmp_path / "plain" / "instruction.txt").write_text("  from the file\n")
    assert source("plain", "from the flag") == ("from the file", "file")
    (tmp_path / "plain" / "instruction.txt").unlink()
    with pytest.raises(BagError, match="no instruction") as error:
        source("plain", None)
    assert str(tmp_path / "plain") in str(error.value)


def test_a_long_gap_trims_the_episode_to_its_longest_stretch(tmp_path: Path) -> None:
    """0.7 s without joint states or frames (> max_gap_s 0.5): only the longer side stays."""
    write_demo_bag(tmp_path / "bag", DemoSpec(duration_s=3.0, gap_s=(0.8, 1.5)))
    episode = build_episode(tmp_path / "bag", PROFILE, WITH_FLAG)
    start = (episode.start_ns - START_NS) / 1e9
    assert 1.5 <= start < 1.51 and episode.length >= 13
    assert any("trimmed" in note for note in episode.notes)
    relaxed = build_episode(tmp_path / "bag", PROFILE,
                            dataclasses.replace(WITH_FLAG, max_gap_s=1.0))
    assert relaxed.start_ns == START_NS and relaxed.length >= 28


def test_missing_camera_topic_names_bag_and_topic(tmp_path: Path) -> None:
    write_demo_bag(tmp_path / "bag", DemoSpec(cameras=("/other/image_raw",), duration_s=0.5))
    with pytest.raises(MissingTopicError) as error:
        build_episode(tmp_path / "bag", PROFILE, WITH_FLAG)
    assert str(tmp_path / "bag") in str(error.value) and UR5E_CAMERA in str(error.value)


def test_split_is_by_episode_seeded_with_at_least_one_of_each() -> None:
    assert split_episodes(1, 0.2, 0) == ["train"]
    assert split_episodes(2, 0.01, 0).count("val") == 1
    assert split_episodes(10, 0.3, 4).count("val") == 3
    assert split_episodes(10, 0.3, 4) == split_episodes(10, 0.3, 4)
    assert split_episodes(10, 0.3, 4) != split_episodes(10, 0.3, 5)
    assert split_episodes(5, 0.0, 0) == ["train"] * 5
    with pytest.raises(ValueError, match="val_fraction"):
        split_episodes(3, 1.0, 0)


def _bags(root: Path, count: int, **spec: object) -> list[Path]:
    """`count` short demos that differ (motion offsets), so train-only stats are visible."""
    paths = []
    for i in range(count):
        path = root / f"demo_{i}"
        write_demo_bag(path, DemoSpec(duration_s=1.0, motion_offset=0.3 * i, seed=i,
                                      **spec))  # type: ignore[arg-type]
        paths.append(path)
    return paths


def test_dataset_roundtrip_split_and_train_only_stats(tmp_path: Path) -> None:
    """dataset.json indexes every episode; stats come from train episodes only; PNG frames
    and arrays load back exactly."""
    bags = _bags(tmp_path / "bags", 4)
    dataset = build_dataset(bags, PROFILE, tmp_path / "ds", options=WITH_FLAG,
                            val_fraction=0.25, seed=1, frame_codec="png", progress=False)
    document = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert (document["format"], document["version"]) == ("vam-episodes", 1)
    assert document["joint_names"] == list(PROFILE.joint_names)
    assert [e["source"] for e in document["episodes"]] == [str(b.resolve()) for b in bags]
    assert len(dataset.split("val")) == 1 and len(dataset.split("train")) == 3

    episodes = [dataset.load_episode(i) for i in range(4)]
    for bag, loaded in zip(bags, episodes, strict=True):
        built = build_episode(bag, PROFILE, WITH_FLAG)
        np.testing.assert_array_equal(loaded.state, built.state)
        np.testing.assert_array_equal(loaded.frames[0], built.frames[0])
        assert loaded.length == document["episodes"][bags.index(bag)]["length"]

    train = np.concatenate([episodes[i].state for i in dataset.split("train")])
    everything = np.concatenate([e.state for e in episodes])
    expected = Normalizer.fit(train)
    np.testing.assert_allclose(dataset.state_stats.mean, expected.mean, rtol=1e-6)
    np.testing.assert_allclose(dataset.state_stats.std, expected.std, rtol=1e-6)
    assert not np.allclose(dataset.state_stats.mean, Normalizer.fit(everything).mean)
    actions = np.concatenate([episodes[i].action for i in dataset.split("train")])
    np.testing.assert_allclose(dataset.action_stats.mean, Normalizer.fit(actions).mean,
                               rtol=1e-6)

    given = build_dataset(bags, PROFILE, tmp_path / "given", options=WITH_FLAG,
                          splits=["train", "train", "val", "val"], progress=False)
    assert list(given.split("val")) == [2, 3]  # the held-out bags the caller names


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("damage", ["truncate", "metadata"])
def test_a_corrupt_bag_leaves_the_previous_dataset_untouched(tmp_path: Path,
                                                             damage: str) -> None:
    """The build fails naming the bad bag, and `out` keeps the dataset built before, byte for
    byte, with no half-written folder left beside it."""
    bags = _bags(tmp_path / "bags", 3, storage="mcap" if damage == "truncate" else "sqlite3")
    out = tmp_path / "ds"
    build_dataset(bags[:2], PROFILE, out, options=WITH_FLAG, progress=False)
    before = _snapshot(out)
    broken = bags[1]
    if damage == "truncate":
        data_file = next(broken.glob("*.mcap"))
        data_file.write_bytes(data_file.read_bytes()[:2000])
    else:
        (broken / "metadata.yaml").write_text("rosbag2_bagfile_information: [oops\n")
    with pytest.raises(BagError) as error:
        build_dataset(bags, PROFILE, out, options=WITH_FLAG, progress=False)
    assert str(broken) in str(error.value)
    assert _snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["bags", "ds"]
    assert len(load_dataset(out).episodes) == 2


def test_load_dataset_errors_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such folder"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="not a VAM episodes dataset"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text('{"format": "vam-episodes", "version": 99}')
    with pytest.raises(DatasetError, match="version 99 is not supported"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text('{"format": "lerobot", "version": 1}')
    with pytest.raises(DatasetError, match="'lerobot' is not"):
        load_dataset(tmp_path)


def test_build_refuses_to_replace_a_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("years of work")
    with pytest.raises(DatasetError, match="not a dataset"):
        build_dataset(_bags(tmp_path / "bags", 1), PROFILE, tmp_path / "precious",
                      options=WITH_FLAG, progress=False)
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "years of work"


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="vam")
    add_dataset_commands(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def test_cli_dataset_build_and_info_end_to_end(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`dataset build --bags <folder of 3 bags>` then `dataset info`; errors exit 1 with one
    line naming the problem."""
    _bags(tmp_path / "bags", 3)
    out = tmp_path / "ds"
    assert _cli("dataset", "build", "--bags", tmp_path / "bags", "--profile", UR5E, "--out",
                out, "--instruction", "stack the cubes", "--fps", "5", "--val-fraction", "0.3",
                "--seed", "3") == 0
    capsys.readouterr()
    assert _cli("dataset", "info", out) == 0
    info = capsys.readouterr().out
    assert "episodes: 3 (2 train, 1 val)" in info and "fps 5, control rate 10 Hz" in info
    assert info.count("'stack the cubes'") == 3
    dataset = load_dataset(out)
    assert dataset.fps == 5.0 and len(dataset.load_episode(0).frame_times) == 5

    assert _cli("dataset", "build", "--bags", tmp_path / "bags", "--profile", UR5E, "--out",
                tmp_path / "other") == 1
    assert "no instruction" in capsys.readouterr().err
    assert _cli("dataset", "info", tmp_path / "bags") == 1
    assert "not a VAM episodes dataset" in capsys.readouterr().err


def test_record_prints_the_profile_topics(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`record` builds `ros2 bag record -o OUT -s mcap` with every topic of the UR5e profile;
    without ros2 on PATH it says it only printed the command."""
    out = tmp_path / "demo_1"
    assert _cli("record", "--profile", UR5E, "--out", out, "--dry-run") == 0
    expected = (f"ros2 bag record -o {out} -s mcap /camera/camera/color/image_raw "
                "/joint_states /scaled_joint_trajectory_controller/joint_trajectory "
                "/vam_policy_node/instruction")
    assert capsys.readouterr().out.strip() == expected
    monkeypatch.setenv("PATH", str(tmp_path))
    assert _cli("record", "--profile", UR5E, "--out", out) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == expected and "printed the command only" in captured.err
    assert not out.exists()
