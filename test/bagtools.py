"""Synthetic demonstration bags, written as `ros2 bag record` writes them, for tests.

`write_demo_bag(path, DemoSpec(...))` writes a real rosbag2 folder (sqlite3 or mcap) with the
`rosbags` Writer: cameras whose frames encode their own time, joint states of a known smooth
motion (with an extra gripper joint, shuffled order), optional JointTrajectory commands and an
optional String instruction, plus the quirks of real recordings (jitter, dropped messages,
out-of-order and duplicated stamps, NaN samples, odd-sized frames). The returned `DemoTruth`
lets a test compute what a correct reader must produce. Nothing here imports ROS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

TYPESTORE = get_typestore(Stores.ROS2_KILTED)
T = TYPESTORE.types
START_NS = 1_700_000_000_000_000_000  # epoch-sized stamps, as real clocks give
RECEIVE_LATENCY_NS = 3_000_000
UR5E_JOINTS = ("shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint",
               "wrist_2_joint", "wrist_3_joint")
UR5E_CAMERA = "/camera/camera/color/image_raw"
UR5E_TRAJECTORY = "/scaled_joint_trajectory_controller/joint_trajectory"
INSTRUCTION_TOPIC = "/vam_policy_node/instruction"
COMMAND_OFFSET = 0.25  # commands = motion + offset, so they cannot pass for joint states

CameraEncoding = Literal["rgb8", "bgr8", "jpeg"]


@dataclass(frozen=True)
class DemoSpec:
    """What to record; defaults are a 2 s UR5e demo with one 20 Hz camera, no quirks."""

    storage: Literal["sqlite3", "mcap"] = "sqlite3"
    duration_s: float = 2.0
    joint_names: tuple[str, ...] = UR5E_JOINTS
    extra_joints: tuple[str, ...] = ("gripper_finger_joint",)
    shuffle_joints: bool = True
    joint_states_topic: str = "/joint_states"
    joint_hz: float = 100.0
    cameras: tuple[str, ...] = (UR5E_CAMERA,)
    camera_encoding: CameraEncoding = "rgb8"
    camera_hz: float = 20.0
    image_size: tuple[int, int] = (24, 32)  # (height, width)
    odd_size_frames: tuple[int, ...] = ()  # frame indices written at another size
    trajectory_topic: str | None = None  # commands are written when set
    command_hz: float = 10.0
    instruction_topic: str | None = None
    instruction: str = "pick up the red cube"
    jitter_s: float = 0.0  # uniform +- jitter on every stamp
    drop_every: int = 0  # drop every n-th camera frame and joint state (0: none)
    gap_s: tuple[float, float] | None = None  # no joint states or frames in [start, end)
    swap_every: int = 0  # swap stamps of neighbouring messages (out of order) every n
    duplicate_every: int = 0  # write every n-th joint state twice
    nan_every: int = 0  # every n-th joint state has a NaN arm joint
    motion_offset: float = 0.0  # added to every joint: tells demonstrations apart
    seed: int = 0


@dataclass(frozen=True)
class DemoTruth:
    """What was written: stamps in seconds since START_NS, values in profile joint order."""

    path: Path
    spec: DemoSpec
    frame_stamps: dict[str, np.ndarray] = field(default_factory=dict)  # [k]: frame k, NaN: dropped
    joint_stamps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    command_stamps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    command_positions: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def position(self, t: np.ndarray | float) -> np.ndarray:
        """Arm joint positions [..., J] (profile order) the demo was at, at time(s) t."""
        return joint_motion(t, len(self.spec.joint_names)) + self.spec.motion_offset


def joint_motion(t: np.ndarray | float, joints: int = len(UR5E_JOINTS)) -> np.ndarray:
    """The demonstrated motion [..., J]: smooth, so 100 Hz linear interpolation is accurate."""
    t = np.asarray(t, dtype=np.float64)[..., None]
    j = np.arange(joints)
    return 0.5 * np.sin(2.0 * t + 0.7 * j) + 0.1 * j


def frame_code(index: int) -> int:
    """Red value of frame `index`: survives JPEG, so a test can tell which frame was picked."""
    return 10 + (4 * index) % 240


def decode_frame_code(frame: np.ndarray) -> int:
    """The frame index a picked frame encodes (its mean red value, modulo wrap-around)."""
    return round((float(frame[..., 0].mean()) - 10) / 4)


def frame_pixels(index: int, size: tuple[int, int]) -> np.ndarray:
    """[H, W, 3] RGB: red encodes the index, green and blue are fixed (catch channel swaps)."""
    frame = np.empty((*size, 3), dtype=np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = frame_code(index), 100, 200
    return frame


def write_demo_bag(path: str | Path, spec: DemoSpec = DemoSpec()) -> DemoTruth:
    """Write one demonstration bag at `path` (which must not exist); return what it holds."""
    path = Path(path)
    rng = np.random.default_rng(spec.seed)
    plugin = StoragePlugin.MCAP if spec.storage == "mcap" else StoragePlugin.SQLITE3
    out: list[tuple[int, str, object]] = []  # (receive ns, topic, message)

    joint_stamps = _stamps(spec, spec.joint_hz, rng)
    names = list(spec.joint_names) + list(spec.extra_joints)
    order = rng.permutation(len(names)) if spec.shuffle_joints else np.arange(len(names))
    kept_joint_stamps = []
    for k, stamp in enumerate(joint_stamps):
        if _dropped(spec, k, stamp):
            continue
        arm = joint_motion(stamp, len(spec.joint_names)) + spec.motion_offset
        if spec.nan_every and k % spec.nan_every == spec.nan_every - 1:
            arm = arm.copy()
            arm[k % len(arm)] = np.nan
        else:
            kept_joint_stamps.append(stamp)
        values = np.concatenate([arm, np.full(len(spec.extra_joints), 0.04)])
        msg = T["sensor_msgs/msg/JointState"](
            header=_header(stamp), name=[names[i] for i in order],
            position=values[order], velocity=np.zeros(0), effort=np.zeros(0),
        )
        copies = 2 if spec.duplicate_every and k % spec.duplicate_every == 1 else 1
        out.extend((_receive_ns(spec, k, joint_stamps, c), spec.joint_states_topic, msg)
                   for c in range(copies))

    frame_stamps: dict[str, np.ndarray] = {}
    for c, topic in enumerate(spec.cameras):
        stamps = _stamps(spec, spec.camera_hz, rng, phase=0.013 * c)
        recorded = stamps.copy()
        for k, stamp in enumerate(stamps):
            if _dropped(spec, k, stamp):
                recorded[k] = np.nan
                continue
            size = (spec.image_size[0] + 8, spec.image_size[1] + 8) \
                if k in spec.odd_size_frames else spec.image_size
            out.append((_receive_ns(spec, k, stamps), topic,
                        _camera_msg(frame_pixels(k, size), stamp, spec.camera_encoding)))
        frame_stamps[topic] = recorded

    command_stamps, command_positions = np.zeros(0), np.zeros((0, len(spec.joint_names)))
    if spec.trajectory_topic:
        command_stamps = np.arange(0.0, spec.duration_s, 1.0 / spec.command_hz) + 0.05
        command_positions = (joint_motion(command_stamps, len(spec.joint_names))
                             + spec.motion_offset + COMMAND_OFFSET)
        reverse = list(reversed(spec.joint_names))
        for stamp, positions in zip(command_stamps, command_positions, strict=True):
            point = T["trajectory_msgs/msg/JointTrajectoryPoint"](
                positions=positions[::-1].copy(), velocities=np.zeros(0),
                accelerations=np.zeros(0), effort=np.zeros(0),
                time_from_start=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=0),
            )
            # stamp 0: "start on receipt", as teleoperation publishers send them
            msg = T["trajectory_msgs/msg/JointTrajectory"](
                header=_header(None), joint_names=reverse, points=[point])
            out.append((START_NS + round(stamp * 1e9), spec.trajectory_topic, msg))

    if spec.instruction_topic:
        out.append((START_NS + 1_000, spec.instruction_topic,
                    T["std_msgs/msg/String"](data=spec.instruction)))

    out.sort(key=lambda item: item[0])
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        connections = {}
        for topic, msgtype in _topic_types(spec).items():
            connections[topic] = writer.add_connection(topic, msgtype, typestore=TYPESTORE)
        for receive_ns, topic, msg in out:
            writer.write(connections[topic], receive_ns,
                         TYPESTORE.serialize_cdr(msg, type(msg).__msgtype__))
    return DemoTruth(path, spec, frame_stamps, np.asarray(kept_joint_stamps), command_stamps,
                     command_positions)


def _topic_types(spec: DemoSpec) -> dict[str, str]:
    camera_type = ("sensor_msgs/msg/CompressedImage" if spec.camera_encoding == "jpeg"
                   else "sensor_msgs/msg/Image")
    types = {spec.joint_states_topic: "sensor_msgs/msg/JointState"}
    types.update(dict.fromkeys(spec.cameras, camera_type))
    if spec.trajectory_topic:
        types[spec.trajectory_topic] = "trajectory_msgs/msg/JointTrajectory"
    if spec.instruction_topic:
        types[spec.instruction_topic] = "std_msgs/msg/String"
    return types


def _stamps(spec: DemoSpec, hz: float, rng: np.random.Generator,
            phase: float = 0.0) -> np.ndarray:
    """Header stamps (s): a regular clock plus jitter, with neighbours swapped if asked."""
    stamps = np.arange(0.0, spec.duration_s, 1.0 / hz) + phase
    if spec.jitter_s:
        stamps = stamps + rng.uniform(-spec.jitter_s, spec.jitter_s, stamps.shape)
        stamps[0] = max(stamps[0], 0.0)
    if spec.swap_every:
        for k in range(spec.swap_every, len(stamps) - 1, spec.swap_every):
            stamps[k], stamps[k + 1] = stamps[k + 1], stamps[k]
    return stamps


def _receive_ns(spec: DemoSpec, k: int, stamps: np.ndarray, copy: int = 0) -> int:
    """Receive time: in message order (k), so swapped stamps arrive out of order."""
    regular = np.sort(stamps)[k]
    return START_NS + round(regular * 1e9) + RECEIVE_LATENCY_NS + copy * 1_000


def _dropped(spec: DemoSpec, k: int, stamp: float) -> bool:
    if spec.drop_every and k % spec.drop_every == spec.drop_every - 1:
        return True
    return spec.gap_s is not None and spec.gap_s[0] <= stamp < spec.gap_s[1]


def _header(stamp_s: float | None) -> object:
    ns = 0 if stamp_s is None else START_NS + round(stamp_s * 1e9)
    return T["std_msgs/msg/Header"](
        stamp=T["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000,
                                              nanosec=ns % 1_000_000_000),
        frame_id="",
    )


def _camera_msg(rgb: np.ndarray, stamp_s: float, encoding: CameraEncoding) -> object:
    height, width = rgb.shape[:2]
    if encoding == "jpeg":
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise RuntimeError("OpenCV could not encode a test frame as JPEG")
        return T["sensor_msgs/msg/CompressedImage"](header=_header(stamp_s), format="jpeg",
                                                    data=data.reshape(-1))
    pixels = rgb if encoding == "rgb8" else rgb[..., ::-1]
    return T["sensor_msgs/msg/Image"](
        header=_header(stamp_s), height=height, width=width, encoding=encoding,
        is_bigendian=0, step=width * 3, data=np.ascontiguousarray(pixels).reshape(-1),
    )


def small_video_dataset(root: Path, profile: Path) -> Path:
    """Three 1.5 s demos (one instruction, a third held out) built into `root / "dataset"`:
    the training stages' shared tiny dataset; returns the dataset folder."""
    from vam_policy.data.dataset import build_dataset
    from vam_policy.data.episodes import EpisodeOptions, RecordingProfile

    bags = [write_demo_bag(root / f"bag{i}", DemoSpec(duration_s=1.5, motion_offset=0.2 * i,
                                                      seed=i)).path for i in range(3)]
    dataset = build_dataset(bags, RecordingProfile.load(profile), root / "dataset",
                            val_fraction=0.34, progress=False,
                            options=EpisodeOptions(instruction="stack the cubes"))
    return dataset.root
