"""Disturbed reaches for recording: demonstrations that also show the way back.

Trained on the expert's perfect paths only, a policy never sees the arm off its path, so its
own small errors grow unanswered (it reaches 2-7 cm off the cube, or drifts off it on the way
down, and closes on air). Recorded with a `ReachDisturbance` (the idea of DART, Laskey et al.
2017), the arm executes the expert's targets plus a smooth random joint offset while it reaches
the cube (the approach and the descent to it), which fades to zero by the time the fingers are
at the cube; the bag's commands stay the expert's, so from every disturbed state the
demonstration says where the arm should go. An episode whose disturbed fingers knock the cube
away is not solved and so not kept.

`approach_offset` is the other way to show it: the expert's approach itself ends off the cube
(where a policy's imprecise approach ends), so its descent shows how the view of the cube from
there is corrected on the way down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ReachDisturbance:
    """Ornstein-Uhlenbeck offsets of each arm joint, faded out before the reach ends.

    Attributes:
        scale_rad: Standard deviation of each joint's offset (0.04 rad moves the fingertips
            about 3 cm).
        correlation_s: How long an offset persists (the process's time constant).
        fade_s: The offsets ramp linearly to zero over this long before the reach's end.
    """

    scale_rad: float
    correlation_s: float = 0.5
    fade_s: float = 0.6

    def __post_init__(self) -> None:
        if not self.scale_rad >= 0 or not self.correlation_s > 0 or not self.fade_s > 0:
            raise ValueError(f"need scale_rad >= 0, correlation_s > 0 and fade_s > 0, got "
                             f"{self.scale_rad}, {self.correlation_s}, {self.fade_s}")

    def offsets(self, rng: np.random.Generator, steps: int, joints: int, period_s: float,
                until_s: float) -> np.ndarray:
        """Offsets `[steps, joints]` (rad) for the control periods starting at k * period_s,
        zero from `until_s` on."""
        keep = math.exp(-period_s / self.correlation_s)
        noise = rng.standard_normal((steps, joints)) * self.scale_rad
        offsets = np.empty((steps, joints))
        offsets[0] = noise[0]
        for k in range(1, steps):
            offsets[k] = keep * offsets[k - 1] + math.sqrt(1 - keep**2) * noise[k]
        times = np.arange(steps) * period_s
        fade = np.clip((until_s - times) / self.fade_s, 0.0, 1.0)
        return offsets * fade[:, None]


def approach_offset(rng: np.random.Generator, radius_m: float) -> tuple[float, float]:
    """A horizontal offset (dx, dy, m) drawn uniformly from the disc of `radius_m`."""
    if not radius_m >= 0:
        raise ValueError(f"need radius_m >= 0, got {radius_m}")
    distance = radius_m * math.sqrt(rng.uniform())
    angle = rng.uniform(0.0, 2 * math.pi)
    return distance * math.cos(angle), distance * math.sin(angle)
