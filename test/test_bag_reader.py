"""Reading rosbag2 folders without ROS: both storages, every camera encoding, clear errors."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from bagtools import (
    INSTRUCTION_TOPIC,
    START_NS,
    TYPESTORE,
    UR5E_CAMERA,
    UR5E_TRAJECTORY,
    DemoSpec,
    frame_pixels,
    write_demo_bag,
)

from vam_policy.data.bag_reader import (
    COMPRESSED_IMAGE,
    IMAGE,
    BagError,
    BagReader,
    MissingTopicError,
    WrongTypeError,
    camera_frame_to_rgb,
    find_bags,
)

T = TYPESTORE.types
FULL = DemoSpec(trajectory_topic=UR5E_TRAJECTORY, instruction_topic=INSTRUCTION_TOPIC,
                duration_s=1.0)


@pytest.fixture(scope="module", params=["sqlite3", "mcap"])
def full_bag(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bags") / request.param
    write_demo_bag(path, dataclasses.replace(FULL, storage=request.param))
    return path


def test_both_storages_list_topics_types_and_counts(full_bag: Path) -> None:
    """sqlite3 and mcap bags, as ros2 bag record writes them, list the same topics."""
    with BagReader(full_bag) as reader:
        assert reader.storage == full_bag.name
        types = {t.name: (t.msgtype, t.count) for t in reader.topics.values()}
    assert types == {
        UR5E_CAMERA: ("sensor_msgs/msg/Image", 20),
        "/joint_states": ("sensor_msgs/msg/JointState", 100),
        UR5E_TRAJECTORY: ("trajectory_msgs/msg/JointTrajectory", 10),
        INSTRUCTION_TOPIC: ("std_msgs/msg/String", 1),
    }


def test_messages_come_in_receive_order_with_header_stamps(full_bag: Path) -> None:
    """Header stamps where there is a header; receive time for String and zero stamps."""
    with BagReader(full_bag) as reader:
        messages = list(reader.messages([UR5E_CAMERA, UR5E_TRAJECTORY, INSTRUCTION_TOPIC]))
    receive = [m.receive_ns for m in messages]
    assert receive == sorted(receive)
    assert {m.topic for m in messages} == {UR5E_CAMERA, UR5E_TRAJECTORY, INSTRUCTION_TOPIC}
    cameras = [m for m in messages if m.topic == UR5E_CAMERA]
    assert [m.index for m in cameras] == list(range(20))
    assert cameras[3].stamp_ns == START_NS + 150_000_000  # header, not the 3 ms later receipt
    assert cameras[3].receive_ns == cameras[3].stamp_ns + 3_000_000
    for m in messages:
        if m.topic != UR5E_CAMERA:  # no header / header stamp 0: receive time stands
            assert m.stamp_ns == m.receive_ns
    assert next(m for m in messages if m.topic == INSTRUCTION_TOPIC).msg.data == FULL.instruction


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "jpeg"])
def test_camera_frames_decode_to_rgb_from_a_bag(tmp_path: Path, encoding: str) -> None:
    """Image rgb8/bgr8 and CompressedImage jpeg all give the same RGB (no channel swap)."""
    write_demo_bag(tmp_path / "bag", DemoSpec(camera_encoding=encoding,  # type: ignore[arg-type]
                                              duration_s=0.2))
    with BagReader(tmp_path / "bag") as reader:
        msgtype = reader.topics[UR5E_CAMERA].msgtype
        frames = [camera_frame_to_rgb(m.msg, msgtype) for m in reader.messages([UR5E_CAMERA])]
    assert msgtype == (COMPRESSED_IMAGE if encoding == "jpeg" else IMAGE)
    tolerance = 2 if encoding == "jpeg" else 0
    for k, frame in enumerate(frames):
        assert frame.dtype == np.uint8 and frame.shape == (24, 32, 3)
        assert np.abs(frame.astype(int) - frame_pixels(k, (24, 32))).max() <= tolerance


def _image(encoding: str, pixels: np.ndarray, pad: int = 0) -> object:
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    padded = np.concatenate([rows, np.full((height, pad), 77, np.uint8)], axis=1)
    return T[IMAGE](header=T["std_msgs/msg/Header"](
        stamp=T["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id=""),
        height=height, width=width, encoding=encoding, is_bigendian=0,
        step=padded.shape[1], data=padded.reshape(-1))


def test_every_supported_raw_encoding_and_row_padding() -> None:
    """rgba8, bgra8 and mono8 convert like the node does; padded rows (step) are honoured."""
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 9
    alpha = np.full((2, 3, 1), 255, np.uint8)
    grey = rgb[..., 0]
    cases = {
        "rgb8": (rgb, rgb), "bgr8": (rgb[..., ::-1], rgb),
        "rgba8": (np.concatenate([rgb, alpha], axis=2), rgb),
        "bgra8": (np.concatenate([rgb[..., ::-1], alpha], axis=2), rgb),
        "mono8": (grey, np.repeat(grey[..., None], 3, axis=2)),
    }
    for encoding, (pixels, expected) in cases.items():
        for pad in (0, 3):
            got = camera_frame_to_rgb(_image(encoding, np.ascontiguousarray(pixels), pad), IMAGE)
            np.testing.assert_array_equal(got, expected, err_msg=f"{encoding} pad {pad}")


def test_png_and_grey_jpeg_compressed_images_decode() -> None:
    """CompressedImage PNG (lossless) and a grey JPEG both give 3-channel RGB."""
    rgb = frame_pixels(5, (8, 8))
    _, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    _, grey = cv2.imencode(".jpg", np.full((8, 8), 90, np.uint8))
    for data, expected, fmt in ((png, rgb, "png"), (grey, np.full((8, 8, 3), 90), "jpeg")):
        msg = T[COMPRESSED_IMAGE](header=T["std_msgs/msg/Header"](
            stamp=T["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id=""),
            format=fmt, data=data.reshape(-1))
        got = camera_frame_to_rgb(msg, COMPRESSED_IMAGE)
        assert got.shape == (8, 8, 3)
        assert np.abs(got.astype(int) - expected).max() <= 1


def test_unsupported_or_broken_images_are_refused() -> None:
    """Depth encodings and undecodable compressed data raise ValueError, never guess."""
    depth = T[IMAGE](header=T["std_msgs/msg/Header"](
        stamp=T["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id=""),
        height=1, width=1, encoding="16UC1", is_bigendian=0, step=2,
        data=np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="16UC1"):
        camera_frame_to_rgb(depth, IMAGE)
    full = _image("rgb8", np.zeros((2, 2, 3), np.uint8))
    short = dataclasses.replace(full, data=full.data[:-1])  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="does not match"):
        camera_frame_to_rgb(short, IMAGE)
    junk = T[COMPRESSED_IMAGE](header=depth.header, format="jpeg",
                               data=np.frombuffer(b"not an image", np.uint8))
    with pytest.raises(ValueError, match="could not be decoded"):
        camera_frame_to_rgb(junk, COMPRESSED_IMAGE)


def test_missing_topic_names_bag_topic_and_what_the_bag_has(full_bag: Path) -> None:
    """A profile topic absent from the bag: the error says which bag, which topic, and lists
    the bag's topics (a typo in a namespace is then obvious)."""
    with BagReader(full_bag) as reader, pytest.raises(MissingTopicError) as error:
        reader.require("/wrist_camera/image_raw", (IMAGE, COMPRESSED_IMAGE), "camera")
    message = str(error.value)
    assert str(full_bag) in message and "/wrist_camera/image_raw" in message
    assert UR5E_CAMERA in message and "/joint_states" in message


def test_wrong_message_type_on_a_topic(full_bag: Path) -> None:
    with BagReader(full_bag) as reader, pytest.raises(WrongTypeError) as error:
        reader.require(INSTRUCTION_TOPIC, (IMAGE, COMPRESSED_IMAGE), "camera")
    assert "std_msgs/msg/String" in str(error.value) and INSTRUCTION_TOPIC in str(error.value)


def test_missing_or_non_bag_folders(tmp_path: Path) -> None:
    """No folder, a file, an empty folder and a storage file without metadata.yaml each say
    what is wrong (the last suggests `ros2 bag reindex`)."""
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "killed_0.mcap").write_bytes(b"\x89MCAP0\r\n")
    cases = {tmp_path / "nope": "no such folder", tmp_path / "file.txt": "not a folder",
             tmp_path / "empty": "not a rosbag2 folder", killed: "reindex"}
    for path, expected in cases.items():
        with pytest.raises(BagError, match=expected) as error, BagReader(path):
            pass
        assert str(path) in str(error.value)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_truncated_storage_file_is_a_clear_error(tmp_path: Path, storage: str) -> None:
    """A storage file cut short (recorder killed, disk full) raises BagError naming the bag."""
    bag = tmp_path / "bag"
    write_demo_bag(bag, DemoSpec(storage=storage, duration_s=0.5))  # type: ignore[arg-type]
    data_file = next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    with pytest.raises(BagError, match="truncated or damaged") as error, BagReader(bag) as r:
        list(r.messages(r.topics))
    assert str(bag) in str(error.value)


@pytest.mark.parametrize("garbage", ["::: {{{ not yaml\n\x00", "- just\n- a list\n"])
def test_garbage_metadata_is_a_clear_error(tmp_path: Path, garbage: str) -> None:
    bag = tmp_path / "bag"
    write_demo_bag(bag, DemoSpec(duration_s=0.2))
    (bag / "metadata.yaml").write_text(garbage)
    with pytest.raises(BagError, match=r"metadata\.yaml is corrupt") as error, BagReader(bag):
        pass
    assert str(bag) in str(error.value)


def test_find_bags_accepts_bags_and_folders_of_bags(tmp_path: Path) -> None:
    """A DIR may be a bag or hold bags; duplicates collapse; a folder with none is an error."""
    for name in ("b", "a"):
        write_demo_bag(tmp_path / "demos" / name, DemoSpec(duration_s=0.2))
    (tmp_path / "demos" / "notes").mkdir()
    shutil.copytree(tmp_path / "demos" / "a", tmp_path / "single")
    found = find_bags([tmp_path / "demos", tmp_path / "single", tmp_path / "demos" / "a"])
    assert found == [tmp_path / "demos" / "a", tmp_path / "demos" / "b", tmp_path / "single"]
    with pytest.raises(BagError, match="neither a rosbag2 folder"):
        find_bags([tmp_path / "demos" / "notes"])
