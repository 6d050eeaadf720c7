"""Instruction-conditioned tasks in the one tabletop scene, looked up by name.

A task owns three things the simulator must not guess: the instruction a policy is given, where
the cubes may start (sampled from the episode seed, so an episode is reproducible), and the
success check. All tasks share the scene, so one policy learns several instructions from the
same kind of image. Coordinates are world frame, metres: +x from the robot towards the camera,
+y to the camera's right, so "left" in the image is -y.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from vam_policy.sim.scene import (
    CUBE_COLORS,
    CUBE_HALF_SIZE_M,
    TABLE_FULL_SIZE,
    TABLE_TOP_Z,
    CubePose,
)

# Where cube centres may start: inside the arm's comfortable top-down reach, in front of it.
START_X_RANGE: tuple[float, float] = (-0.14, 0.10)
START_Y_RANGE: tuple[float, float] = (-0.20, 0.20)
# Centre-to-centre gap that leaves room for open fingers (8 cm span) around any cube.
MIN_CUBE_SPACING_M = 0.10
CUBE_REST_Z = TABLE_TOP_Z + CUBE_HALF_SIZE_M
_MAX_LAYOUT_TRIES = 1000


@dataclass(frozen=True)
class Task:
    """Common part of a task: a name for the registry, an instruction and the cube it is about."""

    name: str
    instruction: str
    cube: str

    def sample_layout(self, rng: np.random.Generator) -> dict[str, CubePose]:
        """Cube poses that do not overlap and leave the task solvable, drawn from `rng`."""
        for _ in range(_MAX_LAYOUT_TRIES):
            poses = {
                color: CubePose(
                    x=float(rng.uniform(*self._x_range(color))),
                    y=float(rng.uniform(*self._y_range(color))),
                    yaw=float(rng.uniform(-np.pi / 4, np.pi / 4)),
                )
                for color in CUBE_COLORS
            }
            if _spaced(poses) and self._layout_ok(poses):
                return poses
        raise RuntimeError(f"task {self.name!r}: no valid layout in {_MAX_LAYOUT_TRIES} tries")

    def success(self, start: Mapping[str, np.ndarray], now: Mapping[str, np.ndarray]) -> bool:
        """Whether the cube positions `now` (colour -> xyz) solve the task begun at `start`."""
        raise NotImplementedError

    def _x_range(self, color: str) -> tuple[float, float]:
        return START_X_RANGE

    def _y_range(self, color: str) -> tuple[float, float]:
        return START_Y_RANGE

    def _layout_ok(self, poses: Mapping[str, CubePose]) -> bool:
        return True


@dataclass(frozen=True)
class LiftTask(Task):
    """Pick `cube` up: success once its centre is `lift_m` above where it rests on the table."""

    lift_m: float = 0.05

    def success(self, start: Mapping[str, np.ndarray], now: Mapping[str, np.ndarray]) -> bool:
        return bool(now[self.cube][2] > CUBE_REST_Z + self.lift_m)


@dataclass(frozen=True)
class PushLeftTask(Task):
    """Slide `cube` along the table towards the camera's left (-y) by more than `push_m`.

    The cube must stay on the table (not be carried), and the other cubes are placed out of its
    way so the push is always possible.
    """

    push_m: float = 0.10
    # Room the pushed cube sweeps: its path plus the fingers behind it.
    corridor_half_width_m: float = 0.08
    corridor_behind_m: float = 0.12
    corridor_ahead_m: float = 0.25

    def success(self, start: Mapping[str, np.ndarray], now: Mapping[str, np.ndarray]) -> bool:
        moved_left = start[self.cube][1] - now[self.cube][1]
        on_table = abs(now[self.cube][2] - CUBE_REST_Z) < 0.01
        return bool(moved_left > self.push_m and on_table)

    def _y_range(self, color: str) -> tuple[float, float]:
        # The pushed cube starts right of centre, so it has room to go left and stay reachable.
        return (0.0, START_Y_RANGE[1]) if color == self.cube else START_Y_RANGE

    def _layout_ok(self, poses: Mapping[str, CubePose]) -> bool:
        pushed = poses[self.cube]
        for color, pose in poses.items():
            in_x = abs(pose.x - pushed.x) < self.corridor_half_width_m
            in_y = pushed.y - self.corridor_ahead_m < pose.y < pushed.y + self.corridor_behind_m
            if color != self.cube and in_x and in_y:
                return False
        return pushed.y - self.corridor_ahead_m > -TABLE_FULL_SIZE[1] / 2


def _spaced(poses: Mapping[str, CubePose]) -> bool:
    points = np.array([(p.x, p.y) for p in poses.values()])
    gaps = np.linalg.norm(points[:, None] - points[None, :], axis=-1)
    return bool(np.all(gaps[np.triu_indices(len(points), k=1)] >= MIN_CUBE_SPACING_M))


def _build_registry() -> dict[str, Task]:
    tasks: list[Task] = []
    for color in CUBE_COLORS:
        tasks.append(LiftTask(f"lift_{color}", f"lift the {color} cube", color))
        tasks.append(
            PushLeftTask(f"push_{color}_left", f"push the {color} cube to the left", color)
        )
    return {task.name: task for task in tasks}


TASKS: Mapping[str, Task] = _build_registry()


def get_task(name: str) -> Task:
    """The registered task called `name`; a typo gets the closest names in the error."""
    if name in TASKS:
        return TASKS[name]
    close = difflib.get_close_matches(name, TASKS, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"unknown sim task {name!r}.{hint} Known tasks: {', '.join(sorted(TASKS))}")
