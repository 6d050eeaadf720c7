"""`vam_sim_node`: the simulated Panda as a ROS 2 robot, for the policy node to drive.

    vam_sim_node --ros-args --params-file config/sim_panda.yaml [-p task:=push_red_left]

It publishes what a real arm's drivers publish (one `sensor_msgs/Image` rgb8 per camera, a
`sensor_msgs/JointState` of the seven arm joints plus the virtual `robot0_gripper` opening) and
executes `trajectory_msgs/JointTrajectory` like a ros2_control JointTrajectoryController
(`sim/trajectory.py`). `~/reset` (vam_msgs/srv/ResetEpisode) starts a seeded episode of a task,
and `~/episode` (vam_msgs/msg/EpisodeStatus) says how it is going.

Threads: a physics thread steps the `SimArm` at control_rate_hz, paced by the wall clock
(sleeping until each step is due; it warns when a step comes a whole period late, and does not
catch up in a burst). It builds and owns the arm, because the renderer's GL context is current
in one thread only; the reset service hands resets to it and waits. The executor runs the
trajectory subscription, the reset service and the publish timers. The newest state, the
trajectory executor and the episode record are shared under one lock, which the physics
thread lets go while it renders the cameras; messages are built from copies outside it.

Time: everything uses the node clock. A frame and a joint state are stamped when their physics
step ended, and each is published once, so a stamp always says when the state was true (joint
states therefore go out at most at control_rate_hz). Each step holds the position the active
trajectory reaches at the step's end; trajectories stamped before the last reset are refused,
so a command sent for the previous episode cannot move the new start pose.
"""

from __future__ import annotations

import queue
import re
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

from vam_msgs.msg import EpisodeStatus
from vam_msgs.srv import ResetEpisode
from vam_policy.ros.messages import parameter_descriptor, split_ns, stamp_ns
from vam_policy.ros.parameters import ParameterError
from vam_policy.ros.sim_parameters import (
    SIM_NODE_NAME,
    SIM_PARAMETERS,
    SimNodeSettings,
    sim_settings_from_parameters,
)
from vam_policy.ros.spin import spin_node
from vam_policy.sim.arm import Observation, SimArm
from vam_policy.sim.tasks import get_task
from vam_policy.sim.trajectory import (
    GRIPPER_LIMITS,
    JointTrajectoryExecutor,
    TrajectoryError,
    controlled_joints,
    controller_state,
)

_LOG_PERIOD_S = 2.0
_RATE_WINDOW_STEPS = 40
_STARTUP_TIMEOUT_S = 300.0  # the first robosuite scene of a machine compiles numba code
_RESET_TIMEOUT_S = 30.0


@dataclass(frozen=True, eq=False)
class _Sample:
    """One physics state as it goes out: `index` counts states since start (each sent once)."""

    index: int
    stamp_ns: int
    images: tuple[np.ndarray, ...]
    positions: np.ndarray  # [8]: arm joints, then gripper opening
    velocities: np.ndarray  # [8]


@dataclass(frozen=True)
class _Episode:
    """What EpisodeStatus reports; replaced as a whole under the node's lock, and final once
    done (the arm goes on holding its command until the next reset, outside the record)."""

    number: int
    task: str
    instruction: str
    seed: int
    sim_time_s: float = 0.0
    success: bool = False
    done: bool = False
    accepted: int = 0
    rejected: int = 0
    travel_rad: float = 0.0


class SimNode(Node):
    """The simulated arm's node; raises ParameterError when its parameters are wrong."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__(SIM_NODE_NAME, **node_kwargs)
        try:
            self._settings = s = self._declare_and_read_parameters()
        except ParameterError:
            self.destroy_node()
            raise
        self._period_s = 1.0 / s.control_rate_hz
        self._lock = threading.Lock()
        self._logged_at: dict[str, float] = {}
        self._steps: deque[tuple[float, float]] = deque(maxlen=_RATE_WINDOW_STEPS)
        self._sent = {"cameras": -1, "joints": -1}
        self._samples = 0
        self._episode = _Episode(0, s.task, "", s.seed)
        self._resets: queue.SimpleQueue[tuple[str, int, Future[_Episode]]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._go = threading.Event()  # set once the publishers exist
        # Set by the physics thread before `ready` (see the module docstring).
        self._arm: SimArm
        self._sample: _Sample
        self._joint_names: tuple[str, ...]
        self._trajectory: JointTrajectoryExecutor
        ready: Future[None] = Future()
        self._physics = threading.Thread(target=self._run_physics, args=(ready,),
                                         name="physics", daemon=True)
        self._physics.start()
        try:
            ready.result(timeout=_STARTUP_TIMEOUT_S)
        except ParameterError:
            self.destroy_node()
            raise
        self._image_pubs = [self.create_publisher(Image, topic, 5) for topic in s.camera_topics]
        self._joint_pub = self.create_publisher(JointState, s.joint_states_topic, 10)
        self._status_pub = self.create_publisher(EpisodeStatus, "~/episode", 10)
        self.create_subscription(JointTrajectory, s.trajectory_topic, self._on_trajectory, 10)
        self.create_service(ResetEpisode, "~/reset", self._on_reset)
        self.create_timer(1.0 / s.camera_rate_hz, self._publish_frame)
        self.create_timer(1.0 / s.joint_states_rate_hz, self._publish_joints)
        self.create_timer(1.0 / s.status_rate_hz, self._publish_status)
        self.get_logger().info(
            f"task {s.task} seed {s.seed}; physics {s.control_rate_hz:g} Hz; cameras "
            f"{s.image_width}x{s.image_height} at {s.camera_rate_hz:g} Hz on "
            f"{', '.join(s.camera_topics)}; "
            f"joints {list(self._joint_names)} on {s.joint_states_topic}; trajectories from "
            f"{s.trajectory_topic}"
        )
        self._go.set()

    def close(self) -> None:
        """Stop the physics thread (which frees the simulation), destroy the node."""
        self._stop.set()
        self._go.set()
        self._physics.join(timeout=5.0)
        self.destroy_node()

    def _declare_and_read_parameters(self) -> SimNodeSettings:
        """Declare every parameter with its descriptor; report every problem at once."""
        problems: list[str] = []
        values: dict[str, object] = {}
        for spec in SIM_PARAMETERS:
            try:
                declared = self.declare_parameter(
                    spec.name, spec.default, parameter_descriptor(spec))
            except (InvalidParameterTypeException, InvalidParameterValueException) as error:
                problems.append(f"{spec.name}: {error}")
                continue
            values[spec.name] = declared.value
        unknown = {name: p.value for name, p in self._parameter_overrides.items()
                   if not self.has_parameter(name) and not name.startswith("qos_overrides.")}
        try:
            settings = sim_settings_from_parameters({**values, **unknown})
        except ParameterError as error:
            problems.extend(error.problems)
        if problems:
            raise ParameterError(problems)
        return settings

    # ---- physics ------------------------------------------------------------------------

    def _run_physics(self, ready: Future[None]) -> None:
        """Build the arm, start the first episode, then step until the node closes."""
        s = self._settings
        try:
            self._arm = _build_arm(s)
        except BaseException as error:
            ready.set_exception(error)
            return
        try:
            self._joint_names = controlled_joints(self._arm.joint_names)
            self._trajectory = JointTrajectoryExecutor(
                self._joint_names, [*self._arm.joint_lower, GRIPPER_LIMITS[0]],
                [*self._arm.joint_upper, GRIPPER_LIMITS[1]],
            )
            with self._lock:
                self._reset(s.task, s.seed)
            ready.set_result(None)
            self._go.wait()
            self._pace()
        except BaseException as error:
            if not ready.done():
                ready.set_exception(error)
                return
            self.get_logger().fatal(f"physics stopped: {error!r}; nothing is published")
            raise
        finally:
            self._arm.close()

    def _pace(self) -> None:
        """Step at control_rate_hz by the wall clock; resets happen between steps."""
        deadline = time.monotonic()
        while not self._stop.is_set():
            if self._serve_resets():
                deadline = time.monotonic()
            self._step()
            deadline += self._period_s
            delay = deadline - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif -delay > self._period_s:
                # Judged over a window: the very first steps after start are slow anyway.
                if len(self._steps) > _RATE_WINDOW_STEPS // 4 and self._due("late"):
                    self.get_logger().warning(
                        f"physics cannot keep up with {self._settings.control_rate_hz:g} Hz: "
                        f"real-time factor {self._real_time_factor():.2f}")
                deadline = time.monotonic()

    def _serve_resets(self) -> bool:
        """Do the resets the service asked for; whether there were any."""
        served = False
        while not self._resets.empty():
            task, seed, answer = self._resets.get_nowait()
            try:
                with self._lock:
                    self._reset(task, seed)
                    answer.set_result(self._episode)
            except Exception as error:  # handed to the service, which reports it
                answer.set_exception(error)
            served = True
        return served

    def _step(self) -> None:
        """One physics period, commanded where the trajectory should be when it ends."""
        with self._lock:
            now_s = self._now_ns() / 1e9
            target = self._trajectory.sample(now_s + self._period_s)
            before = self._arm.observation
            observation = self._arm.step(target[:-1], float(target[-1]), render=False)
            stamp_ns = self._now_ns()
            self._steps.append((time.monotonic(), observation.time))
            episode = self._episode
            if not episode.done:
                success = self._arm.success()
                self._episode = replace(
                    episode, sim_time_s=observation.time, success=success,
                    done=success or self._arm.truncated,
                    travel_rad=episode.travel_rad + float(np.abs(
                        observation.joint_positions - before.joint_positions).sum()),
                )
            changed = self._episode.done != episode.done
        # Rendering takes most of a step: outside the lock, trajectories and publishers need not
        # wait for it (only this thread touches the simulation).
        images = self._arm.render()
        with self._lock:
            self._set_sample(observation, before, images, stamp_ns)
        if changed:
            self._publish_status()

    def _set_sample(self, observation: Observation, before: Observation | None,
                    images: tuple[np.ndarray, ...], stamp_ns: int) -> None:
        """Make `observation` with `images`, simulated up to `stamp_ns`, the newest sample
        (caller holds the lock)."""
        positions, velocities = controller_state(
            observation.joint_positions, observation.joint_velocities,
            observation.gripper_opening, before.gripper_opening if before else None,
            self._period_s)
        self._samples += 1
        self._sample = _Sample(self._samples, stamp_ns, images, positions, velocities)

    def _reset(self, task: str, seed: int) -> None:
        """Start an episode (caller holds the lock): hold the new start pose."""
        observation = self._arm.reset(task, seed)
        self._set_sample(observation, None, observation.images, self._now_ns())
        self._trajectory.reset(self._sample.positions, self._now_ns() / 1e9)
        self._steps.clear()
        self._episode = _Episode(self._episode.number + 1, self._arm.task.name,
                                 self._arm.task.instruction, seed)

    def _real_time_factor(self) -> float:
        steps = list(self._steps)
        if len(steps) < 2 or steps[-1][0] <= steps[0][0]:
            return 0.0
        return (steps[-1][1] - steps[0][1]) / (steps[-1][0] - steps[0][0])

    # ---- inputs -------------------------------------------------------------------------

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        now_ns = self._now_ns()
        start_ns = stamp_ns(msg.header.stamp) or now_ns
        times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
        positions = [list(p.positions) for p in msg.points]
        error: TrajectoryError | None = None
        with self._lock:
            try:
                self._trajectory.submit(msg.joint_names, start_ns / 1e9, times, positions,
                                        now_ns / 1e9)
            except TrajectoryError as refused:
                error = refused
            if not self._episode.done:
                counter = "rejected" if error else "accepted"
                self._episode = replace(self._episode,
                                        **{counter: getattr(self._episode, counter) + 1})
        # Throttled per kind of reason (numbers such as ages differ from message to message).
        if error is not None and self._due(re.sub(r"[0-9.]+", "#", str(error))):
            self.get_logger().error(f"trajectory rejected: {error}")

    def _on_reset(self, request: ResetEpisode.Request, response: ResetEpisode.Response) -> Any:
        task = request.task.strip() or self._episode.task
        answer: Future[_Episode] = Future()
        try:
            get_task(task)
            self._resets.put((task, int(request.seed), answer))
            episode = answer.result(timeout=_RESET_TIMEOUT_S)
        except (ValueError, TimeoutError, RuntimeError) as error:
            response.success, response.message = False, f"reset refused: {error}"
            return response
        self._publish_status()
        response.success = True
        response.message = f"episode {episode.number}: {task} seed {episode.seed}"
        response.instruction = episode.instruction
        self.get_logger().info(response.message)
        return response

    # ---- outputs ------------------------------------------------------------------------

    def _publish_frame(self) -> None:
        sample = self._unsent("cameras")
        if sample is None:
            return
        for camera, image, publisher in zip(self._settings.cameras, sample.images,
                                            self._image_pubs, strict=True):
            height, width = image.shape[:2]
            msg = Image(height=height, width=width, encoding="rgb8", is_bigendian=0,
                        step=width * 3, data=image.tobytes())
            msg.header.stamp = _time(sample.stamp_ns)
            msg.header.frame_id = camera
            publisher.publish(msg)

    def _publish_joints(self) -> None:
        sample = self._unsent("joints")
        if sample is None:
            return
        msg = JointState(name=list(self._joint_names), position=sample.positions.tolist(),
                         velocity=sample.velocities.tolist())
        msg.header.stamp = _time(sample.stamp_ns)
        self._joint_pub.publish(msg)

    def _unsent(self, output: str) -> _Sample | None:
        """The newest sample if `output` has not sent it yet (each state goes out once)."""
        with self._lock:
            sample = self._sample
            if sample.index == self._sent[output]:
                return None
            self._sent[output] = sample.index
        return sample

    def _publish_status(self) -> None:
        with self._lock:
            episode, rate = self._episode, self._real_time_factor()
        msg = EpisodeStatus(
            episode=episode.number, task=episode.task, instruction=episode.instruction,
            seed=episode.seed, sim_time_s=episode.sim_time_s,
            time_limit_s=self._settings.episode_time_limit_s, success=episode.success,
            done=episode.done, trajectories_accepted=episode.accepted,
            trajectories_rejected=episode.rejected, joint_travel_rad=episode.travel_rad,
            real_time_factor=rate,
        )
        msg.header.stamp = _time(self._now_ns())
        self._status_pub.publish(msg)

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _due(self, key: str) -> bool:
        """One log per key per _LOG_PERIOD_S (rclpy throttles per call site only)."""
        now = time.monotonic()
        if now - self._logged_at.get(key, -_LOG_PERIOD_S) < _LOG_PERIOD_S:
            return False
        self._logged_at[key] = now
        return True


def _build_arm(s: SimNodeSettings) -> SimArm:
    try:
        return SimArm(s.arm_config())
    except ValueError as error:  # e.g. a camera the scene does not have
        raise ParameterError([str(error)]) from error


def _time(stamp: int) -> Time:
    sec, nanosec = split_ns(stamp)
    return Time(sec=sec, nanosec=nanosec)


def main(args: list[str] | None = None) -> int:
    """Run the sim node until shutdown; exit code 2 when its parameters are wrong."""
    return spin_node(SimNode, SIM_NODE_NAME, (ParameterError,), args)


if __name__ == "__main__":
    sys.exit(main())
