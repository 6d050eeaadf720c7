"""LeRobot v3.0 interchange: import a folder written here to the format, export ours, round trip.

The LeRobot folder of these tests is written by `_write_lerobot` straight from the format
(info.json, tasks.parquet with a pandas index, meta/episodes, data and videos in two files
each, episodes back to back in a video), not by the exporter, so import and export are checked
against the format rather than against each other. Video frames carry their identity as a gray
level, so the frame picked for each row survives lossy coding.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vam_policy.data.cli import add_dataset_commands
from vam_policy.data.dataset import load_dataset, write_dataset
from vam_policy.data.episodes import Episode
from vam_policy.data.lerobot import ImportOptions, LeRobotError, import_lerobot, read_info
from vam_policy.data.lerobot_export import ExportOptions, export_lerobot
from vam_policy.model.transforms import Normalizer

FPS = 10
LENGTHS = (6, 9, 7)
TASKS = ("pick up the cube", "open the drawer")
EPISODE_TASKS = (0, 1, 0)
STATE_NAMES = ("j1", "j2", "j3")
ACTION_NAMES = ("j3", "j1", "j2")  # another order: the import pairs them by name
TOP, WRIST = "observation.images.top", "observation.images.wrist"


def _level(episode: int, frame: int) -> int:
    """Gray level coding a frame: 12 apart within an episode, far above coding noise."""
    return 30 + 40 * episode + 12 * frame


def _top_frame(episode: int, frame: int) -> np.ndarray:
    ramp = np.linspace(-6, 6, 32)[None, :, None]
    return np.clip(_level(episode, frame) + ramp + np.zeros((32, 32, 3)), 0, 255).astype(np.uint8)


def _wrist_frame(episode: int, frame: int) -> np.ndarray:
    return np.random.default_rng(100 * episode + frame).integers(0, 256, (32, 32, 3), np.uint8)


def _state(episode: int) -> np.ndarray:
    return np.random.default_rng(episode).normal(size=(LENGTHS[episode], 3)).astype(np.float32)


def _action(episode: int) -> np.ndarray:
    """True action in STATE_NAMES order."""
    return _state(episode) + np.float32(0.25)


def _write_video(path: Path, frames: list[np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"crf": "18", "g": "2"})
        stream.height, stream.width, stream.pix_fmt = 32, 32, "yuv420p"
        for k, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = k, Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _vectors(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float32()), 3)


def _write_lerobot(root: Path) -> None:
    """A LeRobot v3.0 folder: episodes 0-1 in data/video/meta file 0, episode 2 in file 1."""
    files = ((0, 1), (2,))
    features = {
        "observation.state": {"dtype": "float32", "shape": [3], "names": list(STATE_NAMES)},
        "action": {"dtype": "float32", "shape": [3], "names": list(ACTION_NAMES)},
        TOP: {"dtype": "video", "shape": [32, 32, 3], "names": ["height", "width", "channels"],
              "info": {"video.fps": FPS, "video.codec": "h264", "video.pix_fmt": "yuv420p"}},
        WRIST: {"dtype": "image", "shape": [32, 32, 3], "names": ["height", "width", "channels"]},
        **{k: {"dtype": d, "shape": [1], "names": None} for k, d in (
            ("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
            ("index", "int64"), ("task_index", "int64"))},
    }
    info = {"codebase_version": "v3.0", "robot_type": "so100", "total_episodes": 3,
            "total_frames": sum(LENGTHS), "total_tasks": 2, "chunks_size": 1000,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 500, "fps": FPS,
            "splits": {"train": "0:3"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": features}
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    pandas = {"index_columns": ["__index_level_0__"], "columns": [
        {"name": "task_index", "field_name": "task_index"},
        {"name": None, "field_name": "__index_level_0__"}]}
    tasks = pa.table({"task_index": [0, 1], "__index_level_0__": list(TASKS)})
    pq.write_table(tasks.replace_schema_metadata({"pandas": json.dumps(pandas)}),
                   root / "meta" / "tasks.parquet")
    start = 0
    for file, episodes in enumerate(files):
        rows, meta, video, offset = [], [], [], 0
        for e in episodes:
            n = LENGTHS[e]
            wrist = [{"bytes": cv2.imencode(".png", cv2.cvtColor(_wrist_frame(e, k),
                                                                 cv2.COLOR_RGB2BGR))[1].tobytes(),
                      "path": f"frame_{k:06d}.png"} for k in range(n)]
            rows.append(pa.table({
                "observation.state": _vectors(_state(e)),
                "action": _vectors(_action(e)[:, [STATE_NAMES.index(a) for a in ACTION_NAMES]]),
                "timestamp": pa.array(np.arange(n, dtype=np.float32) / FPS),
                "frame_index": pa.array(np.arange(n)), "episode_index": pa.array(np.full(n, e)),
                "index": pa.array(start + np.arange(n)),
                "task_index": pa.array(np.full(n, EPISODE_TASKS[e])),
                WRIST: pa.array(wrist, pa.struct([("bytes", pa.binary()),
                                                  ("path", pa.string())])),
            }))
            meta.append({"episode_index": e, "tasks": [TASKS[EPISODE_TASKS[e]]], "length": n,
                         "data/chunk_index": 0, "data/file_index": file,
                         "dataset_from_index": start, "dataset_to_index": start + n,
                         f"videos/{TOP}/chunk_index": 0, f"videos/{TOP}/file_index": file,
                         f"videos/{TOP}/from_timestamp": offset / FPS,
                         f"videos/{TOP}/to_timestamp": (offset + n) / FPS,
                         "meta/episodes/chunk_index": 0, "meta/episodes/file_index": file})
            video += [_top_frame(e, k) for k in range(n)]
            start, offset = start + n, offset + n
        name = f"chunk-000/file-{file:03d}"
        (root / "data" / "chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(rows), root / "data" / f"{name}.parquet")
        (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(meta), root / "meta" / "episodes" / f"{name}.parquet")
        _write_video(root / "videos" / TOP / f"{name}.mp4", video)


@pytest.fixture(scope="module")
def lerobot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lerobot") / "so100_pick"
    _write_lerobot(root)
    return root


def _frame_levels(frames: np.ndarray) -> list[int]:
    return [round(float(f.mean())) for f in frames]


def test_import_reads_a_lerobot_v3_folder(lerobot_dir: Path, tmp_path: Path) -> None:
    """Episodes spread over two data, video and meta files come back whole: state exact,
    action columns matched to the state's joint names, instruction from tasks.parquet, each
    row's video frame found by from_timestamp + timestamp, parquet images exact; stats over
    the train split only (frames kept as PNG so the parquet images can be compared exactly)."""
    dataset = import_lerobot(lerobot_dir, tmp_path / "ds", val_fraction=0.34, frame_codec="png",
                             progress=False)
    assert len(dataset.episodes) == 3 and dataset.profile == "so100"
    assert dataset.joint_names == STATE_NAMES and dataset.camera_topics == (TOP, WRIST)
    assert dataset.fps == FPS and dataset.control_rate_hz == FPS
    for e, n in enumerate(LENGTHS):
        episode = dataset.load_episode(e)
        assert episode.length == n and episode.instruction == TASKS[EPISODE_TASKS[e]]
        np.testing.assert_array_equal(episode.state, _state(e))
        np.testing.assert_array_equal(episode.action, _action(e))
        np.testing.assert_allclose(episode.control_times, np.arange(n) / FPS)
        top, wrist = episode.frames
        levels = _frame_levels(top)
        assert all(abs(got - _level(e, k)) <= 3 for k, got in enumerate(levels)), levels
        np.testing.assert_array_equal(wrist, np.stack([_wrist_frame(e, k) for k in range(n)]))
    train = dataset.split("train")
    assert len(train) == 2
    expected = Normalizer.fit(np.concatenate([_state(e) for e in train]))
    np.testing.assert_allclose(dataset.state_stats.mean, expected.mean, rtol=1e-6)
    document = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert document["imported_from"]["codebase_version"] == "v3.0"


def test_import_frame_grid_and_camera_choice(lerobot_dir: Path, tmp_path: Path) -> None:
    """fps 5 from a 10 fps dataset: frames at k/5 s are rows 0, 2, 4, ... of the chosen
    camera, while state and action keep every row at the 10 Hz control rate."""
    dataset = import_lerobot(lerobot_dir, tmp_path / "ds", ImportOptions(cameras=(TOP,), fps=5),
                             progress=False)
    assert dataset.camera_topics == (TOP,) and dataset.fps == 5 and dataset.control_rate_hz == 10
    episode = dataset.load_episode(1)  # 9 rows: 0.8 s, frames at 0, 0.2, ..., 0.8 s
    (top,) = episode.frames
    assert episode.length == 9 and len(top) == 5
    np.testing.assert_allclose(episode.frame_times, np.arange(5) / 5)
    assert all(abs(got - _level(1, 2 * k)) <= 3 for k, got in enumerate(_frame_levels(top)))


def _set_info(root: Path, **changes: object) -> None:
    path = root / "meta" / "info.json"
    info = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            info.pop(key)
        else:
            info[key] = value
    path.write_text(json.dumps(info))


def _drop_names(root: Path) -> None:
    info = json.loads((root / "meta" / "info.json").read_text())
    for key in ("observation.state", "action"):
        info["features"][key]["names"] = None
    (root / "meta" / "info.json").write_text(json.dumps(info))


def _shift_last_episode(root: Path) -> None:
    """Episode 2 said to start 5 s into its video file, past its end."""
    path = root / "meta" / "episodes" / "chunk-000" / "file-001.parquet"
    rows = pq.read_table(path).to_pylist()
    rows[0][f"videos/{TOP}/from_timestamp"] += 5.0
    pq.write_table(pa.Table.from_pylist(rows), path)


BROKEN: dict[str, tuple[Callable[[Path], None], ImportOptions, str]] = {
    "v2.1": (lambda r: _set_info(r, codebase_version="v2.1"), ImportOptions(),
             r"info.json: codebase_version 'v2.1' is not 'v3.0' \(convert it"),
    "no info": (lambda r: (r / "meta" / "info.json").unlink(), ImportOptions(),
                "no meta/info.json; not a LeRobot dataset"),
    "no fps": (lambda r: _set_info(r, fps=None), ImportOptions(),
               "info.json: incomplete or malformed: KeyError: 'fps'"),
    "no video": (lambda r: (r / "videos" / TOP / "chunk-000" / "file-001.mp4").unlink(),
                 ImportOptions(), "file-001.mp4: video file missing"),
    "no tasks": (lambda r: (r / "meta" / "tasks.parquet").unlink(), ImportOptions(),
                 "tasks.parquet: file missing"),
    "state key": (lambda r: None, ImportOptions(state_key="observation.joints"),
                  r"no state feature 'observation.joints'; the features are \['action', "),
    "camera": (lambda r: None, ImportOptions(cameras=("observation.images.side",)),
               r"no image or video feature 'observation.images.side'; the cameras are "
               r"\['observation.images.top', 'observation.images.wrist'\]"),
    "no names": (_drop_names, ImportOptions(),
                 "info.json: 0 joint names in 'observation.state' for 3 values; give the 3"),
    "names count": (lambda r: None, ImportOptions(joint_names=("a", "b")),
                    "info.json: 2 joint names given for 3 values"),
    "video span": (_shift_last_episode, ImportOptions(),
                   r"file-001.mp4: no frame within 50.0 ms of 5.000 s"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_import_errors_name_the_file_and_what_is_wrong(lerobot_dir: Path, tmp_path: Path,
                                                       case: str) -> None:
    """Wrong version, missing files, unknown feature keys (listing those there are), missing
    joint names and a video span outside its file fail with a LeRobotError (a ValueError)
    naming the file; nothing is written."""
    root = tmp_path / "broken"
    shutil.copytree(lerobot_dir, root)
    breaking, options, message = BROKEN[case]
    breaking(root)
    with pytest.raises(LeRobotError, match=message) as error:
        import_lerobot(root, tmp_path / "ds", options, progress=False)
    assert isinstance(error.value, ValueError)
    assert not (tmp_path / "ds").exists()


def _ours(root: Path, codec_fps: float = 5.0, rate: float = 10.0) -> Path:
    """Our dataset: 3 episodes, one 32x32 camera at `codec_fps`, control at `rate`."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    episodes = []
    for e, n in enumerate((8, 12, 9)):
        frame_times = np.arange(int((n - 1) / rate * codec_fps + 1e-9) + 1) / codec_fps
        frames = np.stack([np.stack([np.sin(2 * xx + k * 0.3 + e), np.cos(3 * yy - k * 0.2),
                                     np.sin(xx + yy + 0.1 * k)], -1) * 90 + 128
                           for k in range(len(frame_times))]).astype(np.uint8)
        episodes.append(Episode(
            source=f"/bags/demo_{e}", instruction=("stack the cubes", "wipe")[e % 2],
            instruction_source="flag", action_source="commands",
            joint_names=("shoulder", "elbow", "wrist"), camera_topics=("/wrist/image_raw",),
            fps=codec_fps, control_rate_hz=rate, start_ns=0, frame_times=frame_times,
            frames=(frames,), control_times=np.arange(n) / rate,
            state=rng.normal(size=(n, 3)).astype(np.float32),
            action=rng.normal(size=(n, 3)).astype(np.float32)))
    write_dataset(episodes, len(episodes), root, profile="ur5e")
    return root


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


@pytest.mark.parametrize("codec,file_mb", [("av1", 100.0), ("h264", 1e-6)],
                         ids=["av1-one-file", "h264-file-per-episode"])
def test_export_then_import_round_trip(tmp_path: Path, codec: str, file_mb: float) -> None:
    """Export writes the v3.0 layout (info.json features/shapes/names/fps, tasks, episodes
    with video spans, stats.json over all rows), a row per control step with the newest frame
    not later than it; importing it back at the original frame rate gives the same episodes:
    state and action exact, instructions, lengths, frames above 30 dB PSNR. Tiny file sizes
    roll data and video over to one file per episode."""
    ours = load_dataset(_ours(tmp_path / "ours"))
    options = ExportOptions(codec=codec, data_file_mb=file_mb,  # type: ignore[arg-type]
                            video_file_mb=file_mb)
    info = export_lerobot(ours.root, tmp_path / "lerobot", options, progress=False)
    key = "observation.images.wrist_image_raw"
    assert info.fps == 10 and info.robot_type == "ur5e" and info.camera_keys == (key,)
    assert info.features["observation.state"]["names"] == ["shoulder", "elbow", "wrist"]
    assert info.features[key]["shape"] == [32, 32, 3]
    assert info.features[key]["info"]["video.codec"] == codec
    lengths = [e.length for e in ours.episodes]
    states = np.concatenate([ours.load_episode(i).state for i in range(3)])
    stats = json.loads((tmp_path / "lerobot" / "meta" / "stats.json").read_text())
    for name, value in (("mean", states.mean(0)), ("std", states.std(0)),
                        ("min", states.min(0)), ("max", states.max(0))):
        np.testing.assert_allclose(stats["observation.state"][name], value, rtol=1e-5)
    assert np.array(stats[key]["mean"]).shape == (3, 1, 1)
    files = 3 if file_mb < 1 else 1
    assert len(list((tmp_path / "lerobot" / "data").glob("chunk-000/*.parquet"))) == files
    assert len(list((tmp_path / "lerobot" / "videos" / key).glob("chunk-000/*.mp4"))) == files
    data = pa.concat_tables(pq.read_table(p) for p in
                            sorted((tmp_path / "lerobot" / "data").glob("*/*.parquet")))
    assert data["index"].to_pylist() == list(range(sum(lengths)))

    back = import_lerobot(tmp_path / "lerobot", tmp_path / "back", ImportOptions(fps=5),
                          progress=False)
    assert [e.length for e in back.episodes] == lengths
    assert back.joint_names == ours.joint_names and back.control_rate_hz == 10
    for i in range(3):
        a, b = ours.load_episode(i), back.load_episode(i)
        np.testing.assert_array_equal(b.state, a.state)
        np.testing.assert_array_equal(b.action, a.action)
        assert b.instruction == a.instruction
        assert b.frames[0].shape == a.frames[0].shape
        assert _psnr(b.frames[0], a.frames[0]) > 30


def test_export_refuses_an_fps_lerobot_cannot_hold(tmp_path: Path) -> None:
    """LeRobot rows need an integer fps dividing the control rate; an existing folder that is
    not a LeRobot dataset is never replaced."""
    ours = _ours(tmp_path / "ours")
    with pytest.raises(LeRobotError, match="export fps 3: LeRobot needs an integer fps"):
        export_lerobot(ours, tmp_path / "lr", ExportOptions(fps=3), progress=False)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep")
    with pytest.raises(LeRobotError, match="not a LeRobot dataset"):
        export_lerobot(ours, tmp_path / "notes", progress=False)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep"


def _cli(*argv: object) -> int:
    parser = argparse.ArgumentParser(prog="vam")
    add_dataset_commands(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def test_cli_import_and_export_lerobot(lerobot_dir: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`dataset import-lerobot` (one camera, own joint names, 5 fps) then `export-lerobot`
    (robot type, H.264) end to end; a bad source exits 1 with one line naming it."""
    assert _cli("dataset", "import-lerobot", "--src", lerobot_dir, "--out", tmp_path / "ds",
                "--camera", TOP, "--joint-names", "a", "b", "c", "--fps", "5") == 0
    out = capsys.readouterr().out
    assert "joints: a, b, c" in out and "fps 5, control rate 10 Hz" in out
    assert out.count("'pick up the cube'") == 2
    np.testing.assert_array_equal(load_dataset(tmp_path / "ds").load_episode(2).action,
                                  _action(2))  # renamed joints still pair actions by name
    assert _cli("dataset", "export-lerobot", "--dataset", tmp_path / "ds", "--out",
                tmp_path / "lr", "--robot-type", "so100_follower", "--video-codec",
                "h264") == 0
    assert "3 episodes at 10 fps, robot_type 'so100_follower'" in capsys.readouterr().out
    info = read_info(tmp_path / "lr")
    assert info.features["action"]["names"] == ["a", "b", "c"]
    assert _cli("dataset", "import-lerobot", "--src", tmp_path / "nowhere", "--out",
                tmp_path / "x") == 1
    assert "nowhere: no such folder" in capsys.readouterr().err
