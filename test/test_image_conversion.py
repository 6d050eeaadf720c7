"""Camera messages to RGB: every supported encoding pixel-exact, everything else refused."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from vam_policy.ros import image_conversion
from vam_policy.ros.image_conversion import (
    SUPPORTED_ENCODINGS,
    UnsupportedEncodingError,
    compressed_to_rgb,
    image_to_rgb,
)

# A 2x3 RGB reference image with a distinct value in every byte.
RGB = np.array(
    [[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
     [[10, 20, 30], [40, 50, 60], [70, 80, 90]]],
    dtype=np.uint8,
)
ALPHA = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8)
GREY = np.array([[0, 17, 34], [200, 220, 255]], dtype=np.uint8)


def _pixels(encoding: str) -> tuple[np.ndarray, np.ndarray]:
    """(pixel bytes [H, W, C] in `encoding`, the RGB image the conversion must give)."""
    if encoding == "mono8":
        return GREY[:, :, None], np.repeat(GREY[:, :, None], 3, axis=2)
    layout = {
        "rgb8": [RGB[..., 0], RGB[..., 1], RGB[..., 2]],
        "bgr8": [RGB[..., 2], RGB[..., 1], RGB[..., 0]],
        "rgba8": [RGB[..., 0], RGB[..., 1], RGB[..., 2], ALPHA],
        "bgra8": [RGB[..., 2], RGB[..., 1], RGB[..., 0], ALPHA],
    }[encoding]
    return np.stack(layout, axis=2), RGB


def _image(encoding: str, pixels: np.ndarray, pad: int = 0) -> Image:
    height, width, channels = pixels.shape
    rows = pixels.reshape(height, width * channels)
    padding = np.full((height, pad), 0xEE, dtype=np.uint8)  # garbage that must not show up
    data = np.hstack([rows, padding]).tobytes()
    return Image(height=height, width=width, encoding=encoding, is_bigendian=0,
                 step=width * channels + pad, data=data)


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
@pytest.mark.parametrize("pad", [0, 5])
def test_every_supported_encoding_gives_exact_rgb(encoding: str, pad: int) -> None:
    """Channel order and row padding (`step` > width * channels) are honoured exactly."""
    pixels, expected = _pixels(encoding)
    rgb = image_to_rgb(_image(encoding, pixels, pad))
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert np.array_equal(rgb, expected)


def test_result_owns_its_pixels() -> None:
    """The node keeps frames in buffers; they must not alias message memory."""
    msg = _image("rgb8", RGB)
    rgb = image_to_rgb(msg)
    rgb[:] = 0
    assert bytes(msg.data) == RGB.tobytes()
    assert rgb.flags.c_contiguous and rgb.flags.owndata


@pytest.mark.parametrize("encoding", ["16UC1", "bayer_rggb8", "yuv422", "32FC1", "8UC3", "RGB8"])
def test_unsupported_encodings_are_refused_naming_them(encoding: str) -> None:
    msg = Image(height=1, width=1, encoding=encoding, step=4, data=bytes(4))
    with pytest.raises(UnsupportedEncodingError) as caught:
        image_to_rgb(msg)
    assert repr(encoding) in str(caught.value) and "rgb8, bgr8" in str(caught.value)


@pytest.mark.parametrize("delta", [-1, 1, -9])
def test_data_length_other_than_height_times_step_is_refused(delta: int) -> None:
    msg = _image("bgr8", _pixels("bgr8")[0], pad=2)
    msg.data = bytes(msg.data)[: len(msg.data) + delta] if delta < 0 else bytes(msg.data) + b"x"
    with pytest.raises(ValueError, match=r"height \* step = 22 bytes"):
        image_to_rgb(msg)


def test_step_shorter_than_a_row_is_refused() -> None:
    msg = Image(height=2, width=3, encoding="rgb8", step=8, data=bytes(16))
    with pytest.raises(ValueError, match="step 8 is shorter"):
        image_to_rgb(msg)


def _compressed(fmt: str, extension: str, image: np.ndarray) -> CompressedImage:
    ok, encoded = cv2.imencode(extension, image)
    assert ok
    return CompressedImage(format=fmt, data=encoded.tobytes())


def test_png_round_trip_is_exact_for_colour_grey_and_alpha() -> None:
    bgr = RGB[:, :, ::-1]
    msg = _compressed("rgb8; png compressed bgr8", ".png", bgr)
    assert np.array_equal(compressed_to_rgb(msg), RGB)
    grey = compressed_to_rgb(_compressed("mono8; png compressed mono8", ".png", GREY))
    assert np.array_equal(grey, np.repeat(GREY[:, :, None], 3, axis=2))
    bgra = np.dstack([bgr, ALPHA])
    assert np.array_equal(compressed_to_rgb(_compressed("png", ".png", bgra)), RGB)


def test_jpeg_round_trip_keeps_colours_in_rgb_order() -> None:
    """A uniform red block must come back red (not blue): the channel order is the risk."""
    bgr = np.zeros((16, 16, 3), dtype=np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    rgb = compressed_to_rgb(_compressed("rgb8; jpeg compressed bgr8", ".jpg", bgr))
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - [200, 0, 0]).max() <= 3


def test_compressed_depth_and_16_bit_images_are_refused() -> None:
    depth = _compressed("16UC1; compressedDepth png", ".png", np.zeros((4, 4), np.uint16))
    with pytest.raises(UnsupportedEncodingError, match="compressedDepth"):
        compressed_to_rgb(depth)
    wide = _compressed("png", ".png", np.full((4, 4), 1000, np.uint16))
    with pytest.raises(UnsupportedEncodingError, match="uint16"):
        compressed_to_rgb(wide)
    with pytest.raises(UnsupportedEncodingError, match="neither JPEG nor PNG"):
        compressed_to_rgb(CompressedImage(format="webp", data=b"RIFF\x00\x00\x00\x00WEBP"))


def test_corrupt_compressed_data_is_refused() -> None:
    with pytest.raises(ValueError, match="could not decode"):
        compressed_to_rgb(CompressedImage(format="jpeg", data=b"\xff\xd8\xff" + bytes(40)))


class _BridgeIgnoringStep:
    """A converter with the classic cv_bridge bug: rows read as if unpadded."""

    def imgmsg_to_cv2(self, msg: Image, desired_encoding: str) -> np.ndarray:
        channels = 1 if msg.encoding == "mono8" else len(msg.encoding) - 1
        flat = np.frombuffer(bytes(msg.data), np.uint8)[: msg.height * msg.width * channels]
        pixels = flat.reshape(msg.height, msg.width, channels)
        return image_conversion._numpy_image_to_rgb(
            Image(height=msg.height, width=msg.width, encoding=msg.encoding,
                  step=msg.width * channels, data=pixels.tobytes())
        )


class _BridgeLikeNumpy:
    def imgmsg_to_cv2(self, msg: Image, desired_encoding: str) -> np.ndarray:
        return image_conversion._numpy_image_to_rgb(msg)


def test_a_bridge_is_used_only_if_it_matches_the_numpy_path() -> None:
    """A cv_bridge that mishandles padded rows must fall back to numpy, not corrupt frames."""
    assert image_conversion._load_bridge(_BridgeIgnoringStep()) is None
    faithful = _BridgeLikeNumpy()
    assert image_conversion._load_bridge(faithful) is faithful


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_real_cv_bridge_matches_the_numpy_path(encoding: str) -> None:
    """On a ROS 2 install with cv_bridge, both paths give the same pixels."""
    cv_bridge = pytest.importorskip("cv_bridge", reason="no cv_bridge in this environment")
    pixels, expected = _pixels(encoding)
    msg = _image(encoding, pixels, pad=3)
    converted = np.asarray(cv_bridge.CvBridge().imgmsg_to_cv2(msg, desired_encoding="rgb8"))
    assert np.array_equal(converted, expected)
    assert np.array_equal(image_to_rgb(msg), expected)
