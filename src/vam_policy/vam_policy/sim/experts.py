"""Scripted experts: solve each task from privileged cube poses, to record demonstrations.

An expert plans a few waypoints for the point between the fingertips (above the cube, down,
close, lift; or beside the cube, down, slide left), interpolates them with a minimum-jerk
profile, and turns each interpolated pose into ABSOLUTE joint targets with damped least-squares
inverse kinematics on MuJoCo's own Jacobians (no solver beyond mujoco). Its output is therefore
exactly what the policy will be asked to produce: a joint position target per control step plus
a gripper opening. The gripper command moves within the sim profile's gripper limits
(`config/sim_panda.yaml`), so the demonstrations show what the policy node's safety filter
lets through; a one-step jump from open to closed would be reshaped there, unlike in the demos.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vam_policy.sim.arm import Command, Observation, SimArm
from vam_policy.sim.scene import CUBE_HALF_SIZE_M, GRIP_SITE, TABLE_TOP_Z, mujoco
from vam_policy.sim.tasks import LiftTask, PushLeftTask, Task

OPEN = 1.0
CLOSED = 0.0
# Grip-site height for grasping and pushing: the cube's centre. The fingertips reach ~1 cm below
# the site, so they stay ~1 cm above the table.
GRASP_HEIGHT_M = TABLE_TOP_Z + CUBE_HALF_SIZE_M
PUSH_HEIGHT_M = TABLE_TOP_Z + CUBE_HALF_SIZE_M
HOVER_M = 0.10
# Fingertips 3 cm apart: both press a 4 cm cube face when pushing.
PUSH_OPENING = 0.3
# The profile's robot0_gripper limits (3 /s, 16 /s^2) with a margin: the filter checks them on
# finite differences of the commands.
GRIPPER_MAX_SPEED = 2.7
GRIPPER_MAX_ACCEL = 14.0


@dataclass(frozen=True)
class Waypoint:
    """Reach grip-site `position` (world, m) by `duration_s` after the previous one, with
    the gripper commanded to `gripper` from the start of the segment."""

    position: tuple[float, float, float]
    duration_s: float
    gripper: float


class DownwardIK:
    """Joint targets that put the grip site at a position with the fingers pointing down.

    Damped least squares on the site Jacobian (6 x 7), optionally pulling the redundant seventh
    degree of freedom towards the home pose in the Jacobian's null space. It works on its own
    `MjData`, never the simulation's.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        arm_qpos_ids: np.ndarray,
        arm_dof_ids: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        home: np.ndarray,
    ) -> None:
        self._model = model
        self._data = mujoco.MjData(model)
        self._site = model.site(GRIP_SITE).id
        self._qpos_ids = arm_qpos_ids
        self._dof_ids = arm_dof_ids
        # Stay a little inside the limits, where the position controller can still push.
        margin = 0.02
        self._lower = lower + margin
        self._upper = upper - margin
        self._home = home
        self._jac_pos = np.zeros((3, model.nv))
        self._jac_rot = np.zeros((3, model.nv))

    def site_pose(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grip-site position [3] and rotation [3, 3] at arm joints `q`."""
        self._data.qpos[self._qpos_ids] = q
        mujoco.mj_kinematics(self._model, self._data)
        rotation = self._data.site_xmat[self._site].reshape(3, 3).copy()
        return self._data.site_xpos[self._site].copy(), rotation

    def solve(
        self,
        q_start: np.ndarray,
        position: np.ndarray,
        rotation: np.ndarray,
        iterations: int = 30,
        damping: float = 0.05,
        tolerance: float = 1e-4,
        posture_gain: float = 0.0,
    ) -> np.ndarray:
        """Joints near `q_start` that reach `position` and `rotation` (as well as they can).

        `posture_gain` > 0 also pulls the redundant degree of freedom towards the home pose;
        leave it at 0 when tracking a path, where that pull would jerk the elbow each step.
        """
        q = np.array(q_start, dtype=float)
        for _ in range(iterations):
            current_pos, current_rot = self.site_pose(q)
            error = np.concatenate([position - current_pos, _rotation_error(current_rot, rotation)])
            if np.linalg.norm(error) < tolerance:
                break
            mujoco.mj_comPos(self._model, self._data)
            mujoco.mj_jacSite(self._model, self._data, self._jac_pos, self._jac_rot, self._site)
            jac = np.vstack([self._jac_pos, self._jac_rot])[:, self._dof_ids]
            damped_pinv = jac.T @ np.linalg.inv(jac @ jac.T + damping**2 * np.eye(6))
            # An exact projector: a damped one would leak the posture pull into the task.
            null = np.eye(len(q)) - np.linalg.pinv(jac) @ jac
            step = damped_pinv @ error + null @ (posture_gain * (self._home - q))
            q = np.clip(q + step, self._lower, self._upper)
        return q


def _rotation_error(current: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World-frame rotation vector (small-angle) taking `current` towards `target`."""
    return 0.5 * np.cross(current.T, target.T).sum(axis=0)


def downward_rotation(yaw: float) -> np.ndarray:
    """Grip-site rotation with the fingers pointing down, closing along world
    (-sin yaw, cos yaw, 0): at yaw 0 they close along world y."""
    c, s = np.cos(yaw), np.sin(yaw)
    yaw_rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    # Columns: site x along world y, site y along world x, site z (approach axis) down.
    base = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    return yaw_rot @ base


def grasp_yaw(cube_yaw: float) -> float:
    """Finger yaw that meets two faces of a cube at `cube_yaw`: the same angle modulo 90
    degrees, in [-45, 45) so the wrist turns as little as possible."""
    return float((cube_yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4)


class RateLimiter:
    """A scalar command that follows its target within a speed and an acceleration limit.

    Each step it moves at the largest speed from which it can still stop at the target (a
    trapezoidal profile), so a step change of the target becomes a ramp without overshoot.
    """

    def __init__(self, value: float, max_speed: float, max_accel: float, period_s: float) -> None:
        self.value = float(value)
        self._speed = 0.0
        self._max_speed, self._max_accel, self._dt = max_speed, max_accel, period_s

    def step(self, target: float) -> float:
        """The command one period later, moved towards `target`."""
        error = target - self.value
        dv = self._max_accel * self._dt
        # Largest speed k * dv that brakes to rest within |error| in k steps of decreasing speed.
        k = np.floor(np.sqrt(0.25 + 2 * abs(error) / (dv * self._dt)) - 0.5)
        # At least one step of dv: the last bit of the way (below one braking step) is covered
        # at |error| / period, within dv of rest.
        wanted = np.sign(error) * min(self._max_speed, max(k, 1.0) * dv, abs(error) / self._dt)
        self._speed = float(np.clip(wanted, self._speed - dv, self._speed + dv))
        self.value += self._speed * self._dt
        return self.value


def _smoothstep(s: float) -> float:
    """Minimum-jerk profile: zero velocity and acceleration at both ends of a segment."""
    s = min(max(s, 0.0), 1.0)
    return s**3 * (10 - 15 * s + 6 * s**2)


class ScriptedExpert:
    """Follows waypoints for the grip site, starting from wherever the arm is at reset.

    The first waypoint is reached by a straight line in joint space (the IK solution there is
    solved once): from a random start pose that path is far smoother for the wrist than a
    Cartesian one. Later waypoints are straight lines in Cartesian space with the fingers kept
    pointing down, as a grasp or a push needs. Built right after `SimArm.reset`; `act` is then
    called once per control step with the latest observation.
    """

    def __init__(self, arm: SimArm, waypoints: Sequence[Waypoint], yaw: float) -> None:
        if not waypoints:
            raise ValueError("a scripted expert needs at least one waypoint")
        self._ik = DownwardIK(
            arm.model,
            arm_qpos_ids=arm.arm_qpos_ids,
            arm_dof_ids=arm.arm_dof_ids,
            lower=arm.joint_lower,
            upper=arm.joint_upper,
            home=arm.home_qpos,
        )
        self._rotation = downward_rotation(yaw)
        self._points = [np.asarray(w.position, dtype=float) for w in waypoints]
        self._grippers = [w.gripper for w in waypoints]
        self._ends = np.cumsum([w.duration_s for w in waypoints])
        self._q_start = arm.observation.joint_positions.copy()
        self._q_first = self._ik.solve(
            self._q_start, self._points[0], self._rotation, iterations=200, posture_gain=0.1
        )
        self._q = self._q_first.copy()
        self._t0 = arm.observation.time
        self._period_s = 1.0 / arm.config.control_hz
        self._gripper = RateLimiter(arm.observation.gripper_opening, GRIPPER_MAX_SPEED,
                                    GRIPPER_MAX_ACCEL, self._period_s)

    @property
    def approach_s(self) -> float:
        """Time from reset to the end of the first waypoint: the approach (above the cube to
        lift it, beside it to push it), which only the cube's position decides."""
        return float(self._ends[0])

    @property
    def reach_s(self) -> float:
        """Time from reset to the end of the second waypoint: the approach and the descent, until
        the fingers are at the cube (around it to lift it, beside it to push it)."""
        return float(self._ends[min(1, len(self._ends) - 1)])

    @property
    def duration_s(self) -> float:
        """Time from reset to the end of the last waypoint."""
        return float(self._ends[-1])

    def act(self, observation: Observation) -> Command:
        """Joint targets and gripper for the control period that starts at `observation`."""
        # Aim at where the plan is one period from now, when this command will have acted.
        t = observation.time - self._t0 + self._period_s
        segment = min(int(np.searchsorted(self._ends, t, side="right")), len(self._ends) - 1)
        begin = self._ends[segment - 1] if segment > 0 else 0.0
        s = _smoothstep((t - begin) / (self._ends[segment] - begin))
        if segment == 0:
            q = (1 - s) * self._q_start + s * self._q_first
        else:
            position = (1 - s) * self._points[segment - 1] + s * self._points[segment]
            q = self._ik.solve(self._q, position, self._rotation)
        self._q = q
        gripper = self._gripper.step(self._grippers[segment])
        return Command(joint_targets=q.copy(), gripper=gripper)


def lift_expert(arm: SimArm, task: LiftTask,
                approach_offset: tuple[float, float] = (0.0, 0.0)) -> ScriptedExpert:
    """Above the cube, straight down with the fingers open, close, lift well past the bar.

    `approach_offset` (dx, dy, m) moves the point above the cube the approach ends at; the
    descent then corrects it on its way down to the cube.
    """
    x, y, _ = arm.cube_positions()[task.cube]
    dx, dy = approach_offset
    hover = (x + dx, y + dy, GRASP_HEIGHT_M + HOVER_M)
    grasp = (x, y, GRASP_HEIGHT_M)
    lifted = (x, y, GRASP_HEIGHT_M + task.lift_m + 0.07)
    waypoints = [
        Waypoint(hover, 1.6, OPEN),
        Waypoint(grasp, 1.0, OPEN),
        Waypoint(grasp, 0.3, OPEN),
        Waypoint(grasp, 0.6, CLOSED),
        Waypoint(lifted, 1.2, CLOSED),
        Waypoint(lifted, 0.5, CLOSED),
    ]
    return ScriptedExpert(arm, waypoints, yaw=grasp_yaw(arm.cube_yaws()[task.cube]))


def push_left_expert(arm: SimArm, task: PushLeftTask,
                     approach_offset: tuple[float, float] = (0.0, 0.0)) -> ScriptedExpert:
    """Fingers down on the cube's right, slide them left through it, then rise clear.

    The fingers close across the push (parallel to the face they push) and stay slightly open,
    so the two fingertips press the face at two points: a single narrow pusher lets the cube
    spin away sideways. `approach_offset` (dx, dy, m) moves the point above the cube's right
    the approach ends at; the descent corrects it.
    """
    x, y, _ = arm.cube_positions()[task.cube]
    behind = y + CUBE_HALF_SIZE_M + 0.04
    end = y - task.push_m - 0.09
    dx, dy = approach_offset
    waypoints = [
        Waypoint((x + dx, behind + dy, PUSH_HEIGHT_M + HOVER_M), 2.4, PUSH_OPENING),
        Waypoint((x, behind, PUSH_HEIGHT_M), 1.0, PUSH_OPENING),
        Waypoint((x, end, PUSH_HEIGHT_M), 2.0, PUSH_OPENING),
        Waypoint((x, end, PUSH_HEIGHT_M + HOVER_M), 1.0, PUSH_OPENING),
    ]
    across = grasp_yaw(arm.cube_yaws()[task.cube]) + np.pi / 2
    # A two-finger hand is symmetric under a half turn: take the smaller wrist rotation.
    yaw = (across + np.pi / 2) % np.pi - np.pi / 2
    return ScriptedExpert(arm, waypoints, yaw=float(yaw))


_EXPERTS: dict[type[Task], Callable[..., ScriptedExpert]] = {
    LiftTask: lift_expert,
    PushLeftTask: push_left_expert,
}


def make_expert(arm: SimArm,
                approach_offset: tuple[float, float] = (0.0, 0.0)) -> ScriptedExpert:
    """The scripted expert for the task `arm` was last reset with; its approach ends
    `approach_offset` (dx, dy, m) off its usual point, which its descent then corrects."""
    task = arm.task
    for kind, build in _EXPERTS.items():
        if isinstance(task, kind):
            return build(arm, task, approach_offset)
    raise ValueError(f"no scripted expert for task {task.name!r} ({type(task).__name__})")


@dataclass(frozen=True)
class EpisodeResult:
    """How one expert episode ended."""

    task: str
    seed: int
    success: bool
    steps: int
    time_s: float


def run_expert_episode(
    arm: SimArm, task: str | Task, seed: int, settle_s: float = 0.3
) -> EpisodeResult:
    """Reset to (`task`, `seed`), run its expert to the end of its plan plus `settle_s`."""
    observation = arm.reset(task, seed)
    expert = make_expert(arm)
    steps = 0
    while observation.time < expert.duration_s + settle_s and not arm.truncated:
        observation = arm.apply(expert.act(observation))
        steps += 1
    return EpisodeResult(arm.task.name, seed, arm.success(), steps, observation.time)
