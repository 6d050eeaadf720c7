"""LeRobot v3.0 datasets read from disk without the `lerobot` package: layout and import.

A LeRobot v3.0 dataset folder (`meta/info.json` says codebase_version "v3.0"):

    meta/info.json          fps, features {key: dtype, shape, names}, data_path, video_path
    meta/tasks.parquet      task strings (pandas index column "task") -> task_index
    meta/stats.json         per feature: mean, std, min, max, count (all episodes)
    meta/episodes/chunk-*/file-*.parquet
                            one row per episode: episode_index, tasks, length, where its rows
                            are (data/chunk_index, data/file_index, dataset_from_index,
                            dataset_to_index) and, per video feature, its file
                            (videos/<key>/chunk_index, file_index) and span in it
                            (videos/<key>/from_timestamp, to_timestamp), stats/<key>/<stat>
    data/chunk-*/file-*.parquet
                            one row per frame: index, episode_index, frame_index, timestamp,
                            task_index, observation.state, action, ... and image features as
                            {bytes, path} structs (PNG or JPEG bytes)
    videos/<key>/chunk-*/file-*.mp4
                            one video per feature and file, several episodes back to back

`import_lerobot` turns one into our episodes dataset (`dataset.write_dataset`): a LeRobot row
is one control step (control rate = the dataset's fps; state and action copied as float32);
the frame grid at `fps` (default the dataset's) takes the newest row not later than each grid
time; the instruction is the task of the episode's first row. A video frame is looked up by
time, the episode's from_timestamp + the row's timestamp, as LeRobot does, and must lie within
half a frame period of it. Not read: v2.x layouts, meta/stats.json (stats are recomputed over
our train split), subtasks, depth maps, features other than state, action and cameras.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from vam_policy.data.dataset import Dataset, DatasetError, FrameCodec, write_dataset
from vam_policy.data.episodes import Episode

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE + ".parquet"
CHUNKS_SIZE = 1000  # files per chunk folder
CAMERA_DTYPES = ("video", "image")
ROW_COLUMNS = ("episode_index", "frame_index", "timestamp", "task_index")


class LeRobotError(DatasetError):
    """A LeRobot dataset folder is missing a file or column, or is of another version."""


@dataclass(frozen=True)
class LeRobotInfo:
    """meta/info.json of a LeRobot v3.0 dataset."""

    root: Path
    fps: float
    robot_type: str | None
    features: Mapping[str, Mapping[str, Any]]
    data_path: str
    video_path: str | None
    total_episodes: int

    @property
    def camera_keys(self) -> tuple[str, ...]:
        """Image and video features, in info.json order."""
        return tuple(k for k, f in self.features.items() if f["dtype"] in CAMERA_DTYPES)

    def missing(self, key: str, what: str) -> LeRobotError:
        """The error for a feature that is not there, listing those that are."""
        return LeRobotError(f"{self.root / INFO_PATH}: no {what} feature {key!r}; the "
                            f"features are {sorted(self.features)}")


@dataclass(frozen=True)
class VideoSpan:
    """Where one episode of one video feature is: file, and its start and end in s."""

    path: Path
    from_s: float
    to_s: float


@dataclass(frozen=True)
class LeRobotEpisode:
    """One row of meta/episodes: the episode's length and where its rows and frames are."""

    index: int
    length: int
    data_file: Path
    videos: Mapping[str, VideoSpan]


@dataclass(frozen=True)
class ImportOptions:
    """What to take from a LeRobot dataset.

    cameras: image or video feature keys, in the order to keep; empty takes them all.
    state_key, action_key: float features of shape [J] read as state and action.
    joint_names: the J names; empty takes the state feature's `names` (the action's are
        matched to them by name when both have names).
    fps: rate of the frame grid; None takes the dataset's fps.
    """

    cameras: tuple[str, ...] = ()
    state_key: str = "observation.state"
    action_key: str = "action"
    joint_names: tuple[str, ...] = ()
    fps: float | None = None

    def __post_init__(self) -> None:
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be positive, got {self.fps}")


@dataclass(frozen=True)
class _Plan:
    """ImportOptions checked against info.json."""

    cameras: tuple[str, ...]
    joint_names: tuple[str, ...]
    action_order: tuple[int, ...]  # action column of each joint
    fps: float


def read_info(root: str | Path) -> LeRobotInfo:
    """Read and check meta/info.json of the LeRobot dataset folder `root`."""
    root = Path(root)
    path = root / INFO_PATH
    if not root.is_dir():
        raise LeRobotError(f"LeRobot dataset {root}: no such folder")
    if not path.is_file():
        raise LeRobotError(f"LeRobot dataset {root}: no {INFO_PATH}; not a LeRobot dataset")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LeRobotError(f"{path}: not valid JSON: {error}") from error
    version = info.get("codebase_version") if isinstance(info, dict) else None
    if version != CODEBASE_VERSION:
        hint = (" (convert it with lerobot's convert_dataset_v21_to_v30 first)"
                if str(version).startswith("v2") else "")
        raise LeRobotError(f"{path}: codebase_version {version!r} is not "
                           f"{CODEBASE_VERSION!r}{hint}")
    try:
        features = {str(k): dict(v) for k, v in info["features"].items()}
        for feature in features.values():
            feature["dtype"], feature["shape"] = str(feature["dtype"]), list(feature["shape"])
        parsed = LeRobotInfo(
            root=root, fps=float(info["fps"]), robot_type=info.get("robot_type"),
            features=features, data_path=str(info["data_path"]),
            video_path=info.get("video_path"), total_episodes=int(info["total_episodes"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise LeRobotError(f"{path}: incomplete or malformed: {type(error).__name__}: {error}"
                           ) from error
    if not (math.isfinite(parsed.fps) and parsed.fps > 0):
        raise LeRobotError(f"{path}: fps {parsed.fps} is not positive")
    return parsed


def read_table(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """A parquet file's `columns` (all when None); LeRobotError naming what is missing."""
    if not path.is_file():
        raise LeRobotError(f"{path}: file missing")
    try:
        names = pq.read_schema(path).names
        missing = [c for c in columns or () if c not in names]
        if missing:
            kept = [n for n in names if not n.startswith("stats/")]
            raise LeRobotError(f"{path}: no column {missing}; it has {kept}")
        return pq.read_table(path, columns=list(columns) if columns else None)
    except (OSError, pa.ArrowException) as error:
        raise LeRobotError(f"{path}: not a readable parquet file: {error}") from error


def read_tasks(root: Path) -> dict[int, str]:
    """task_index -> task from meta/tasks.parquet (the task is pandas' index column)."""
    path = root / TASKS_PATH
    table = read_table(path)
    meta = table.schema.pandas_metadata or {}
    index = [c for c in meta.get("index_columns", []) if isinstance(c, str)]
    column = "task" if "task" in table.column_names else (index[0] if index else None)
    if "task_index" not in table.column_names or column not in table.column_names:
        raise LeRobotError(f"{path}: needs columns task_index and task (or a pandas index "
                           f"of tasks); it has {table.column_names}")
    return dict(zip(table["task_index"].to_pylist(), map(str, table[column].to_pylist()),
                    strict=True))


def read_episodes(info: LeRobotInfo, video_keys: Sequence[str]) -> tuple[LeRobotEpisode, ...]:
    """Every episode's row of meta/episodes, by episode_index."""
    files = sorted((info.root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
    if not files:
        raise LeRobotError(f"LeRobot dataset {info.root}: no "
                           f"{EPISODES_DIR}/chunk-*/file-*.parquet")
    video = [f"videos/{k}/{c}" for k in video_keys
             for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
    columns = ["episode_index", "length", "data/chunk_index", "data/file_index", *video]
    episodes = []
    for file in files:
        for row in read_table(file, columns).to_pylist():
            try:
                episodes.append(_episode_row(info, row, video_keys))
            except (TypeError, ValueError) as error:
                raise LeRobotError(f"{file}: episode {row['episode_index']}: a null or "
                                   f"malformed cell: {error}") from error
    episodes.sort(key=lambda e: e.index)
    indices = [e.index for e in episodes]
    if len(set(indices)) != len(indices) or len(indices) != info.total_episodes:
        raise LeRobotError(f"LeRobot dataset {info.root}: {EPISODES_DIR} lists episodes "
                           f"{indices}, info.json says total_episodes {info.total_episodes}")
    return tuple(episodes)


def _episode_row(info: LeRobotInfo, row: Mapping[str, Any],
                 video_keys: Sequence[str]) -> LeRobotEpisode:
    spans = {k: VideoSpan(
        info.root / str(info.video_path).format(video_key=k,
                                                chunk_index=int(row[f"videos/{k}/chunk_index"]),
                                                file_index=int(row[f"videos/{k}/file_index"])),
        float(row[f"videos/{k}/from_timestamp"]), float(row[f"videos/{k}/to_timestamp"]),
    ) for k in video_keys}
    data_file = info.root / info.data_path.format(chunk_index=int(row["data/chunk_index"]),
                                                  file_index=int(row["data/file_index"]))
    return LeRobotEpisode(int(row["episode_index"]), int(row["length"]), data_file, spans)


def _names(feature: Mapping[str, Any]) -> tuple[str, ...] | None:
    """A vector feature's names: a list, or a dict holding one list ({"motors": [...]})."""
    names = feature.get("names")
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return tuple(names)
    return None


def _vector_size(info: LeRobotInfo, key: str, what: str) -> int:
    if key not in info.features:
        raise info.missing(key, what)
    feature = info.features[key]
    if len(feature["shape"]) != 1 or feature["dtype"] not in ("float32", "float64"):
        raise LeRobotError(f"{info.root / INFO_PATH}: {what} feature {key!r} is "
                           f"{feature['dtype']} {feature['shape']}, not a float vector")
    return int(feature["shape"][0])


def _plan(info: LeRobotInfo, options: ImportOptions) -> _Plan:
    """Check the options against info.json: cameras, joint names, action column order."""
    joints = _vector_size(info, options.state_key, "state")
    if _vector_size(info, options.action_key, "action") != joints:
        raise LeRobotError(f"{info.root / INFO_PATH}: {options.action_key!r} has "
                           f"{info.features[options.action_key]['shape']} values, "
                           f"{options.state_key!r} {joints}; state and action must pair up")
    cameras = options.cameras or info.camera_keys
    for key in cameras:
        if key not in info.features or info.features[key]["dtype"] not in CAMERA_DTYPES:
            raise LeRobotError(f"{info.root / INFO_PATH}: no image or video feature {key!r}; "
                               f"the cameras are {list(info.camera_keys)}")
    if not cameras:
        raise LeRobotError(f"{info.root / INFO_PATH}: no image or video feature; a VAM "
                           "dataset needs at least one camera")
    if any(info.features[k]["dtype"] == "video" for k in cameras) and not info.video_path:
        raise LeRobotError(f"{info.root / INFO_PATH}: video features but no video_path")
    state_names = _names(info.features[options.state_key])
    action_names = _names(info.features[options.action_key])
    names = tuple(options.joint_names) or state_names
    if names is None or len(names) != joints:
        given = "given" if options.joint_names else f"in {options.state_key!r}"
        raise LeRobotError(f"{info.root / INFO_PATH}: {len(names or ())} joint names {given} "
                           f"for {joints} values; give the {joints} joint names (--joint-names)")
    order = tuple(range(joints))
    if state_names and action_names and len(set(state_names)) == joints and (
            sorted(action_names) == sorted(state_names)):
        order = tuple(action_names.index(n) for n in state_names)
    elif action_names and action_names != state_names and not options.joint_names:
        raise LeRobotError(
            f"{info.root / INFO_PATH}: action names {list(action_names)} are not the state "
            f"names {list(state_names or ())}; give --joint-names to pair them by position")
    return _Plan(tuple(cameras), names, order, options.fps or info.fps)


class _EpisodeReader:
    """Loads episodes one at a time; keeps the last data file read (episodes share files)."""

    def __init__(self, info: LeRobotInfo, plan: _Plan, options: ImportOptions,
                 tasks: Mapping[int, str]) -> None:
        self._info, self._plan, self._tasks = info, plan, tasks
        self._keys = (options.state_key, options.action_key)
        images = [k for k in plan.cameras if info.features[k]["dtype"] == "image"]
        self._columns = [*ROW_COLUMNS, *self._keys, *images]
        self._cached: tuple[Path, pa.Table] | None = None

    def _rows(self, episode: LeRobotEpisode) -> pa.Table:
        if self._cached is None or self._cached[0] != episode.data_file:
            self._cached = (episode.data_file, read_table(episode.data_file, self._columns))
        table = self._cached[1]
        rows = table.filter(pc.equal(table["episode_index"], episode.index))
        return rows.sort_by("frame_index")

    def load(self, episode: LeRobotEpisode) -> Episode:
        info, plan, path = self._info, self._plan, episode.data_file
        rows = self._rows(episode)
        n = rows.num_rows
        if n != episode.length or n < 2:
            raise LeRobotError(f"{path}: episode {episode.index} has {n} rows, meta/episodes "
                               f"says {episode.length} (two or more are needed)")
        if not np.array_equal(rows["frame_index"].to_numpy(), np.arange(n)):
            raise LeRobotError(f"{path}: episode {episode.index}: frame_index is not 0..{n - 1}")
        state = _matrix(rows, self._keys[0], len(plan.joint_names), path)
        action = _matrix(rows, self._keys[1], len(plan.joint_names), path)[:, plan.action_order]
        task = rows["task_index"][0].as_py()
        notes = []
        if task not in self._tasks:
            raise LeRobotError(f"{info.root / TASKS_PATH}: no task_index {task} "
                               f"(episode {episode.index})")
        if len(set(rows["task_index"].to_pylist())) > 1:
            notes.append("several tasks in the episode; the first row's is used")
        frame_count = math.floor((n - 1) / info.fps * plan.fps + 1e-9) + 1
        frame_times = np.arange(frame_count) / plan.fps
        picks = np.minimum(np.floor(frame_times * info.fps + 1e-9).astype(np.int64), n - 1)
        stamps = rows["timestamp"].to_numpy().astype(np.float64)[picks]
        frames = []
        for key in plan.cameras:
            if info.features[key]["dtype"] == "video":
                span = episode.videos[key]
                frames.append(decode_video(span.path, span.from_s + stamps, info.fps))
            else:
                frames.append(_decode_images(rows[key].take(picks).to_pylist(), key, path))
        return Episode(
            source=f"{info.root.resolve()}#episode_index={episode.index}",
            instruction=self._tasks[task], instruction_source="file",
            action_source="commands", joint_names=plan.joint_names, camera_topics=plan.cameras,
            fps=plan.fps, control_rate_hz=info.fps, start_ns=0, frame_times=frame_times,
            frames=tuple(frames), control_times=np.arange(n) / info.fps, state=state,
            action=action, notes=tuple(notes),
        )


def _matrix(rows: pa.Table, key: str, joints: int, path: Path) -> np.ndarray:
    """A list-of-floats column as float32 [rows, joints]."""
    column = rows[key].combine_chunks()
    if not (pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type)
            or pa.types.is_large_list(column.type)) or column.null_count:
        raise LeRobotError(f"{path}: column {key!r} is {column.type} with {column.null_count} "
                           f"nulls, not lists of {joints} floats")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if np.any(lengths != joints):
        raise LeRobotError(f"{path}: column {key!r} has rows of {sorted(set(lengths))} values, "
                           f"not {joints}")
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.astype(np.float32).reshape(len(rows), joints)


def _decode_images(cells: list[Any], key: str, path: Path) -> np.ndarray:
    """Image cells ({bytes, path} structs of PNG/JPEG) as uint8 RGB [N, H, W, 3]."""
    frames = []
    for k, cell in enumerate(cells):
        data = cell.get("bytes") if isinstance(cell, dict) else None
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
        if bgr is None:
            raise LeRobotError(f"{path}: {key!r}: picked row {k} holds no decodable image bytes")
        if frames and bgr.shape != frames[0].shape:
            raise LeRobotError(f"{path}: {key!r}: images of sizes {bgr.shape[:2]} and "
                               f"{frames[0].shape[:2]} in one episode")
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return np.stack(frames)


def decode_video(path: Path, times: np.ndarray, fps: float) -> np.ndarray:
    """uint8 RGB frames [len(times), H, W, 3]: the frame nearest each time (s) of the video.

    Seeks to the keyframe before the first time and decodes up to the last; only frames
    within half a frame period of a wanted time are converted to RGB.
    """
    if not path.is_file():
        raise LeRobotError(f"{path}: video file missing")
    tolerance = 0.5 / fps
    wanted = np.sort(times)
    stamps: list[float] = []
    images: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if wanted[0] > tolerance and stream.time_base:
                container.seek(int((wanted[0] - tolerance) / stream.time_base), stream=stream)
            for frame in container.decode(stream):
                t = frame.time
                if t is None or t < wanted[0] - tolerance:
                    continue
                if t > wanted[-1] + tolerance:
                    break
                j = int(np.searchsorted(wanted, t))
                near = min(abs(wanted[i] - t) for i in (j - 1, j) if 0 <= i < len(wanted))
                if near < tolerance:
                    stamps.append(t)
                    images.append(frame.to_ndarray(format="rgb24"))
    except (av.FFmpegError, OSError, IndexError) as error:
        raise LeRobotError(f"{path}: cannot decode the video: {error}") from error
    out = []
    for t in times:
        best = int(np.argmin(np.abs(np.asarray(stamps) - t))) if stamps else -1
        if best < 0 or abs(stamps[best] - t) >= tolerance:
            span = f"{stamps[0]:.3f}..{stamps[-1]:.3f} s" if stamps else "none"
            raise LeRobotError(f"{path}: no frame within {tolerance * 1e3:.1f} ms of "
                               f"{t:.3f} s (frames found near the episode: {span})")
        out.append(images[best])
    return np.stack(out)


def import_lerobot(
    src: str | Path,
    out: str | Path,
    options: ImportOptions | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    frame_codec: FrameCodec = "jpeg",
    progress: bool = True,
) -> Dataset:
    """Convert the LeRobot v3.0 dataset `src` into our episodes dataset `out`, atomically.

    Episodes are decoded one at a time; splits and train-split stats as `build_dataset`.
    """
    options = options or ImportOptions()
    info = read_info(src)
    plan = _plan(info, options)
    videos = [k for k in plan.cameras if info.features[k]["dtype"] == "video"]
    episodes = read_episodes(info, videos)
    reader = _EpisodeReader(info, plan, options, read_tasks(info.root))
    loaded = (reader.load(e)
              for e in tqdm(episodes, desc="episodes", unit="ep", disable=not progress))
    provenance = {"imported_from": {
        "format": "lerobot", "codebase_version": CODEBASE_VERSION,
        "root": str(info.root.resolve()), "state_key": options.state_key,
        "action_key": options.action_key,
    }}
    return write_dataset(loaded, len(episodes), out, profile=info.robot_type or "lerobot",
                         val_fraction=val_fraction, seed=seed, frame_codec=frame_codec,
                         provenance=provenance)
