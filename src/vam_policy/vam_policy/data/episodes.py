"""One bag = one episode: frames, joint states and action targets on common time grids.

Real recordings are messy: topics at different rates with jitter, dropped and out-of-order
messages, repeated stamps, NaN joint states, extra joints (grippers) in another order. This
module turns such a bag into regular arrays, using the same transforms as the live node
(`reorder_joints`, `FrameHistory`), so that what the policy trains on is what it will see:

- frames: for each time of a grid at `fps`, the newest frame not later than it;
- state: joint positions linearly interpolated at each control step (`control_rate_hz`);
- action: the measured position one control step later, or the commanded position
  (trajectory_msgs/JointTrajectory on the profile's trajectory topic) at the control time.

Decisions, documented where they bite:
- A gap longer than `max_gap_s` in joint states or a camera TRIMS the episode to its longest
  gap-free stretch (default 0.5 s, the node's `max_obs_age_s`: the node would refuse such stale
  inputs, so training on them teaches nothing it could use). Splitting instead would make
  pieces that each lack the start or the end of the task, under one instruction.
- Frames keep the camera's resolution; a frame of another size than the camera's first frame
  in the episode is resized to it. Resizing to the model's input happens in training with
  `FramePreprocess`, the node's own transform, so one dataset serves any model resolution.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from vam_policy.data.bag_reader import (
    CAMERA_TYPES,
    JOINT_STATE,
    JOINT_TRAJECTORY,
    STRING,
    BagError,
    BagReader,
    camera_frame_to_rgb,
)
from vam_policy.model.transforms import FrameHistory, reorder_joints
from vam_policy.ros.parameters import (
    load_parameters_file,
    resolve_topic,
    settings_from_parameters,
)

ActionSource = Literal["joint_states", "commands", "auto"]
InstructionSource = Literal["topic", "file", "flag"]
ACTION_SOURCES: tuple[str, ...] = ("joint_states", "commands", "auto")
INSTRUCTION_FILE = "instruction.txt"
DEFAULT_FPS = 10.0  # PolicyConfig.fps default: the rate of the video model's frame history

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordingProfile:
    """What a robot's demonstrations are read with: joints, topics and control rate."""

    joint_names: tuple[str, ...]
    camera_topics: tuple[str, ...]
    joint_states_topic: str
    trajectory_topic: str
    instruction_topic: str
    control_rate_hz: float
    name: str = ""

    @classmethod
    def load(cls, path: str | Path) -> RecordingProfile:
        """Read a node profile (`config/<robot>.yaml`), validated exactly as the node does."""
        try:
            settings = settings_from_parameters(load_parameters_file(path))
        except (ValueError, OSError) as error:
            raise ValueError(f"profile {path}: {error}") from error
        return cls(
            joint_names=settings.joint_names,
            camera_topics=tuple(resolve_topic(t) for t in settings.camera_topics),
            joint_states_topic=resolve_topic(settings.joint_states_topic),
            trajectory_topic=resolve_topic(settings.trajectory_topic),
            instruction_topic=resolve_topic(settings.instruction_topic),
            control_rate_hz=settings.control_rate_hz,
            name=Path(path).stem,
        )

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic a demonstration should record."""
        return (*self.camera_topics, self.joint_states_topic, self.trajectory_topic,
                self.instruction_topic)


@dataclass(frozen=True)
class EpisodeOptions:
    """How bags become episodes.

    fps: rate of the frame grid (the video model's history rate).
    control_rate_hz: rate of states and actions; None takes the profile's.
    action_source: "joint_states" (measured position one step later), "commands" (the
        trajectory topic must be there) or "auto" (commands when the bag has any).
    max_gap_s: longest tolerated silence of joint states or a camera; longer gaps trim.
    instruction: used when the bag has no instruction topic and no instruction.txt.
    """

    fps: float = DEFAULT_FPS
    control_rate_hz: float | None = None
    action_source: ActionSource = "auto"
    max_gap_s: float = 0.5
    instruction: str | None = None

    def __post_init__(self) -> None:
        rates = (self.fps, self.control_rate_hz or 1.0, self.max_gap_s)
        if not all(math.isfinite(r) and r > 0 for r in rates):
            raise ValueError(f"fps, control_rate_hz and max_gap_s must be positive, got "
                             f"{self.fps}, {self.control_rate_hz}, {self.max_gap_s}")
        if self.action_source not in ACTION_SOURCES:
            raise ValueError(f"action_source must be one of {', '.join(ACTION_SOURCES)}, "
                             f"got {self.action_source!r}")


@dataclass(frozen=True)
class Episode:
    """One demonstration on regular grids; times are seconds since `start_ns`.

    frames[c] `[F, H, W, 3]` uint8 RGB of camera_topics[c] at frame_times `[F]` (k / fps);
    state and action `[N, J]` float32 in joint_names order at control_times `[N]`.
    """

    source: str
    instruction: str
    instruction_source: InstructionSource
    action_source: Literal["joint_states", "commands"]
    joint_names: tuple[str, ...]
    camera_topics: tuple[str, ...]
    fps: float
    control_rate_hz: float
    start_ns: int
    frame_times: np.ndarray
    frames: tuple[np.ndarray, ...]
    control_times: np.ndarray
    state: np.ndarray
    action: np.ndarray
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        n, j, f = len(self.control_times), len(self.joint_names), len(self.frame_times)
        if self.state.shape != (n, j) or self.action.shape != (n, j):
            raise ValueError(f"episode {self.source}: state {self.state.shape} and action "
                             f"{self.action.shape} must be [{n}, {j}]")
        if len(self.frames) != len(self.camera_topics):
            raise ValueError(f"episode {self.source}: {len(self.frames)} frame arrays for "
                             f"{len(self.camera_topics)} cameras")
        for topic, frames in zip(self.camera_topics, self.frames, strict=True):
            if frames.dtype != np.uint8 or frames.ndim != 4 or (
                frames.shape[0], frames.shape[-1]) != (f, 3):
                raise ValueError(f"episode {self.source}: camera {topic}: expected uint8 "
                                 f"[{f}, H, W, 3], got {frames.dtype} {frames.shape}")

    @property
    def length(self) -> int:
        """Control steps."""
        return len(self.control_times)

    @property
    def duration_s(self) -> float:
        return float(self.control_times[-1] - self.control_times[0]) if self.length else 0.0


@dataclass(frozen=True)
class _Stream:
    """One topic's usable samples, sorted by stamp without repeats; times in s."""

    topic: str
    times: np.ndarray
    values: list[Any]


def build_episode(
    bag: str | Path, profile: RecordingProfile, options: EpisodeOptions = EpisodeOptions()
) -> Episode:
    """Read one bag into an Episode; raises BagError naming the bag and topic on failure."""
    bag = Path(bag)
    notes: list[str] = []
    rate = options.control_rate_hz or profile.control_rate_hz
    with BagReader(bag) as reader:
        camera_types = {t: reader.require(t, CAMERA_TYPES, "camera")
                        for t in profile.camera_topics}
        reader.require(profile.joint_states_topic, (JOINT_STATE,), "joint states")
        use_commands = _use_commands(reader, profile, options.action_source)
        has_instruction = profile.instruction_topic in reader.topics
        if has_instruction:
            reader.require(profile.instruction_topic, (STRING,), "instruction")
        raw = _read_streams(reader, profile, use_commands, has_instruction, notes)
        origin = min((stamp for samples in raw.values() for stamp, _ in samples), default=0)
        streams = {topic: _sorted_stream(bag, topic, samples, origin, notes)
                   for topic, samples in raw.items() if topic != profile.instruction_topic}
        start, end = _common_span(bag, profile, streams, use_commands, options.max_gap_s, notes)
        steps = math.floor((end - start) * rate + 1e-9) + (1 if use_commands else 0)
        frame_count = math.floor((end - start) * options.fps + 1e-9) + 1
        if steps < 2:
            raise BagError(f"bag {bag}: only {end - start:.3f} s of usable recording, too "
                           f"short for two control steps at {rate:g} Hz")
        control_times = start + np.arange(steps) / rate
        frame_times = start + np.arange(frame_count) / options.fps
        joints = streams[profile.joint_states_topic]
        state = _interpolate(joints, control_times)
        if use_commands:
            action = _commanded(streams[profile.trajectory_topic], control_times)
        else:
            action = _interpolate(joints, control_times + 1.0 / rate)
        picks = {t: _pick(streams[t], frame_times, options.fps) for t in profile.camera_topics}
        frames = _decode_frames(reader, picks, camera_types, notes)
    instruction, instruction_source = _instruction(
        bag, profile.instruction_topic, raw.get(profile.instruction_topic, []),
        options.instruction, notes,
    )
    for note in notes:
        _log.warning("bag %s: %s", bag, note)
    return Episode(
        source=str(bag), instruction=instruction, instruction_source=instruction_source,
        action_source="commands" if use_commands else "joint_states",
        joint_names=profile.joint_names, camera_topics=profile.camera_topics,
        fps=options.fps, control_rate_hz=rate, start_ns=origin + round(start * 1e9),
        frame_times=frame_times - start, frames=frames, control_times=control_times - start,
        state=state.astype(np.float32), action=action.astype(np.float32), notes=tuple(notes),
    )


def _use_commands(reader: BagReader, profile: RecordingProfile, source: ActionSource) -> bool:
    topic = profile.trajectory_topic
    if source == "joint_states":
        return False
    if source == "commands" or (topic in reader.topics and reader.topics[topic].count > 0):
        reader.require(topic, (JOINT_TRAJECTORY,), "trajectory commands")
        return True
    return False


def _read_streams(
    reader: BagReader, profile: RecordingProfile, use_commands: bool, has_instruction: bool,
    notes: list[str],
) -> dict[str, list[tuple[int, Any]]]:
    """(stamp ns, value) per topic, in receive order: joint positions in profile order,
    camera message indices (frames are decoded later, only those picked), commands as
    (times from start [P], positions [P, J]) and instruction strings."""
    joints = profile.joint_names
    topics = [*profile.camera_topics, profile.joint_states_topic]
    topics += [profile.trajectory_topic] if use_commands else []
    topics += [profile.instruction_topic] if has_instruction else []
    raw: dict[str, list[tuple[int, Any]]] = {t: [] for t in topics}
    skipped: dict[str, list[str]] = {}  # why -> first example
    for m in reader.messages(topics):
        if m.topic in profile.camera_topics:
            raw[m.topic].append((m.stamp_ns, m.index))
        elif m.topic == profile.joint_states_topic:
            try:  # a gripper's own JointState on the same topic lacks the arm joints
                positions = reorder_joints(list(m.msg.name), m.msg.position, joints)
            except ValueError as error:
                skipped.setdefault("joint states without the arm joints", []).append(str(error))
                continue
            if not np.all(np.isfinite(positions)):
                skipped.setdefault("joint states with NaN or inf positions", []).append(
                    f"message {m.index}")
                continue
            raw[m.topic].append((m.stamp_ns, positions))
        elif m.topic == profile.trajectory_topic:
            command = _command(reader.path, m.topic, m.index, m.msg, joints)
            if command is None:  # an empty trajectory cancels; nothing to learn from it
                skipped.setdefault("empty trajectory commands", []).append(f"message {m.index}")
                continue
            raw[m.topic].append((m.stamp_ns, command))
        else:
            raw[m.topic].append((m.stamp_ns, str(m.msg.data)))
    for why, examples in skipped.items():
        notes.append(f"dropped {len(examples)} {why} (first: {examples[0]})")
    if not raw[profile.joint_states_topic]:
        raise BagError(f"bag {reader.path}: topic {profile.joint_states_topic} has no usable "
                       f"joint states for {list(joints)}: {'; '.join(notes) or 'no messages'}")
    return raw


def _command(bag: Path, topic: str, index: int, msg: Any,
             joints: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    """(time from start [P] s, positions [P, J]) of a JointTrajectory; None if empty."""
    if not msg.points:
        return None
    try:
        positions = np.stack([reorder_joints(list(msg.joint_names), p.positions, joints)
                              for p in msg.points])
    except ValueError as error:
        raise BagError(f"bag {bag}: topic {topic}: command {index}: {error}") from error
    times = np.array([p.time_from_start.sec + p.time_from_start.nanosec * 1e-9
                      for p in msg.points])
    if not np.all(np.isfinite(positions)) or np.any(np.diff(times) < 0):
        raise BagError(f"bag {bag}: topic {topic}: command {index} has non-finite positions "
                       "or points out of time order")
    return times, positions


def _sorted_stream(bag: Path, topic: str, samples: list[tuple[int, Any]], origin: int,
                   notes: list[str]) -> _Stream:
    """Sort by stamp, drop repeated stamps (the first received is kept)."""
    if not samples:
        raise BagError(f"bag {bag}: topic {topic} has no usable messages")
    stamps = np.array([s for s, _ in samples], dtype=np.int64)
    order = np.argsort(stamps, kind="stable")
    late = int(np.sum(np.diff(stamps) < 0))
    keep = order[np.concatenate([[True], np.diff(stamps[order]) > 0])]
    if late:
        notes.append(f"{topic}: {late} messages arrived out of stamp order (sorted)")
    if len(keep) < len(samples):
        notes.append(f"{topic}: dropped {len(samples) - len(keep)} messages with a repeated "
                     "stamp")
    return _Stream(topic, (stamps[keep] - origin) / 1e9, [samples[i][1] for i in keep])


def _common_span(bag: Path, profile: RecordingProfile, streams: dict[str, _Stream],
                 use_commands: bool, max_gap_s: float, notes: list[str]) -> tuple[float, float]:
    """The longest time span covered by every stream without a gap longer than max_gap_s."""
    checked = [streams[t] for t in (profile.joint_states_topic, *profile.camera_topics)]
    start = max(s.times[0] for s in checked)
    end = min(s.times[-1] for s in checked)
    if use_commands:
        start = max(start, streams[profile.trajectory_topic].times[0])
    if start >= end:
        spans = ", ".join(f"{s.topic} {s.times[0]:.3f}..{s.times[-1]:.3f} s"
                          for s in streams.values())
        raise BagError(f"bag {bag}: topics do not overlap in time ({spans}); were they stamped "
                       "by different clocks (use_sim_time)?")
    gaps = sorted(
        (float(a), float(b), s.topic) for s in checked
        for a, b in zip(s.times[:-1], s.times[1:], strict=True) if b - a > max_gap_s
    )
    pieces, cursor = [], start
    for a, b, _ in gaps:
        if b <= cursor or a >= end:
            continue
        pieces.append((cursor, min(a, end)))
        cursor = max(cursor, b)
    pieces.append((cursor, end))
    best = max(pieces, key=lambda p: p[1] - p[0])
    if gaps and best != (start, end):
        worst = max(gaps, key=lambda g: g[1] - g[0])
        notes.append(f"trimmed to {best[0]:.3f}..{best[1]:.3f} s of {start:.3f}..{end:.3f} s: "
                     f"gaps longer than {max_gap_s:g} s (largest {worst[1] - worst[0]:.3f} s "
                     f"in {worst[2]})")
    return best


def _interpolate(stream: _Stream, times: np.ndarray) -> np.ndarray:
    """Joint positions [len(times), J], linear between samples."""
    values = np.stack(stream.values)
    return np.stack([np.interp(times, stream.times, values[:, j])
                     for j in range(values.shape[1])], axis=1)


def _commanded(stream: _Stream, times: np.ndarray) -> np.ndarray:
    """The position the controller was told to be at, at each time.

    The newest command not later than t applies; within it, positions are interpolated over
    the points' time_from_start (a single-point command holds its point).
    """
    rows = []
    for t in times:
        i = int(np.searchsorted(stream.times, t + 1e-9, side="right")) - 1
        point_times, positions = stream.values[max(i, 0)]
        elapsed = t - stream.times[max(i, 0)]
        rows.append([np.interp(elapsed, point_times, positions[:, j])
                     for j in range(positions.shape[1])])
    return np.asarray(rows)


def _pick(stream: _Stream, times: np.ndarray, fps: float) -> list[int]:
    """Message index shown at each time: the newest frame not later than it, as the node's
    FrameHistory picks it (the history holds message indices instead of pixels)."""
    history = FrameHistory(capacity=len(stream.times) + 1)
    for stamp, index in zip(stream.times, stream.values, strict=True):
        history.push(float(stamp), np.int64(index))
    return [int(history.sample(float(t), 1, fps)[0]) for t in times]


def _decode_frames(reader: BagReader, picks: dict[str, list[int]], msgtypes: dict[str, str],
                   notes: list[str]) -> tuple[np.ndarray, ...]:
    """[F, H, W, 3] RGB per camera, decoding only the picked messages (one pass over the bag).

    Frames of another size than the camera's first picked frame are resized to it.
    """
    wanted = {topic: set(indices) for topic, indices in picks.items()}
    decoded: dict[str, dict[int, np.ndarray]] = {topic: {} for topic in picks}
    for m in reader.messages(picks):
        if m.index in wanted[m.topic]:
            try:
                decoded[m.topic][m.index] = camera_frame_to_rgb(m.msg, msgtypes[m.topic])
            except ValueError as error:
                raise BagError(f"bag {reader.path}: topic {m.topic}: message {m.index}: "
                               f"{error}") from error
    out = []
    for topic, indices in picks.items():
        frames = decoded[topic]
        height, width = frames[indices[0]].shape[:2]
        odd = [i for i, frame in frames.items() if frame.shape[:2] != (height, width)]
        for i in odd:
            frames[i] = cv2.resize(frames[i], (width, height), interpolation=cv2.INTER_AREA)
        if odd:
            notes.append(f"{topic}: resized {len(odd)} frames to the first frame's "
                         f"{width}x{height}")
        out.append(np.stack([frames[i] for i in indices]))
    return tuple(out)


def _instruction(bag: Path, topic: str, samples: Sequence[tuple[int, Any]],
                 fallback: str | None, notes: list[str]) -> tuple[str, InstructionSource]:
    """From the bag's instruction topic, else instruction.txt beside it, else `fallback`."""
    said = [text.strip() for _, text in sorted(samples, key=lambda s: s[0]) if text.strip()]
    if said:
        if len(set(said)) > 1:
            notes.append(f"{topic}: {len(set(said))} different instructions; the first is used")
        return said[0], "topic"
    sidecar = bag / INSTRUCTION_FILE
    if sidecar.is_file() and (text := sidecar.read_text(encoding="utf-8").strip()):
        return text, "file"
    if fallback and fallback.strip():
        return fallback.strip(), "flag"
    raise BagError(f"bag {bag}: no instruction: topic {topic} is not in the bag (or empty), "
                   f"there is no {sidecar}, and none was given (--instruction)")
