"""Our episodes dataset written as a LeRobot v3.0 folder (layout in `lerobot.py`).

One LeRobot row per control step, or per `stride`-th step when the export fps divides the
control rate (actions keep the meaning they had at the control rate); a row's frame is the
newest frame not later than its time, as the node would have seen it. Cameras become video
features `observation.images.<topic, '/' -> '_'>`, encoded with PyAV into one MP4 per camera
and file, episodes back to back: AV1 (libsvtav1 at LeRobot's defaults: crf 30, GOP 2,
yuv420p) or H.264 (libx264, crf 23, GOP 2). A camera whose frames change size between
episodes is resized to its first size. Files roll over at LeRobot's limits (100 MB of data,
500 MB of video, 1000 files a chunk). meta/stats.json and the per-episode stats columns hold
min/max/mean/std/count of every feature over all exported rows (LeRobot has no split; our
train-only stats stay with our dataset); images per channel in [0, 1] from up to 100 frames
an episode, as LeRobot samples them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from vam_policy.data.dataset import Dataset, load_dataset, replace_folder
from vam_policy.data.lerobot import (
    CHUNKS_SIZE,
    CODEBASE_VERSION,
    DATA_PATH,
    EPISODES_PATH,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_PATH,
    LeRobotError,
    LeRobotInfo,
    read_info,
)

VideoCodec = Literal["av1", "h264"]
VIDEO_CODECS: tuple[str, ...] = ("av1", "h264")
_ENCODERS: dict[str, tuple[str, dict[str, str]]] = {
    "av1": ("libsvtav1", {"crf": "30", "g": "2"}),
    "h264": ("libx264", {"crf": "23", "g": "2"}),
}
DATA_FILE_MB = 100
VIDEO_FILE_MB = 500
STATS_FRAMES = 100  # frames an episode sampled for image stats
STATS_PIXELS = 150  # longest side those frames are subsampled to

_log = logging.getLogger(__name__)
Stats = dict[str, np.ndarray]


def camera_key(topic: str) -> str:
    """The LeRobot feature of a camera topic: '/wrist/image_raw' -> 'observation.images.wrist_
    image_raw' (feature names may not hold '/')."""
    return "observation.images." + (re.sub(r"[^A-Za-z0-9_]+", "_", topic).strip("_") or "cam")


def _next_file(chunk: int, file: int) -> tuple[int, int]:
    """The file after (chunk, file); (0, -1) is before the first."""
    return (chunk + 1, 0) if file + 1 >= CHUNKS_SIZE else (chunk, file + 1)


class _DataFiles:
    """data/chunk-*/file-*.parquet, one row group an episode, rolling over at `max_mb`."""

    def __init__(self, root: Path, max_mb: float) -> None:
        self._root, self._max_bytes = root, max_mb * 2**20
        self._writer: pq.ParquetWriter | None = None
        self._written, self.chunk, self.file = 0, 0, -1

    def add(self, table: pa.Table) -> tuple[int, int]:
        """Append an episode's rows; (chunk, file) they went to."""
        if self._writer is not None and self._written >= self._max_bytes:
            self.close()
        if self._writer is None:
            self.chunk, self.file = _next_file(self.chunk, self.file)
            path = self._root / DATA_PATH.format(chunk_index=self.chunk, file_index=self.file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._writer, self._written = pq.ParquetWriter(path, table.schema), 0
        self._writer.write_table(table)
        self._written += table.nbytes
        return self.chunk, self.file

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _VideoFiles:
    """videos/<key>/chunk-*/file-*.mp4 of one camera, episodes back to back."""

    def __init__(self, root: Path, key: str, fps: int, codec: VideoCodec, max_mb: float) -> None:
        self._root, self._key, self._fps, self._codec = root, key, fps, codec
        self._max_bytes = max_mb * 2**20
        self._container: Any = None
        self._stream: Any = None
        self._frames, self._bytes, self.chunk, self.file = 0, 0, 0, -1
        self.size: tuple[int, int] | None = None  # (height, width) of the feature

    def add(self, frames: np.ndarray) -> tuple[int, int, float, float]:
        """Encode an episode's frames; (chunk, file, from s, to s) of it."""
        if self.size is None:
            self.size = frames.shape[1:3]
            if self.size[0] % 2 or self.size[1] % 2:
                raise LeRobotError(f"camera {self._key}: {self.size[1]}x{self.size[0]} frames; "
                                   "yuv420p video needs even sizes")
        if frames.shape[1:3] != self.size:
            _log.warning("camera %s: resizing %s frames to %s", self._key, frames.shape[1:3],
                         self.size)
            frames = np.stack([cv2.resize(f, self.size[::-1], interpolation=cv2.INTER_AREA)
                               for f in frames])
        if self._container is not None and self._bytes >= self._max_bytes:
            self.close()
        if self._container is None:
            self._open()
        start = self._frames
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = self._frames, Fraction(1, self._fps)
            packets = self._stream.encode(frame)
            self._container.mux(packets)
            self._bytes += sum(p.size for p in packets)
            self._frames += 1
        return self.chunk, self.file, start / self._fps, self._frames / self._fps

    def _open(self) -> None:
        self.chunk, self.file = _next_file(self.chunk, self.file)
        path = self._root / VIDEO_PATH.format(video_key=self._key, chunk_index=self.chunk,
                                              file_index=self.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        encoder, options = _ENCODERS[self._codec]
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its settings banner otherwise
        self._container = av.open(str(path), "w")
        self._stream = self._container.add_stream(encoder, rate=self._fps, options=options)
        self._stream.height, self._stream.width = self.size
        self._stream.pix_fmt = "yuv420p"
        self._frames = self._bytes = 0

    def close(self) -> None:
        if self._container is not None:
            self._container.mux(self._stream.encode(None))
            self._container.close()
            self._container = None

    def feature(self) -> dict[str, Any]:
        height, width = self.size or (0, 0)
        return {"dtype": "video", "shape": [height, width, 3],
                "names": ["height", "width", "channels"],
                "info": {"video.height": height, "video.width": width,
                         "video.codec": self._codec, "video.pix_fmt": "yuv420p",
                         "video.is_depth_map": False, "video.fps": self._fps,
                         "video.channels": 3, "has_audio": False}}


def _stats(values: np.ndarray) -> Stats:
    """min/max/mean/std/count over axis 0 of `values` [n, ...]."""
    values = values.astype(np.float64)
    return {"min": values.min(axis=0), "max": values.max(axis=0), "mean": values.mean(axis=0),
            "std": values.std(axis=0), "count": np.array([len(values)])}


def _image_stats(frames: np.ndarray) -> Stats:
    """Per channel, as [3, 1, 1] in [0, 1], over a sample of frames and pixels."""
    step = max(1, max(frames.shape[1:3]) // STATS_PIXELS)
    sample = frames[np.linspace(0, len(frames) - 1, min(len(frames), STATS_FRAMES)).astype(int)]
    pixels = sample[:, ::step, ::step].reshape(-1, 3) / 255.0
    stats = {k: v.reshape(3, 1, 1) for k, v in _stats(pixels).items() if k != "count"}
    return {**stats, "count": np.array([len(sample)])}


def _aggregate(parts: Sequence[Stats]) -> Stats:
    """Stats of the union from those of the parts (pooled variance, as LeRobot does)."""
    counts = np.array([float(p["count"][0]) for p in parts])
    weights = counts / counts.sum()
    mean = sum(w * p["mean"] for w, p in zip(weights, parts, strict=True))
    var = sum(w * (p["std"] ** 2 + (p["mean"] - mean) ** 2)
              for w, p in zip(weights, parts, strict=True))
    return {"min": np.min([p["min"] for p in parts], axis=0),
            "max": np.max([p["max"] for p in parts], axis=0),
            "mean": mean, "std": np.sqrt(var), "count": np.array([int(counts.sum())])}


def _vector_column(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float32()),
                                             values.shape[1])


def _write_tasks(path: Path, tasks: Mapping[str, int]) -> None:
    """tasks.parquet as pandas writes a frame indexed by "task" (LeRobot reads it so)."""
    table = pa.table({"task_index": pa.array(list(tasks.values()), pa.int64()),
                      "task": pa.array(list(tasks), pa.string())})
    pandas = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                            "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode",
             "numpy_type": "object", "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__},
    }
    pq.write_table(table.replace_schema_metadata({"pandas": json.dumps(pandas)}), path)


def _json_stats(stats: Stats) -> dict[str, Any]:
    return {k: v.tolist() for k, v in stats.items()}


@dataclass(frozen=True)
class ExportOptions:
    """How our dataset is written as LeRobot.

    fps: rows per second, an integer dividing the control rate; None takes the control rate.
    robot_type: info.json's robot_type; None takes the dataset's profile name.
    codec: "av1" (LeRobot's default) or "h264".
    data_file_mb, video_file_mb: sizes at which data and video files roll over.
    """

    fps: float | None = None
    robot_type: str | None = None
    codec: VideoCodec = "av1"
    data_file_mb: float = DATA_FILE_MB
    video_file_mb: float = VIDEO_FILE_MB

    def __post_init__(self) -> None:
        if self.codec not in VIDEO_CODECS:
            raise ValueError(f"video codec must be one of {', '.join(VIDEO_CODECS)}, "
                             f"got {self.codec!r}")
        if not (self.data_file_mb > 0 and self.video_file_mb > 0):
            raise ValueError("file sizes must be positive")


def export_lerobot(
    dataset: str | Path,
    out: str | Path,
    options: ExportOptions | None = None,
    *,
    progress: bool = True,
) -> LeRobotInfo:
    """Write our dataset folder `dataset` as the LeRobot v3.0 folder `out`, atomically.

    A folder at `out` is replaced only when it is a LeRobot dataset (has meta/info.json).
    """
    options = options or ExportOptions()
    source = load_dataset(dataset)
    out = Path(out)
    rate = options.fps or source.control_rate_hz
    stride = source.control_rate_hz / rate
    if abs(rate - round(rate)) > 1e-9 or rate < 1 or abs(stride - round(stride)) > 1e-9:
        raise LeRobotError(f"export fps {rate:g}: LeRobot needs an integer fps that divides "
                           f"the control rate of {source.root} ({source.control_rate_hz:g} Hz)")
    keys = [camera_key(t) for t in source.camera_topics]
    if len(set(keys)) != len(keys):
        raise LeRobotError(f"cameras {source.camera_topics} do not give distinct feature names")
    if out.exists() and not (out / INFO_PATH).is_file() and (
            not out.is_dir() or any(out.iterdir())):
        raise LeRobotError(f"{out} exists and is not a LeRobot dataset (no {INFO_PATH}); "
                           "refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.exporting-", dir=out.parent))
    try:
        _export(source, tmp, keys, round(rate), round(stride), options, progress)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return read_info(out)


def _export(source: Dataset, root: Path, keys: Sequence[str], fps: int, stride: int,
            options: ExportOptions, progress: bool) -> None:
    """Stream the episodes of `source` into the LeRobot folder `root`."""
    data = _DataFiles(root, options.data_file_mb)
    videos = [_VideoFiles(root, k, fps, options.codec, options.video_file_mb) for k in keys]
    tasks: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    parts: dict[str, list[Stats]] = {}
    total = 0
    try:
        for i in tqdm(range(len(source.episodes)), desc="episodes", unit="ep",
                      disable=not progress):
            episode = source.load_episode(i)
            steps = np.arange(0, episode.length, stride)
            n = len(steps)
            task = tasks.setdefault(episode.instruction, len(tasks))
            columns = {
                "observation.state": episode.state[steps], "action": episode.action[steps],
                "timestamp": (np.arange(n) / fps).astype(np.float32),
                "frame_index": np.arange(n), "episode_index": np.full(n, i),
                "index": total + np.arange(n), "task_index": np.full(n, task),
            }
            table = pa.table({k: _vector_column(v) if v.ndim == 2 else pa.array(v)
                              for k, v in columns.items()})
            chunk, file = data.add(table)
            row: dict[str, Any] = {
                "episode_index": i, "tasks": [episode.instruction], "length": n,
                "data/chunk_index": chunk, "data/file_index": file,
                "dataset_from_index": total, "dataset_to_index": total + n,
            }
            picks = np.clip(np.searchsorted(episode.frame_times, episode.control_times[steps]
                                            + 1e-9, side="right") - 1, 0, None)
            stats = {k: _stats(v if v.ndim == 2 else v[:, None]) for k, v in columns.items()}
            for key, video, frames in zip(keys, videos, episode.frames, strict=True):
                chosen = frames[picks]
                span = video.add(chosen)
                row.update({f"videos/{key}/{name}": value for name, value in zip(
                    ("chunk_index", "file_index", "from_timestamp", "to_timestamp"), span,
                    strict=True)})
                stats[key] = _image_stats(chosen)
            for key, part in stats.items():
                parts.setdefault(key, []).append(part)
                row.update({f"stats/{key}/{k}": v.tolist() for k, v in part.items()})
            rows.append({**row, "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            total += n
    finally:
        data.close()
        for video in videos:
            video.close()
    episodes_file = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
    episodes_file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), episodes_file)
    _write_tasks(root / TASKS_PATH, tasks)
    stats_json = {k: _json_stats(_aggregate(v)) for k, v in parts.items()}
    (root / STATS_PATH).write_text(json.dumps(stats_json, indent=2) + "\n")
    joints = list(source.joint_names)
    vector = {"dtype": "float32", "shape": [len(joints)], "names": joints, "fps": fps}
    scalar = {"shape": [1], "names": None, "fps": fps}
    features = {
        "observation.state": vector, "action": vector,
        **{key: video.feature() for key, video in zip(keys, videos, strict=True)},
        "timestamp": {"dtype": "float32", **scalar},
        **{k: {"dtype": "int64", **scalar}
           for k in ("frame_index", "episode_index", "index", "task_index")},
    }
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": options.robot_type or source.profile or None,
        "total_episodes": len(rows), "total_frames": total, "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": options.data_file_mb,
        "video_files_size_in_mb": options.video_file_mb, "fps": fps,
        "splits": {"train": f"0:{len(rows)}"},
        "data_path": DATA_PATH, "video_path": VIDEO_PATH, "features": features,
    }
    (root / INFO_PATH).write_text(json.dumps(info, indent=4) + "\n")

