"""`SimArm`: the simulated Panda as the policy and its ROS node see it.

The interface is the real robot's: a camera image, 7 joint positions and velocities, a gripper
opening, and commands that are ABSOLUTE joint position targets (what a ros2_control
JointTrajectoryController hands its hardware each control step) plus a gripper opening target.
Everything else (robosuite, the cubes' true poses) stays behind this class, except the few
privileged reads the scripted experts and success checks need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# mujoco comes through `scene`, which chooses the headless GL backend before mujoco loads.
from vam_policy.model.transforms import tile_cameras
from vam_policy.sim.scene import (
    ARM_JOINTS,
    CAMERA_NAME,
    FINGER_TRAVEL_M,
    GRIP_SITE,
    TabletopScene,
    mujoco,
)
from vam_policy.sim.tasks import Task, get_task

# robosuite's MuJoCo timestep is 2 ms; a control period must be a whole number of them.
PHYSICS_HZ = 500.0


@dataclass(frozen=True)
class SimConfig:
    """How the simulated arm is run.

    Attributes:
        cameras: MuJoCo cameras the policy sees, in the order they are tiled (the profile's
            `/sim/camera/<camera>/image_raw` topics); `robot0_eye_in_hand` is the wrist camera.
        image_height: Rendered image rows (every camera); the model resizes them anyway.
        image_width: Rendered image columns.
        control_hz: Commands per simulated second; divides MuJoCo's 500 Hz physics rate.
        horizon_s: Episode length after which `truncated` turns true (no forced stop).
        init_joint_noise_rad: Uniform per-joint offset of the start pose, drawn from the episode
            seed, so demonstrations do not all start from one configuration.
        seed: Episode seed used by `reset` when none is given.
    """

    cameras: tuple[str, ...] = (CAMERA_NAME,)
    image_height: int = 128
    image_width: int = 128
    control_hz: float = 20.0
    horizon_s: float = 10.0
    init_joint_noise_rad: float = 0.03
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "cameras", tuple(self.cameras))
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras: expected unique camera names, got {list(self.cameras)}")
        if self.image_height < 16 or self.image_width < 16:
            raise ValueError(
                f"image must be at least 16x16, got {self.image_height}x{self.image_width}"
            )
        substeps = PHYSICS_HZ / self.control_hz
        if self.control_hz <= 0 or substeps != round(substeps):
            raise ValueError(
                f"control_hz must divide the {PHYSICS_HZ:g} Hz physics rate "
                f"(e.g. 10, 20, 25, 50), got {self.control_hz}"
            )
        if self.horizon_s <= 0:
            raise ValueError(f"horizon_s must be positive, got {self.horizon_s}")
        if self.init_joint_noise_rad < 0:
            raise ValueError(f"init_joint_noise_rad must be >= 0, got {self.init_joint_noise_rad}")


@dataclass(frozen=True)
class Observation:
    """What the robot senses after a reset or a step.

    Attributes:
        images: One image per `SimConfig.cameras`, each [H, W, 3] uint8, row 0 at the top
            (none after a step that was not rendered).
        joint_positions: [7] rad, in `SimArm.joint_names` order.
        joint_velocities: [7] rad/s, same order.
        gripper_opening: Finger opening in [0, 1]: 1 fully open (8 cm), 0 closed.
        time: Simulated seconds since the reset.
    """

    images: tuple[np.ndarray, ...]
    joint_positions: np.ndarray
    joint_velocities: np.ndarray
    gripper_opening: float
    time: float

    @property
    def rgb(self) -> np.ndarray:
        """The cameras side by side, [H, W * cameras, 3]: the picture the policy sees."""
        return tile_cameras([image[None] for image in self.images])[0]


@dataclass(frozen=True)
class Command:
    """One control step's command: absolute joint targets [7] (rad) and a gripper opening target.

    `gripper` uses the observation's units (1 open, 0 closed), so a policy's state and action
    share one space.
    """

    joint_targets: np.ndarray
    gripper: float


class SimArm:
    """Panda on a table with three cubes, stepped at `config.control_hz` with absolute targets."""

    joint_names: tuple[str, ...] = ARM_JOINTS

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self._scene = TabletopScene(control_freq=self.config.control_hz, horizon=1)
        self._model: mujoco.MjModel = self._scene.sim.model._model
        self._data: mujoco.MjData = self._scene.sim.data._data
        self.arm_qpos_ids = self._scene.arm_qpos_ids
        self.arm_dof_ids = self._scene.arm_qvel_ids
        joint_ids = [self._model.joint(name).id for name in self.joint_names]
        self.joint_lower = self._model.jnt_range[joint_ids, 0].copy()
        self.joint_upper = self._model.jnt_range[joint_ids, 1].copy()
        self.home_qpos = np.array(self._scene.robots[0].init_qpos, dtype=float)
        cameras = [self._model.camera(i).name for i in range(self._model.ncam)]
        unknown = [name for name in self.config.cameras if name not in cameras]
        if unknown:
            raise ValueError(f"unknown camera(s) {unknown}; the scene has {cameras}")
        # Software GL (EGL on a CPU) pays per pixel: no 4x multisampling (half the render time;
        # the model resizes the image anyway) and an offscreen buffer no larger than the image.
        self._model.vis.quality.offsamples = 0
        self._model.vis.global_.offwidth = self.config.image_width
        self._model.vis.global_.offheight = self.config.image_height
        self._renderer = mujoco.Renderer(
            self._model, height=self.config.image_height, width=self.config.image_width
        )
        # Visual meshes only (robosuite's collision meshes sit in group 0), and no table mirror:
        # reflections cost render time and show the policy nothing new.
        self._render_option = mujoco.MjvOption()
        self._render_option.geomgroup[0] = 0
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._grip_site = self._model.site(GRIP_SITE).id
        self._task: Task | None = None
        self._start_cubes: dict[str, np.ndarray] = {}
        self._observation: Observation | None = None

    @property
    def model(self) -> mujoco.MjModel:
        """The MuJoCo model (read-only use: kinematics for the scripted experts)."""
        return self._model

    @property
    def task(self) -> Task:
        if self._task is None:
            raise RuntimeError("no task yet: call reset(task, seed) first")
        return self._task

    @property
    def observation(self) -> Observation:
        """The latest observation (from the last `reset` or `step`)."""
        if self._observation is None:
            raise RuntimeError("no observation yet: call reset(task, seed) first")
        return self._observation

    @property
    def time(self) -> float:
        return float(self._data.time)

    @property
    def truncated(self) -> bool:
        """Whether the episode has used up `config.horizon_s`."""
        return self.time >= self.config.horizon_s - 1e-9

    def reset(self, task: str | Task, seed: int | None = None) -> Observation:
        """Start an episode of `task`: cube layout and start pose both follow from (`task`,
        `seed`)."""
        self._task = get_task(task) if isinstance(task, str) else task
        rng = self._task.episode_rng(self.config.seed if seed is None else seed)
        layout = self._task.sample_layout(rng)
        noise = rng.uniform(-1.0, 1.0, len(self.joint_names)) * self.config.init_joint_noise_rad
        start = np.clip(self.home_qpos + noise, self.joint_lower, self.joint_upper)
        self._scene.set_layout(layout, start)
        self._scene.reset()
        self._start_cubes = self.cube_positions()
        self._observation = self._observe()
        return self._observation

    def step(self, joint_targets: Sequence[float] | np.ndarray, gripper: float,
             render: bool = True) -> Observation:
        """Hold absolute `joint_targets` [7] (rad) and gripper opening `gripper` for one period.

        Targets are clipped to the joint limits, as a position controller's limits would.
        `render=False` leaves the images out (call `render` later for them).
        """
        if self._observation is None:
            raise RuntimeError("step before reset: call reset(task, seed) first")
        targets = np.asarray(joint_targets, dtype=float)
        if targets.shape != (len(self.joint_names),) or not np.all(np.isfinite(targets)):
            raise ValueError(f"joint_targets must be 7 finite values (rad), got {targets!r}")
        if not np.isfinite(gripper):
            raise ValueError(f"gripper must be a finite opening in [0, 1], got {gripper!r}")
        targets = np.clip(targets, self.joint_lower, self.joint_upper)
        self._scene.step(np.concatenate([targets, [float(gripper)]]))
        self._observation = self._observe(render)
        return self._observation

    def apply(self, command: Command) -> Observation:
        """`step` with a `Command`."""
        return self.step(command.joint_targets, command.gripper)

    def success(self) -> bool:
        """Whether the current state solves the episode's task."""
        return self.task.success(self._start_cubes, self.cube_positions())

    def cube_positions(self) -> dict[str, np.ndarray]:
        """Privileged: each cube's centre (colour -> world xyz, metres)."""
        return {
            color: self._data.xpos[body].copy() for color, body in self._scene.cube_body_ids.items()
        }

    def grip_position(self) -> np.ndarray:
        """Privileged: the point between the fingertips (world xyz, metres)."""
        return self._data.site_xpos[self._grip_site].copy()

    def grip_position_at(self, joint_positions: Sequence[float] | np.ndarray) -> np.ndarray:
        """Privileged: where the grip site would be (world xyz) with the seven arm joints at
        `joint_positions` (forward kinematics); the simulation's state is left as it was."""
        joints = np.asarray(joint_positions, dtype=np.float64)
        if joints.shape != (len(self.arm_qpos_ids),):
            raise ValueError(f"expected {len(self.arm_qpos_ids)} arm joint positions, got "
                             f"shape {joints.shape}")
        saved = self._data.qpos.copy()
        try:
            self._data.qpos[self.arm_qpos_ids] = joints
            mujoco.mj_kinematics(self.model, self._data)
            return self._data.site_xpos[self._grip_site].copy()
        finally:
            self._data.qpos[:] = saved
            mujoco.mj_kinematics(self.model, self._data)

    def cube_yaws(self) -> dict[str, float]:
        """Privileged: each cube's rotation about the vertical (rad)."""
        yaws = {}
        for color, body in self._scene.cube_body_ids.items():
            w, x, y, z = self._data.xquat[body]
            yaws[color] = float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))
        return yaws

    def render(self) -> tuple[np.ndarray, ...]:
        """Each camera's image of the current state, [H, W, 3] uint8, in config order."""
        images = []
        for camera in self.config.cameras:
            self._renderer.update_scene(self._data, camera=camera,
                                        scene_option=self._render_option)
            images.append(self._renderer.render().copy())
        return tuple(images)

    def close(self) -> None:
        """Free the renderer's GL context and the simulation."""
        self._renderer.close()
        self._scene.close()

    def __enter__(self) -> SimArm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _observe(self, render: bool = True) -> Observation:
        qpos = self._data.qpos
        fingers = qpos[self._scene.finger_qpos_ids]
        return Observation(
            images=self.render() if render else (),
            joint_positions=qpos[self._scene.arm_qpos_ids].copy(),
            joint_velocities=self._data.qvel[self._scene.arm_qvel_ids].copy(),
            gripper_opening=float(np.clip((fingers[0] - fingers[1]) / (2 * FINGER_TRAVEL_M), 0, 1)),
            time=self.time,
        )
