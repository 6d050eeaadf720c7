"""Camera messages to RGB arrays: the one place the node turns images into numpy.

`image_to_rgb` takes a sensor_msgs/Image and `compressed_to_rgb` a sensor_msgs/CompressedImage;
both return a new [H, W, 3] uint8 RGB array. Raw images go through cv_bridge when it imports
and passes a parity check at load (users' ROS 2 installs), else through an equivalent numpy
path (this workspace's PyPI wheels have no working cv_bridge). Both paths accept the same
encodings and give the same pixels; anything else is refused rather than guessed, because a
policy fed swapped channels or rescaled depth fails silently.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

SUPPORTED_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
SUPPORTED_COMPRESSED = ("jpeg", "png")

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
_MAGIC = {b"\xff\xd8\xff": "jpeg", b"\x89PNG\r\n\x1a\n": "png"}


class UnsupportedEncodingError(ValueError):
    """An image encoding or compressed format this module does not convert."""


def image_to_rgb(msg: Any) -> np.ndarray:
    """RGB [H, W, 3] uint8 copy of a sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8 or mono8).

    Honours `step` (rows may be padded). Raises UnsupportedEncodingError for other encodings
    and ValueError when the data length is not height * step.
    """
    encoding = msg.encoding
    if encoding not in _CHANNELS:
        raise UnsupportedEncodingError(
            f"image encoding {encoding!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_ENCODINGS)}"
        )
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    channels = _CHANNELS[encoding]
    if height < 1 or width < 1:
        raise ValueError(f"image: expected height and width >= 1, got {height}x{width}")
    if step < width * channels:
        raise ValueError(f"image: step {step} is shorter than width * channels = "
                         f"{width * channels} for {encoding}")
    if len(msg.data) != height * step:
        raise ValueError(f"image: expected height * step = {height * step} bytes of data, "
                         f"got {len(msg.data)}")
    if _BRIDGE is not None:
        return np.array(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8"), dtype=np.uint8)
    return _numpy_image_to_rgb(msg)


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """RGB [H, W, 3] uint8 array decoded from a sensor_msgs/CompressedImage (JPEG or PNG).

    Decoded with OpenCV whether or not cv_bridge is present: cv_bridge decodes with the same
    cv2.imdecode but assumes three-channel BGR, which breaks on grey or alpha images. 8-bit
    grey, BGR and BGRA content is converted; 16-bit images and compressedDepth are refused
    (UnsupportedEncodingError); undecodable data raises ValueError.
    """
    fmt = str(msg.format)
    original = fmt.split(";")[0].strip()
    if "compresseddepth" in fmt.lower() or (
        ";" in fmt and original not in _CHANNELS
    ):
        raise UnsupportedEncodingError(
            f"compressed format {fmt!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_COMPRESSED)} of {', '.join(SUPPORTED_ENCODINGS)} images"
        )
    data = _as_uint8(msg.data)
    container = next((name for magic, name in _MAGIC.items()
                      if data[: len(magic)].tobytes() == magic), None)
    if container is None:
        raise UnsupportedEncodingError(
            f"compressed data (format {fmt!r}) is neither JPEG nor PNG; supported: "
            f"{', '.join(SUPPORTED_COMPRESSED)}"
        )
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"compressed image: could not decode {len(data)} bytes of {container}")
    if image.dtype != np.uint8:
        raise UnsupportedEncodingError(
            f"compressed {container} holds {image.dtype} pixels; only 8-bit images are supported"
        )
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    conversion = {3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}.get(image.shape[2])
    if conversion is None:
        raise UnsupportedEncodingError(
            f"compressed {container} has {image.shape[2]} channels; expected 1, 3 or 4"
        )
    return cv2.cvtColor(image, conversion)


def _numpy_image_to_rgb(msg: Any) -> np.ndarray:
    """The numpy path of image_to_rgb, for a message already checked by it."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    channels = _CHANNELS[msg.encoding]
    rows = _as_uint8(msg.data).reshape(height, step)
    pixels = rows[:, : width * channels].reshape(height, width, channels)
    if msg.encoding == "mono8":
        return np.repeat(pixels, 3, axis=2)
    if msg.encoding.startswith("bgr"):
        return pixels[:, :, 2::-1].copy()
    return pixels[:, :, :3].copy()


def _as_uint8(data: Any) -> np.ndarray:
    """A uint8 view of message data (array.array or bytes from rclpy; a list if built by hand)."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8)


def _parity_samples() -> list[Any]:
    """One small padded image per encoding, with distinct values in every byte."""
    from sensor_msgs.msg import Image

    samples = []
    for encoding, channels in _CHANNELS.items():
        height, width, pad = 2, 3, 2
        step = width * channels + pad
        data = (np.arange(height * step) * 7 % 251).astype(np.uint8).tobytes()
        samples.append(Image(height=height, width=width, encoding=encoding, is_bigendian=0,
                             step=step, data=data))
    return samples


def _load_bridge(bridge: Any | None = None) -> Any | None:
    """A cv_bridge.CvBridge that converts every supported encoding exactly like the numpy
    path, or None. Without an argument, tries to import cv_bridge."""
    # Broad on purpose: a cv_bridge built for another numpy or ROS fails in varied ways
    # (ImportError, AttributeError, RuntimeError, cv_bridge's own CvBridgeError).
    try:
        if bridge is None:
            from cv_bridge import CvBridge

            bridge = CvBridge()
        for msg in _parity_samples():
            converted = np.asarray(bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
            if not np.array_equal(converted, _numpy_image_to_rgb(msg)):
                return None
    except Exception:
        return None
    return bridge


_BRIDGE = _load_bridge()
BACKEND = "cv_bridge" if _BRIDGE is not None else "numpy"
