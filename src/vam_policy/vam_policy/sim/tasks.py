"""Instruction-conditioned tasks in the one tabletop scene, looked up by name.

A task owns three things the simulator must not guess: the instruction a policy is given, where
the cubes may start (sampled from the episode seed, so an episode is reproducible), and the
success check. All tasks share the scene, so one policy learns several instructions from the
same kind of image. Coordinates are world frame, metres: +x from the robot towards the camera,
+y to the camera's right, so "left" in the image is -y.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from vam_policy.data.augment import swapped_from
from vam_policy.sim.scene import (
    CUBE_COLORS,
    CUBE_HALF_SIZE_M,
    TABLE_TOP_Z,
    CubePose,
)

# Where cube centres start: one cube in each of three depth rows (x), the colours shuffled over
# the rows by the seed, each row jittered a little in x and freely across START_Y_RANGE. Which
# row holds the named cube is a three-way choice only colour and instruction settle; the
# across-table position is a 12 cm reach to see. Rows 11.5 cm apart keep every cube clear of
# its neighbours' open fingers (8 cm span) and of a pushed cube's path.
ROW_X: tuple[float, float, float] = (-0.135, -0.02, 0.095)
ROW_X_JITTER_M = 0.0075
START_Y_RANGE: tuple[float, float] = (-0.04, 0.08)
MIN_CUBE_SPACING_M = 0.10
CUBE_REST_Z = TABLE_TOP_Z + CUBE_HALF_SIZE_M


@dataclass(frozen=True)
class Task:
    """Common part of a task: a name for the registry, an instruction and the cube it is about."""

    name: str
    instruction: str
    cube: str

    def episode_rng(self, seed: int) -> np.random.Generator:
        """The random stream of episode `seed`, the same for every task: N demos of each task
        show N layouts, each under every instruction. So the camera alone cannot tell where
        to go, only the instruction can; with a layout per task and seed, a decoder learnt
        the layouts' motions by heart and chose the cube's row at chance on new layouts."""
        return np.random.default_rng(seed)

    def sample_layout(self, rng: np.random.Generator) -> dict[str, CubePose]:
        """Cube poses drawn from `rng`: the colours shuffled over the rows, then jittered."""
        rows = rng.permutation(len(ROW_X))
        return {
            color: CubePose(
                x=float(ROW_X[row] + rng.uniform(-ROW_X_JITTER_M, ROW_X_JITTER_M)),
                y=float(rng.uniform(*START_Y_RANGE)),
                yaw=float(rng.uniform(-np.pi / 4, np.pi / 4)),
            )
            for color, row in zip(CUBE_COLORS, rows, strict=True)
        }

    def success(self, start: Mapping[str, np.ndarray], now: Mapping[str, np.ndarray]) -> bool:
        """Whether the cube positions `now` (colour -> xyz) solve the task begun at `start`."""
        raise NotImplementedError


@dataclass(frozen=True)
class LiftTask(Task):
    """Pick `cube` up: success once its centre is `lift_m` above where it rests on the table."""

    lift_m: float = 0.05

    def success(self, start: Mapping[str, np.ndarray], now: Mapping[str, np.ndarray]) -> bool:
        return bool(now[self.cube][2] > CUBE_REST_Z + self.lift_m)


@dataclass(frozen=True)
class PushLeftTask(Task):
    """Slide `cube` along the table towards the camera's left (-y) by more than `push_m`.

    The cube must stay on the table (not be carried). The other cubes sit in other rows, out of
    the pushed cube's path.
    """

    push_m: float = 0.10

    def success(self, start: Mapping[str, np.ndarray], now: Mapping[str, np.ndarray]) -> bool:
        moved_left = start[self.cube][1] - now[self.cube][1]
        on_table = abs(now[self.cube][2] - CUBE_REST_Z) < 0.01
        return bool(moved_left > self.push_m and on_table)


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


_EPISODE_NAME = re.compile(r"(?:.*/)?([a-z]+(?:_[a-z]+)*)_(\d{4,})")


def episode_name(task: str, seed: int) -> str:
    """The name of the recording of `task` from `seed` (`vam sim record`'s bag folders)."""
    return f"{task}_{seed:04d}"


def parse_episode_name(source: str) -> tuple[Task, int] | None:
    """The task and seed of the recording an episode comes from, from its path (a dataset
    episode's source); None for any other source. A colour-swapped copy (`...#brg`, `vam
    dataset augment-colors`) gives its recording's: its instruction names the cube by its new
    colour, but that cube lies where the task's cube lies."""
    match = _EPISODE_NAME.fullmatch(swapped_from(source))
    if match is None or match.group(1) not in TASKS:
        return None
    return TASKS[match.group(1)], int(match.group(2))
