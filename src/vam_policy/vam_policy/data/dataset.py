"""The episodes dataset on disk: versioned, split by episode, with train-only statistics.

Layout of a dataset folder (format "vam-episodes", version 1):

    dataset.json          format, version, joints, cameras, fps, control rate, frame codec,
                          and per episode: file, source bag, length, instruction, split, notes
    stats.safetensors     state.mean/std and action.mean/std, float32 [J], train split only
    episodes/NNNNNN.npz   one per episode (np.savez, no pickles):
                            state, action        float32 [N, J]   (joint_names order)
                            control_times        float64 [N]      s since the episode start
                            frame_times          float64 [F]      s since the episode start
                            camera<c>_data       uint8 [bytes]    frames encoded one by one
                            camera<c>_offsets    int64 [F + 1]    frame k = data[o[k]:o[k+1]]
                            camera<c>_size       int64 [2]        (height, width)

Frames are stored encoded, JPEG (quality 95) by default: raw frames of an hour of
demonstrations are hundreds of GB and zlib barely shrinks camera noise, while JPEG is ~10x
smaller, decodes fast, and its loss at q95 is below camera noise (many cameras stream JPEG
anyway). "png" keeps frames lossless for those who want it. Each frame is encoded on its own
so a training loader can decode only the frames a sample needs.

`write_dataset` (behind `build_dataset` and the LeRobot import) writes into a temporary folder
beside `out` and renames it into place only when every episode has been read, so a corrupt bag
in the middle leaves a previous dataset whole.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from vam_policy.data.episodes import Episode, EpisodeOptions, RecordingProfile, build_episode
from vam_policy.model.transforms import Normalizer

FORMAT = "vam-episodes"
VERSION = 1
DATASET_FILE = "dataset.json"
STATS_FILE = "stats.safetensors"
FrameCodec = Literal["jpeg", "png"]
FRAME_CODECS: tuple[str, ...] = ("jpeg", "png")
JPEG_QUALITY = 95
Split = Literal["train", "val"]


class DatasetError(ValueError):
    """A dataset folder is missing, incomplete, or of another format or version."""


@dataclass(frozen=True)
class EpisodeEntry:
    """What dataset.json says about one episode."""

    file: str
    source: str
    length: int
    frames: int
    duration_s: float
    start_ns: int
    instruction: str
    instruction_source: str
    action_source: str
    split: Split
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Dataset:
    """An episodes dataset read from disk; episodes are loaded one at a time."""

    root: Path
    version: int
    profile: str
    joint_names: tuple[str, ...]
    camera_topics: tuple[str, ...]
    fps: float
    control_rate_hz: float
    frame_codec: FrameCodec
    episodes: tuple[EpisodeEntry, ...]
    state_stats: Normalizer
    action_stats: Normalizer

    def split(self, name: Split) -> tuple[int, ...]:
        """Indices of the episodes in split `name`."""
        return tuple(i for i, e in enumerate(self.episodes) if e.split == name)

    def load_episode(self, index: int) -> Episode:
        """Episode `index` with its frames decoded to uint8 RGB."""
        entry = self.episodes[index]
        path = self.root / entry.file
        try:
            with np.load(path, allow_pickle=False) as arrays:
                data = {key: arrays[key] for key in arrays.files}
            frames = tuple(_decode(data, c) for c in range(len(self.camera_topics)))
            return Episode(
                source=entry.source, instruction=entry.instruction,
                instruction_source=entry.instruction_source,  # type: ignore[arg-type]
                action_source=entry.action_source,  # type: ignore[arg-type]
                joint_names=self.joint_names, camera_topics=self.camera_topics, fps=self.fps,
                control_rate_hz=self.control_rate_hz, start_ns=entry.start_ns,
                frame_times=data["frame_times"], frames=frames,
                control_times=data["control_times"], state=data["state"],
                action=data["action"], notes=entry.notes,
            )
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
            raise DatasetError(f"dataset {self.root}: episode file {entry.file} is unreadable "
                               f"or incomplete: {error}") from error


def split_episodes(count: int, val_fraction: float, seed: int) -> list[Split]:
    """Seeded train/val assignment of `count` episodes, by whole episode.

    Frames of one demonstration are near-duplicates, so splitting within episodes would make
    validation measure memory. With val_fraction > 0 and two or more episodes, at least one is
    held out and at least one is kept for training.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    held_out = 0
    if val_fraction > 0 and count >= 2:
        held_out = min(count - 1, max(1, round(val_fraction * count)))
    order = np.random.default_rng(seed).permutation(count)
    val = set(order[:held_out].tolist())
    return ["val" if i in val else "train" for i in range(count)]


def build_dataset(
    bags: Sequence[str | Path],
    profile: RecordingProfile,
    out: str | Path,
    *,
    options: EpisodeOptions | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    frame_codec: FrameCodec = "jpeg",
    progress: bool = True,
    splits: Sequence[Split] | None = None,
) -> Dataset:
    """Read every bag (one episode each) and write the dataset folder `out`, atomically.

    `splits` gives each bag's split (default: drawn from `val_fraction` and `seed`). An
    existing dataset at `out` is replaced only once the new one is complete; a folder at `out`
    that is not a dataset is never touched (DatasetError).
    """
    options = options or EpisodeOptions()
    if not bags:
        raise DatasetError("no bags given")
    episodes = (build_episode(bag, profile, options)
                for bag in tqdm(bags, desc="bags", unit="bag", disable=not progress))
    return write_dataset(
        episodes, len(bags), out, profile=profile.name, val_fraction=val_fraction, seed=seed,
        frame_codec=frame_codec, splits=splits,
        provenance={"action_source": options.action_source, "max_gap_s": options.max_gap_s},
    )


def write_dataset(
    episodes: Iterable[Episode],
    count: int,
    out: str | Path,
    *,
    profile: str,
    val_fraction: float = 0.1,
    seed: int = 0,
    frame_codec: FrameCodec = "jpeg",
    provenance: Mapping[str, Any] | None = None,
    splits: Sequence[Split] | None = None,
) -> Dataset:
    """Write `count` episodes, taken one at a time, as the dataset folder `out`, atomically.

    Joints, cameras, fps and control rate come from the first episode and must be the same in
    all. `provenance` (JSON values) is recorded in dataset.json as it is. `splits` gives each
    episode's split (default: drawn by `split_episodes`). An existing dataset
    at `out` is replaced only once the new one is complete; a folder at `out` that is not a
    dataset is never touched (DatasetError).
    """
    out = Path(out)
    if count < 1:
        raise DatasetError("no episodes given")
    if frame_codec not in FRAME_CODECS:
        raise DatasetError(f"frame codec must be one of {', '.join(FRAME_CODECS)}, "
                           f"got {frame_codec!r}")
    if splits is None:
        splits = split_episodes(count, val_fraction, seed)
    elif len(splits) != count or not set(splits) <= {"train", "val"}:
        raise DatasetError(f"expected {count} splits of 'train' or 'val', got {list(splits)}")
    if out.exists() and not (out / DATASET_FILE).is_file() and (
        not out.is_dir() or any(out.iterdir())
    ):
        raise DatasetError(f"{out} exists and is not a dataset (no {DATASET_FILE}); "
                           "refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        (tmp / "episodes").mkdir()
        entries: list[EpisodeEntry] = []
        states, actions, first = [], [], None
        for i, episode in enumerate(episodes):
            if i >= count:
                raise DatasetError(f"more episodes than the {count} announced")
            if first is None:
                first = episode
            _check_same_layout(first, episode)
            file = f"episodes/{i:06d}.npz"
            _write_episode(tmp / file, episode, frame_codec)
            entries.append(_entry(episode, file, splits[i]))
            if splits[i] == "train":
                states.append(episode.state)
                actions.append(episode.action)
        if first is None or len(entries) != count:
            raise DatasetError(f"{len(entries)} episodes given, {count} announced")
        state_stats = Normalizer.fit(np.concatenate(states))
        action_stats = Normalizer.fit(np.concatenate(actions))
        _write_stats(tmp / STATS_FILE, state_stats, action_stats, first.joint_names)
        document = {
            "format": FORMAT, "version": VERSION, "profile": profile,
            "joint_names": list(first.joint_names), "camera_topics": list(first.camera_topics),
            "fps": first.fps, "control_rate_hz": first.control_rate_hz,
            "frame_codec": frame_codec, "jpeg_quality": JPEG_QUALITY, **(provenance or {}),
            "val_fraction": val_fraction, "seed": seed,
            "stats": STATS_FILE, "stats_split": "train",
            "episodes": [_entry_json(e) for e in entries],
        }
        (tmp / DATASET_FILE).write_text(json.dumps(document, indent=2) + "\n")
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_dataset(out)


def _check_same_layout(first: Episode, episode: Episode) -> None:
    """One dataset has one joint order, one camera set and one pair of rates."""
    layout = ("joint_names", "camera_topics", "fps", "control_rate_hz")
    for name in layout:
        if getattr(episode, name) != getattr(first, name):
            raise DatasetError(f"episode {episode.source}: {name} {getattr(episode, name)!r} "
                               f"differs from the first episode's {getattr(first, name)!r}")


def load_dataset(folder: str | Path) -> Dataset:
    """Read a dataset folder's index and statistics, checking that every file is there."""
    root = Path(folder)
    index = root / DATASET_FILE
    if not root.is_dir():
        raise DatasetError(f"dataset {root}: no such folder")
    if not index.is_file():
        raise DatasetError(f"dataset {root}: no {DATASET_FILE}; not a VAM episodes dataset "
                           "(build one with `vam dataset build`)")
    try:
        document = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"dataset {root}: {DATASET_FILE} is not valid JSON: {error}"
                           ) from error
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise DatasetError(f"dataset {root}: format {found!r} is not {FORMAT!r}")
    version = document.get("version")
    if not isinstance(version, int) or not 1 <= version <= VERSION:
        raise DatasetError(f"dataset {root}: version {version!r} is not supported (this "
                           f"vam_policy reads versions 1..{VERSION}; a newer one wrote it?)")
    try:
        episodes = tuple(_entry_from_json(e) for e in document["episodes"])
        joint_names = tuple(document["joint_names"])
        dataset_fields: dict[str, Any] = {
            "profile": str(document["profile"]), "joint_names": joint_names,
            "camera_topics": tuple(document["camera_topics"]), "fps": float(document["fps"]),
            "control_rate_hz": float(document["control_rate_hz"]),
            "frame_codec": document["frame_codec"],
        }
    except (KeyError, TypeError, ValueError) as error:
        raise DatasetError(f"dataset {root}: {DATASET_FILE} is incomplete or malformed: "
                           f"{type(error).__name__}: {error}") from error
    missing = [e.file for e in episodes if not (root / e.file).is_file()]
    if missing:
        raise DatasetError(f"dataset {root}: episode files missing: {missing}")
    state_stats, action_stats = _read_stats(root, len(joint_names))
    return Dataset(root=root, version=version, episodes=episodes, state_stats=state_stats,
                   action_stats=action_stats, **dataset_fields)


def _entry(episode: Episode, file: str, split: Split) -> EpisodeEntry:
    return EpisodeEntry(
        file=file, source=str(Path(episode.source).resolve()), length=episode.length,
        frames=len(episode.frame_times), duration_s=round(episode.duration_s, 6),
        start_ns=episode.start_ns, instruction=episode.instruction,
        instruction_source=episode.instruction_source, action_source=episode.action_source,
        split=split, notes=episode.notes,
    )


def _entry_json(entry: EpisodeEntry) -> dict[str, Any]:
    return {**dataclasses.asdict(entry), "notes": list(entry.notes)}


def _entry_from_json(item: dict[str, Any]) -> EpisodeEntry:
    if item["split"] not in ("train", "val"):
        raise ValueError(f"episode {item['file']}: split {item['split']!r} is not train or val")
    return EpisodeEntry(**{**item, "notes": tuple(item["notes"])})


def _write_episode(path: Path, episode: Episode, codec: FrameCodec) -> None:
    arrays: dict[str, np.ndarray] = {
        "state": episode.state, "action": episode.action,
        "control_times": episode.control_times.astype(np.float64),
        "frame_times": episode.frame_times.astype(np.float64),
    }
    for c, frames in enumerate(episode.frames):
        encoded = [_encode(frame, codec) for frame in frames]
        arrays[f"camera{c}_data"] = np.concatenate(encoded) if encoded else np.zeros(0, np.uint8)
        arrays[f"camera{c}_offsets"] = np.concatenate(
            [[0], np.cumsum([len(e) for e in encoded])]).astype(np.int64)
        arrays[f"camera{c}_size"] = np.array(frames.shape[1:3], dtype=np.int64)
    with path.open("wb") as file:
        np.savez(file, **arrays)


def _encode(frame: np.ndarray, codec: FrameCodec) -> np.ndarray:
    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    if codec == "jpeg":
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    else:
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise DatasetError(f"OpenCV could not encode a {frame.shape} frame as {codec}")
    return data.reshape(-1)


def _decode(data: dict[str, np.ndarray], camera: int) -> np.ndarray:
    blob, offsets = data[f"camera{camera}_data"], data[f"camera{camera}_offsets"]
    height, width = (int(v) for v in data[f"camera{camera}_size"])
    frames = np.empty((len(offsets) - 1, height, width, 3), dtype=np.uint8)
    for k in range(len(frames)):
        bgr = cv2.imdecode(blob[offsets[k]: offsets[k + 1]], cv2.IMREAD_COLOR)
        if bgr is None or bgr.shape[:2] != (height, width):
            raise ValueError(f"camera {camera} frame {k} does not decode to {width}x{height}")
        frames[k] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return frames


def _write_stats(path: Path, state: Normalizer, action: Normalizer,
                 joint_names: tuple[str, ...]) -> None:
    save_file(
        {"state.mean": state.mean, "state.std": state.std,
         "action.mean": action.mean, "action.std": action.std},
        str(path), metadata={"joint_names": json.dumps(list(joint_names)), "split": "train"},
    )


def _read_stats(root: Path, joints: int) -> tuple[Normalizer, Normalizer]:
    path = root / STATS_FILE
    try:
        tensors = load_file(str(path))
        stats = tuple(Normalizer(tensors[f"{k}.mean"], tensors[f"{k}.std"])
                      for k in ("state", "action"))
    except (OSError, KeyError, ValueError, SafetensorError) as error:
        raise DatasetError(f"dataset {root}: {STATS_FILE} is missing or unreadable: {error}"
                           ) from error
    if any(s.mean.shape != (joints,) for s in stats):
        raise DatasetError(f"dataset {root}: {STATS_FILE} does not hold {joints} joints")
    return stats[0], stats[1]


def replace_folder(new: Path, out: Path) -> None:
    """Move the finished `new` folder to `out`, replacing a previous dataset there."""
    if not out.exists():
        new.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    try:
        new.rename(out)
    except OSError:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def describe(dataset: Dataset) -> str:
    """A human summary: what `vam dataset info` prints."""
    train, val = dataset.split("train"), dataset.split("val")
    steps = sum(e.length for e in dataset.episodes)
    hours = sum(e.duration_s for e in dataset.episodes) / 3600
    lines = [
        f"dataset {dataset.root} ({FORMAT} v{dataset.version}, profile {dataset.profile!r})",
        f"  joints: {', '.join(dataset.joint_names)}",
        f"  cameras: {', '.join(dataset.camera_topics)} ({dataset.frame_codec} frames)",
        f"  fps {dataset.fps:g}, control rate {dataset.control_rate_hz:g} Hz",
        f"  episodes: {len(dataset.episodes)} ({len(train)} train, {len(val)} val), "
        f"{steps} control steps, {hours * 60:.1f} min",
        f"  state mean {np.round(dataset.state_stats.mean, 3).tolist()}",
        f"  state std  {np.round(dataset.state_stats.std, 3).tolist()}",
    ]
    for i, e in enumerate(dataset.episodes):
        lines.append(f"  [{i}] {e.split:5s} {e.length:5d} steps {e.duration_s:7.2f} s  "
                     f"{e.action_source:12s} {e.instruction!r}  <- {e.source}")
        lines.extend(f"        note: {note}" for note in e.notes)
    return "\n".join(lines)
