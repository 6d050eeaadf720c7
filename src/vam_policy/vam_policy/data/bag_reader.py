"""rosbag2 recordings read without ROS: topics, decoded messages with stamps, camera frames.

Built on the `rosbags` package (sqlite3 and mcap storage, detected from `metadata.yaml`), so
a dataset can be built on any machine. Every failure is a `BagError` (a ValueError) that names
the bag and, where one is involved, the topic: a corrupt recording in a folder of fifty should
say which one it is and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np
import yaml
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.image import image_to_cvimage
from rosbags.rosbag2 import ReaderError
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_typestore

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
JOINT_STATE = "sensor_msgs/msg/JointState"
JOINT_TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
STRING = "std_msgs/msg/String"
CAMERA_TYPES = (IMAGE, COMPRESSED_IMAGE)
STORAGE_SUFFIXES = {".db3": "sqlite3", ".mcap": "mcap"}

SUPPORTED_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}

# Bags recorded before message definitions were stored in them (Humble and older sqlite3)
# are decoded with this store; newer bags carry their own definitions.
_DEFAULT_TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
# What a damaged storage file raises from the storage plugins (sqlite3, the mcap parser).
_STORAGE_ERRORS = (
    ReaderError, AnyReaderError, SerdeError, sqlite3.DatabaseError, EOFError, KeyError,
    IndexError, AssertionError, ValueError, OSError,
)


class BagError(ValueError):
    """A recording cannot be read as asked; the message names the bag (and the topic)."""


class MissingTopicError(BagError):
    """A topic the profile needs is not in the bag."""


class WrongTypeError(BagError):
    """A topic holds another message type than the one expected."""


@dataclass(frozen=True)
class TopicInfo:
    """One topic of a bag: its message type and how many messages it holds."""

    name: str
    msgtype: str
    count: int


@dataclass(frozen=True)
class BagMessage:
    """A decoded message with the time it stands for.

    `stamp_ns` is the header stamp, or the receive time where the message has no header or a
    zero stamp (a JointTrajectory stamped 0 means "start on receipt"). `receive_ns` is when
    the recorder got it; `index` counts the topic's messages in receive order.
    """

    topic: str
    msgtype: str
    stamp_ns: int
    receive_ns: int
    index: int
    msg: Any


def find_bags(paths: Iterable[str | Path]) -> list[Path]:
    """Bag folders in `paths`: each path is a bag folder or a folder of bag folders.

    A folder with a `.db3`/`.mcap` file but no `metadata.yaml` still counts as a bag, so that
    reading it reports the missing metadata instead of silently skipping a recording.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise BagError(f"{path}: no such folder (expected a rosbag2 folder or a folder "
                           "of rosbag2 folders)")
        if _looks_like_bag(path):
            found.append(path)
            continue
        inner = sorted(p for p in path.iterdir() if p.is_dir() and _looks_like_bag(p))
        if not inner:
            raise BagError(f"{path}: neither a rosbag2 folder (metadata.yaml with .db3/.mcap "
                           "files) nor a folder holding any")
        found.extend(inner)
    unique: dict[Path, Path] = {}
    for bag in found:
        unique.setdefault(bag.resolve(), bag)
    return list(unique.values())


def _looks_like_bag(path: Path) -> bool:
    return (path / "metadata.yaml").is_file() or any(
        p.suffix in STORAGE_SUFFIXES for p in path.iterdir() if p.is_file()
    )


class BagReader:
    """An open rosbag2 folder; use as a context manager.

    `topics` lists what the bag holds, `require` checks a topic and its type before a long
    read, `messages` yields decoded messages in receive order.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._reader: AnyReader | None = None
        self.storage = ""
        self.topics: dict[str, TopicInfo] = {}

    def __enter__(self) -> BagReader:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Open the bag, turning every way a recording can be broken into a BagError."""
        path = self.path
        if not path.exists():
            raise BagError(f"bag {path}: no such folder")
        if not path.is_dir():
            raise BagError(f"bag {path}: not a folder; a rosbag2 recording is a folder with "
                           "metadata.yaml and .db3 or .mcap files")
        if not (path / "metadata.yaml").is_file():
            has_storage = any(p.suffix in STORAGE_SUFFIXES for p in path.iterdir())
            hint = ("; the recording may have been killed before it finished: "
                    "`ros2 bag reindex` rebuilds it" if has_storage else
                    "; this is not a rosbag2 folder")
            raise BagError(f"bag {path}: metadata.yaml is missing{hint}")
        _check_metadata(path)
        reader = AnyReader([path], default_typestore=_DEFAULT_TYPESTORE)
        try:
            reader.open()
        except _STORAGE_ERRORS as error:
            raise BagError(f"bag {path}: cannot open its storage: {_describe(error)} (a file "
                           "truncated or damaged, e.g. by a recorder killed mid-write?)"
                           ) from error
        self._reader = reader
        self.storage = next(
            (STORAGE_SUFFIXES[p.suffix] for p in sorted(path.iterdir())
             if p.suffix in STORAGE_SUFFIXES), "unknown"
        )
        self.topics = {
            name: TopicInfo(name, info.msgtype or "(mixed types)", info.msgcount)
            for name, info in reader.topics.items()
        }

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def describe_topics(self) -> str:
        """'name [type], ...' of every topic, for error messages."""
        return ", ".join(f"{t.name} [{t.msgtype}]" for t in self.topics.values()) or "no topics"

    def require(self, topic: str, msgtypes: Sequence[str], purpose: str) -> str:
        """The type of `topic`, which must be in the bag with one of `msgtypes`."""
        info = self.topics.get(topic)
        if info is None:
            raise MissingTopicError(
                f"bag {self.path}: topic {topic} ({purpose}) is not in the bag; it has "
                f"{self.describe_topics()}"
            )
        if info.msgtype not in msgtypes:
            raise WrongTypeError(
                f"bag {self.path}: topic {topic} ({purpose}) holds {info.msgtype}, expected "
                f"{' or '.join(msgtypes)}"
            )
        return info.msgtype

    def messages(self, topics: Iterable[str]) -> Iterator[BagMessage]:
        """Decoded messages of `topics` in receive order (stamps may be out of order)."""
        reader = self._open_reader()
        wanted = set(topics)
        connections = [c for c in reader.connections if c.topic in wanted]
        counts: dict[str, int] = dict.fromkeys(wanted, 0)
        topic = "?"
        try:
            for connection, receive_ns, raw in reader.messages(connections=connections):
                topic = connection.topic
                msg = reader.deserialize(raw, connection.msgtype)
                yield BagMessage(topic, connection.msgtype, message_stamp_ns(msg, receive_ns),
                                 receive_ns, counts[topic], msg)
                counts[topic] += 1
        except _STORAGE_ERRORS as error:
            raise BagError(
                f"bag {self.path}: reading topic {topic} failed after {counts.get(topic, 0)} "
                f"messages: {_describe(error)} (storage file truncated or damaged?)"
            ) from error

    def _open_reader(self) -> AnyReader:
        if self._reader is None:
            raise BagError(f"bag {self.path}: not open (use BagReader as a context manager)")
        return self._reader


def _check_metadata(path: Path) -> None:
    """metadata.yaml must be YAML holding rosbag2_bagfile_information: tell that case apart."""
    try:
        document = yaml.safe_load((path / "metadata.yaml").read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise BagError(f"bag {path}: metadata.yaml is corrupt, not valid YAML: {error}"
                       ) from error
    if not isinstance(document, dict) or not isinstance(
        document.get("rosbag2_bagfile_information"), dict
    ):
        raise BagError(f"bag {path}: metadata.yaml is corrupt: expected a mapping with key "
                       "'rosbag2_bagfile_information'")


def message_stamp_ns(msg: Any, receive_ns: int) -> int:
    """Header stamp in ns, or `receive_ns` where there is no header or the stamp is zero."""
    header = getattr(msg, "header", None)
    if header is None:
        return receive_ns
    stamp = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
    return stamp if stamp > 0 else receive_ns


def camera_frame_to_rgb(msg: Any, msgtype: str) -> np.ndarray:
    """[H, W, 3] uint8 RGB of a sensor_msgs Image or CompressedImage (from `rosbags`).

    Raw images accept the encodings the live node accepts (rgb8, bgr8, rgba8, bgra8, mono8)
    and honour a padded `step`; compressed images may be JPEG or PNG. Raises ValueError for
    anything else, as the node does, rather than guessing channel order or depth scaling.
    """
    if msgtype == COMPRESSED_IMAGE:
        return _compressed_to_rgb(msg)
    encoding = str(msg.encoding)
    if encoding not in _CHANNELS:
        raise ValueError(f"image encoding {encoding!r} is not supported; supported: "
                         f"{', '.join(SUPPORTED_ENCODINGS)}")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row = width * _CHANNELS[encoding]
    data = np.asarray(msg.data, dtype=np.uint8)
    if height < 1 or width < 1 or step < row or data.size != height * step:
        raise ValueError(f"image {width}x{height} {encoding} with step {step} does not match "
                         f"its {data.size} bytes of data")
    if step != row:  # rosbags-image ignores row padding: drop it first
        msg = dataclasses.replace(msg, step=row,
                                  data=data.reshape(height, step)[:, :row].reshape(-1))
    return np.ascontiguousarray(image_to_cvimage(msg, "rgb8"), dtype=np.uint8)


def _compressed_to_rgb(msg: Any) -> np.ndarray:
    """OpenCV decoding into 3-channel BGR, then RGB.

    Not rosbags-image's `compressed_image_to_cvimage`: it asserts on undecodable data and
    fails on grey JPEGs, two things a real camera bag can contain.
    """
    fmt = str(msg.format)
    if "compresseddepth" in fmt.lower():
        raise ValueError(f"compressed format {fmt!r} (depth) is not supported; expected "
                         "JPEG or PNG colour or grey images")
    image = cv2.imdecode(np.asarray(msg.data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"compressed image (format {fmt!r}, {len(msg.data)} bytes) could "
                         "not be decoded as JPEG or PNG")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
