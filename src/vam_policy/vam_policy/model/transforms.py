"""Preprocessing shared by the dataset builder and the live node, so the two cannot drift.

Each transform is a small callable on numpy arrays. The dataset builder applies them to
frames and joint states read from bags; the node applies the very same objects to its
buffers. Nothing here knows about ROS messages.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

ActionRepresentation = Literal["absolute", "relative"]


def reorder_joints(
    names: list[str] | tuple[str, ...], values: np.ndarray, wanted: tuple[str, ...]
) -> np.ndarray:
    """Return `values` ordered as `wanted`; extra joints (e.g. grippers) are dropped.

    Raises ValueError naming the joints that are missing or duplicated, because a policy fed
    a wrong joint order would send wrong targets to every joint.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(names),):
        raise ValueError(
            f"expected {len(names)} values for joints {list(names)}, got {values.shape}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"joint names contain duplicates: {list(names)}")
    index = {name: i for i, name in enumerate(names)}
    missing = [name for name in wanted if name not in index]
    if missing:
        raise ValueError(f"joint state lacks joints {missing}; it has {list(names)}")
    return values[[index[name] for name in wanted]]


@dataclass(frozen=True)
class FramePreprocess:
    """uint8 RGB frames `[T, H, W, 3]` -> float32 `[3, T, height, width]` in [-1, 1].

    Resizes so the frame covers the target size (aspect kept), then centre-crops: the same
    field of view in training and on the robot, whatever the camera resolution.
    """

    height: int
    width: int

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"frame size must be positive, got {self.height}x{self.width}")

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 RGB frames [T, H, W, 3], got {frames.dtype} {frames.shape}"
            )
        out = np.stack([self._resize_crop(frame) for frame in frames])  # [T, h, w, 3]
        out = out.astype(np.float32) / 127.5 - 1.0
        return np.ascontiguousarray(out.transpose(3, 0, 1, 2))  # [3, T, h, w]

    def _resize_crop(self, frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape[:2]
        scale = max(self.height / h, self.width / w)
        new_h, new_w = max(self.height, round(h * scale)), max(self.width, round(w * scale))
        if (new_h, new_w) != (h, w):
            interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            frame = cv2.resize(frame, (new_w, new_h), interpolation=interpolation)
        top, left = (new_h - self.height) // 2, (new_w - self.width) // 2
        return frame[top : top + self.height, left : left + self.width]


def tile_cameras(views: list[np.ndarray]) -> np.ndarray:
    """Place several cameras' frames `[T, H, W, 3]` side by side into one `[T, H, W*n, 3]`.

    The video model sees one picture per time step; tiling is how extra views enter it.
    Views must share T and H (resize first where cameras differ).
    """
    if not views:
        raise ValueError("expected at least one camera view")
    shapes = {(v.shape[0], v.shape[1]) for v in views}
    if len(shapes) != 1:
        raise ValueError(f"camera views must share [T, H], got {[v.shape for v in views]}")
    return views[0] if len(views) == 1 else np.concatenate(views, axis=2)


@dataclass(frozen=True)
class Normalizer:
    """Per-dimension standardisation with statistics saved beside the weights."""

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError(
                f"mean and std must be equal 1-D shapes, got {mean.shape}, {std.shape}"
            )
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise ValueError("normalization statistics must be finite with std > 0")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @classmethod
    def identity(cls, dims: int) -> Normalizer:
        return cls(np.zeros(dims), np.ones(dims))

    @classmethod
    def fit(cls, samples: np.ndarray, min_std: float = 1e-3) -> Normalizer:
        """Statistics over all leading axes of `samples [..., D]`.

        A dimension that barely varies (a joint the demos never moved) keeps std 1, so a small
        deviation on the robot is not blown up into a huge normalized value.
        """
        flat = np.asarray(samples, np.float64).reshape(-1, np.shape(samples)[-1])
        std = flat.std(axis=0)
        return cls(mean=flat.mean(axis=0), std=np.where(std < min_std, 1.0, std))

    def normalize(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float32) - self.mean) / self.std

    def unnormalize(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32) * self.std + self.mean


@dataclass(frozen=True)
class ActionCoding:
    """Absolute joint targets, or targets relative to the joint state the chunk starts from."""

    representation: ActionRepresentation = "absolute"

    def __post_init__(self) -> None:
        if self.representation not in ("absolute", "relative"):
            raise ValueError(
                "action representation must be 'absolute' or 'relative', "
                f"got {self.representation!r}"
            )

    def encode(self, targets: np.ndarray, current: np.ndarray) -> np.ndarray:
        """targets `[..., H, J]`, current `[..., J]` -> model action space `[..., H, J]`."""
        if self.representation == "absolute":
            return np.asarray(targets, np.float32)
        return np.asarray(targets, np.float32) - np.asarray(current, np.float32)[..., None, :]

    def decode(self, actions: np.ndarray, current: np.ndarray) -> np.ndarray:
        """Inverse of `encode`: model actions -> absolute joint targets `[..., H, J]`."""
        if self.representation == "absolute":
            return np.asarray(actions, np.float32)
        return np.asarray(actions, np.float32) + np.asarray(current, np.float32)[..., None, :]


@dataclass
class FrameHistory:
    """Frames of one camera, sampled at the model's fps whatever the camera's rate.

    `push` keeps frames in stamp order (an older stamp than the newest is rejected);
    `sample(t, n, fps)` returns the n frames shown at t - (n-1)/fps, ..., t: for each
    instant the newest frame not later than it. Used by the node's buffers and by the
    dataset builder, so that both see the same history.
    """

    capacity: int = 64
    _stamps: list[float] = field(default_factory=list)
    _frames: list[np.ndarray] = field(default_factory=list)
    _last_stamp: float | None = None  # newest ever pushed, kept by `forget_before`

    def push(self, stamp_s: float, frame: np.ndarray) -> None:
        if not np.isfinite(stamp_s):
            raise ValueError(f"frame stamp must be finite, got {stamp_s}")
        if self._last_stamp is not None and stamp_s <= self._last_stamp:
            raise ValueError(
                f"frame stamp {stamp_s:.6f} s is not newer than the last one "
                f"{self._last_stamp:.6f} s"
            )
        self._last_stamp = float(stamp_s)
        self._stamps.append(float(stamp_s))
        self._frames.append(frame)
        if len(self._stamps) > self.capacity:
            del self._stamps[0], self._frames[0]

    @property
    def newest_stamp(self) -> float | None:
        return self._stamps[-1] if self._stamps else None

    def forget_before(self, t: float) -> None:
        """Drop the frames stamped before t: a history of the world before a pause or reset
        must not reach the model; `sample` waits until new frames reach back again."""
        keep = bisect.bisect_left(self._stamps, t)
        del self._stamps[:keep], self._frames[:keep]

    def sample(self, t: float, n: int, fps: float) -> np.ndarray | None:
        """`[n, H, W, 3]` frames ending at t, or None while the history does not reach back."""
        if n <= 0 or fps <= 0:
            raise ValueError(f"need n > 0 and fps > 0, got n={n}, fps={fps}")
        picked = []
        for k in range(n - 1, -1, -1):
            i = bisect.bisect_right(self._stamps, t - k / fps + 1e-9) - 1
            if i < 0:
                return None
            picked.append(self._frames[i])
        return np.stack(picked)
