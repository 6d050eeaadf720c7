# ruff: noqa: E402 (imports follow the choice of GL backend, which mujoco reads at import)
"""The MuJoCo scene: robosuite's Panda at a table with a red, a green and a blue cube.

A robosuite `ManipulationEnv` subclass so the robot model, table, cameras and joint-position
controller are robosuite 1.5.2's own; everything task-specific (where the cubes go, what counts
as success) lives in `tasks.py`. The arm takes ABSOLUTE joint position targets through
robosuite's `JOINT_POSITION` controller; the fingers take an absolute opening target written
straight into the Panda gripper's position servos, because robosuite's `PandaGripper` only
integrates the sign of its command (stateful, so not a function of the action alone).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


# robosuite's import warns about optional extras this project does not use (private macro file,
# robosuite_models, mink IK for GR1), in every process; after the import it may warn again.
_robosuite_log = logging.getLogger("robosuite_logs")
_robosuite_log.addFilter(_errors_only)
import mujoco
from robosuite.controllers import load_composite_controller_config, load_part_controller_config
from robosuite.environments.manipulation.manipulation_env import ManipulationEnv
from robosuite.models.arenas import TableArena
from robosuite.models.objects import BoxObject
from robosuite.models.tasks import ManipulationTask

_robosuite_log.removeFilter(_errors_only)
_robosuite_log.setLevel(logging.WARNING)

ARM_JOINTS: tuple[str, ...] = tuple(f"robot0_joint{i}" for i in range(1, 8))
FINGER_JOINTS: tuple[str, str] = (
    "gripper0_right_finger_joint1",
    "gripper0_right_finger_joint2",
)
FINGER_ACTUATORS: tuple[str, str] = (
    "gripper0_right_gripper_finger_joint1",
    "gripper0_right_gripper_finger_joint2",
)
# Each finger travels 0..0.04 m (robosuite's panda_gripper.xml ctrlrange).
FINGER_TRAVEL_M = 0.04
# The site between the fingertips that the experts steer.
GRIP_SITE = "gripper0_right_grip_site"
CUBE_COLORS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.1, 0.1, 1.0),
    "green": (0.1, 0.7, 0.15, 1.0),
    "blue": (0.1, 0.25, 0.9, 1.0),
}
CUBE_HALF_SIZE_M = 0.02
TABLE_FULL_SIZE: tuple[float, float, float] = (0.8, 0.8, 0.05)
TABLE_TOP_Z = 0.8
# The fixed front camera the policy sees: from the camera's side of the table, looking back at
# the arm, framed tight on the workspace (a 4 cm cube spans ~7 pixels at the 64x64 the sim
# preset sees) with the gripper above it in view.
CAMERA_NAME = "agentview"
CAMERA_POS: tuple[float, float, float] = (0.42, 0.0, 1.22)
CAMERA_TARGET: tuple[float, float, float] = (-0.04, 0.0, 0.82)
CAMERA_FOVY_DEG = 45.0
# Joint-space gains: stiff enough to reach an absolute target within ~1e-3 rad (ENVIRONMENT.md).
ARM_KP = 150.0


@dataclass(frozen=True)
class CubePose:
    """A cube resting on the table: centre x, y (world, metres) and yaw about z (rad)."""

    x: float
    y: float
    yaw: float


def joint_position_controller_config() -> dict:
    """Panda composite config whose arm takes absolute joint targets (rad), gripper `GRIP`."""
    config = load_composite_controller_config(robot="Panda")
    arm = load_part_controller_config(default_controller="JOINT_POSITION")
    arm.update(
        input_type="absolute",
        input_max=np.pi,
        input_min=-np.pi,
        output_max=np.pi,
        output_min=-np.pi,
        kp=ARM_KP,
        gripper={"type": "GRIP"},
    )
    config["body_parts"]["right"] = arm
    return config


def look_at_quat(
    position: tuple[float, float, float], target: tuple[float, float, float]
) -> np.ndarray:
    """MuJoCo camera quaternion (w, x, y, z) at `position` looking at `target`, z up in the image.

    A MuJoCo camera looks along its -z axis with +y up, so the columns of its rotation are
    (right, up, backward).
    """
    forward = np.subtract(target, position, dtype=float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, (0.0, 0.0, 1.0))
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    rotation = np.stack([right, up, -forward], axis=1)
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, rotation.flatten())
    return quat


class TabletopScene(ManipulationEnv):
    """Table, Panda and three cubes; action: 7 absolute joint targets + gripper opening in [0, 1].

    Observables, rewards and robosuite's own camera rendering are switched off: `SimArm` reads
    the state from MuJoCo and renders with its own `mujoco.Renderer`, which keeps a step cheap.
    """

    def __init__(self, control_freq: float, horizon: int) -> None:
        self.cubes: dict[str, BoxObject] = {}
        self._cube_poses: dict[str, CubePose] = {}
        super().__init__(
            robots="Panda",
            controller_configs=joint_position_controller_config(),
            gripper_types="default",
            base_types="default",
            initialization_noise=None,
            use_camera_obs=False,
            has_renderer=False,
            has_offscreen_renderer=False,
            control_freq=control_freq,
            lite_physics=True,
            horizon=horizon,
            ignore_done=True,
            hard_reset=False,
            camera_names=CAMERA_NAME,
            renderer="mujoco",
        )
        model = self.sim.model
        self.arm_qpos_ids = np.array([model.get_joint_qpos_addr(j) for j in ARM_JOINTS])
        self.arm_qvel_ids = np.array([model.get_joint_qvel_addr(j) for j in ARM_JOINTS])
        self.finger_qpos_ids = np.array([model.get_joint_qpos_addr(j) for j in FINGER_JOINTS])
        self.finger_actuator_ids = np.array([model.actuator_name2id(a) for a in FINGER_ACTUATORS])
        self.cube_body_ids = {
            c: model.body_name2id(cube.root_body) for c, cube in self.cubes.items()
        }
        self._gripper_opening = 1.0
        self._arm_qpos = np.zeros(len(ARM_JOINTS))

    def _load_model(self) -> None:
        super()._load_model()
        robot = self.robots[0].robot_model
        robot.set_base_xpos(robot.base_xpos_offset["table"](TABLE_FULL_SIZE[0]))
        arena = TableArena(
            table_full_size=TABLE_FULL_SIZE,
            table_friction=(1.0, 5e-3, 1e-4),
            table_offset=(0.0, 0.0, TABLE_TOP_Z),
        )
        arena.set_origin([0, 0, 0])
        arena.set_camera(CAMERA_NAME, pos=CAMERA_POS, quat=look_at_quat(CAMERA_POS, CAMERA_TARGET),
                         camera_attribs={"fovy": str(CAMERA_FOVY_DEG)})
        self.cubes = {
            color: BoxObject(
                name=f"{color}_cube",
                size=[CUBE_HALF_SIZE_M] * 3,
                rgba=list(rgba),
                friction=[1.0, 5e-3, 1e-4],
            )
            for color, rgba in CUBE_COLORS.items()
        }
        self.model = ManipulationTask(
            mujoco_arena=arena,
            mujoco_robots=[robot],
            mujoco_objects=list(self.cubes.values()),
        )

    def _setup_observables(self) -> OrderedDict:
        return OrderedDict()

    def reward(self, action: np.ndarray | None = None) -> float:
        return 0.0

    def set_layout(self, poses: dict[str, CubePose], arm_qpos: np.ndarray) -> None:
        """Where the next `reset()` puts the cubes and the arm."""
        if set(poses) != set(CUBE_COLORS):
            raise ValueError(
                f"expected a pose for each of {sorted(CUBE_COLORS)}, got {sorted(poses)}"
            )
        self._cube_poses = dict(poses)
        self._arm_qpos = np.asarray(arm_qpos, dtype=float)

    def _reset_internal(self) -> None:
        super()._reset_internal()
        self._gripper_opening = 1.0
        if not self._cube_poses:
            return
        z = TABLE_TOP_Z + CUBE_HALF_SIZE_M
        for color, pose in self._cube_poses.items():
            quat_wxyz = [np.cos(pose.yaw / 2), 0.0, 0.0, np.sin(pose.yaw / 2)]
            self.sim.data.set_joint_qpos(
                self.cubes[color].joints[0], np.array([pose.x, pose.y, z, *quat_wxyz])
            )
        self.sim.data.qpos[self.arm_qpos_ids] = self._arm_qpos
        self.sim.data.qpos[self.finger_qpos_ids] = [FINGER_TRAVEL_M, -FINGER_TRAVEL_M]

    def _pre_action(self, action: np.ndarray, policy_step: bool = False) -> None:
        if policy_step:
            self._gripper_opening = float(np.clip(action[-1], 0.0, 1.0))
        super()._pre_action(np.concatenate([action[:-1], [0.0]]), policy_step)
        target = FINGER_TRAVEL_M * self._gripper_opening
        self.sim.data.ctrl[self.finger_actuator_ids] = [target, -target]

    def _check_success(self) -> bool:
        return False
