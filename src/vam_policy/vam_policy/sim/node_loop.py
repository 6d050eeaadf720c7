"""The policy node's control loop on the sim's clock: `vam sim diagnose --loop node`.

`ChunkFollower` follows each chunk as training labels it. Over ROS the chunks pass through the
policy node first; `NodeLoop` runs the node's own classes in-process on simulated time, without
processes or DDS, so a rollout is deterministic and independent of the host's speed:
`ObservationBuffers` (camera histories, the joint state nearest the frames), the
`ChunkScheduler` (execute_steps, blend_steps, min_point_lead_s), the safety filter's
`CommandStream` and, on the arm's side, the sim's `JointTrajectoryExecutor`.

Timing, as `vam_sim_node` and `vam_policy_node` have it (P: the sim's physics period):

- the physics step starting at t commands where the trajectory is at t + P, and the state it
  simulates is stamped t; its joints are published at once, its frames at the first camera
  tick (`camera_rate_hz`) before the next step, if there is one;
- the node's control timer ticks at `control_rate_hz` from the moment the node takes over;
- an inference starts once the worker is free and every camera has a frame newer than the
  last observation by replan_steps * action_dt; its chunk arrives `latency_s` later;
- messages arrive the moment they are sent, and what the node does at the moment a physics
  step starts happens before it (over ROS the two clocks' phases are arbitrary);
- the node takes over with the camera history it has seen (the sim's frames from the reset
  on) and the first trajectory starts from the measured state.

Left out: the watchdog (no input is ever late here), pause and resume. A latched safety fault
holds the arm for the rest of the rollout, as the node holds until `~/resume`.
"""

from __future__ import annotations

import math

import numpy as np

from vam_policy.model.chunking import ChunkScheduler
from vam_policy.model.policy import VAMPolicy
from vam_policy.ros.buffers import JointSample, ObservationBuffers, history_capacity
from vam_policy.ros.parameters import NodeSettings
from vam_policy.ros.safety import CommandStream, SafetyLimits, UnsafeTargetsError
from vam_policy.sim.arm import Command, Observation, SimArm
from vam_policy.sim.diagnose import DriverFactory
from vam_policy.sim.trajectory import (
    GRIPPER_LIMITS,
    JointTrajectoryExecutor,
    controlled_joints,
    controller_state,
)

_NS = 1_000_000_000


def _ns(t: float) -> int:
    return round(t * _NS)


class NodeLoop:
    """Drives the arm as the policy node does over ROS; the interface of `ChunkFollower`.

    `observe` every physics state (from the reset on), `command` once the node is to drive:
    the position command for the physics step starting at `observation.time`.
    """

    def __init__(self, arm: SimArm, policy: VAMPolicy, instruction: str, node: NodeSettings,
                 camera_rate_hz: float, latency_s: float, seed: int) -> None:
        joints = controlled_joints(arm.joint_names)
        if tuple(node.joint_names) != joints:
            raise ValueError(f"the profile's joint_names {list(node.joint_names)} are not the "
                             f"sim's controlled joints {list(joints)}")
        if not (math.isfinite(latency_s) and latency_s >= 0):
            raise ValueError(f"latency_s must be a finite time >= 0 s, got {latency_s}")
        cfg = policy.config
        self._policy, self._instruction, self._node = policy, instruction, node
        self._latency_s, self._seed = latency_s, seed
        self._period_s = 1.0 / arm.config.control_hz
        self._camera_period_s = 1.0 / camera_rate_hz
        self._control_period_s = 1.0 / node.control_rate_hz
        self._buffers = ObservationBuffers(len(arm.config.cameras),
                                           history_capacity(cfg.history_frames, cfg.fps))
        self._scheduler = ChunkScheduler(node.execute_steps, node.blend_steps)
        self._commands = CommandStream(SafetyLimits.from_settings(node), cfg.action_dt)
        self._executor = JointTrajectoryExecutor(joints, [*arm.joint_lower, GRIPPER_LIMITS[0]],
                                                 [*arm.joint_upper, GRIPPER_LIMITS[1]])
        self._gripper: float | None = None  # the previous state's, for its velocity
        self._frames_at: float | None = None  # when the newest frames were published
        self._next_control_s: float | None = None  # None until the node takes over
        self._free_at = -math.inf  # when the inference worker is free (again)
        self._pending: tuple[float, float, np.ndarray] | None = None  # arrival, stamp, chunk
        self._last_stamp_s: float | None = None  # the last inference's observation
        self._tried_at: float | None = None  # frames that did not span the history yet
        self.arrivals: list[tuple[float, float]] = []  # per chunk: observation stamp, arrival
        self.fault: str | None = None  # the safety filter's, once it latched

    @property
    def started_s(self) -> float | None:
        """The observation stamp of the first chunk that arrived, None before."""
        return self.arrivals[0][0] if self.arrivals else None

    def observe(self, observation: Observation) -> None:
        """Publish the state simulated up to `observation.time` as the sim node does."""
        stamp = observation.time - self._period_s
        positions, velocities = controller_state(
            observation.joint_positions, observation.joint_velocities,
            observation.gripper_opening, self._gripper, self._period_s)
        self._gripper = observation.gripper_opening
        self._buffers.push_joints(JointSample(_ns(stamp), positions, velocities))
        tick = math.ceil(stamp / self._camera_period_s - 1e-9) * self._camera_period_s
        if tick < stamp + self._period_s - 1e-9:
            for camera, image in enumerate(observation.images):
                self._buffers.push_frame(camera, _ns(stamp), image)
            self._frames_at = tick

    def command(self, observation: Observation) -> Command:
        """The node's events up to the next physics step, then that step's command."""
        if self._next_control_s is None:  # take over at the state's stamp, holding it
            measured = self._buffers.newest_joints()
            assert measured is not None, "observe the state before commanding"
            stamp = observation.time - self._period_s
            self._executor.reset(measured.positions, stamp)
            self._next_control_s = stamp + self._control_period_s
            self._free_at = stamp
        while True:
            start = self._inference_start()
            events = [(self._pending[0] if self._pending else math.inf, 0),
                      (start, 1), (self._next_control_s, 2)]
            at, kind = min(events)
            if at > observation.time + 1e-9:
                break
            if kind == 0:
                self._arrive()
            elif kind == 1:
                self._infer(at)
            else:
                self._control(at)
                self._next_control_s += self._control_period_s
        target = self._executor.sample(observation.time + self._period_s)
        return Command(joint_targets=target[:-1], gripper=float(target[-1]))

    def _inference_start(self) -> float:
        """When the worker starts its next inference with the frames it has (inf: not yet)."""
        if self._pending is not None or self._frames_at in (None, self._tried_at):
            return math.inf
        newest = [stamp for stamp in self._buffers.newest_frame_stamps_ns() if stamp is not None]
        if len(newest) < self._buffers.cameras:
            return math.inf
        if self._last_stamp_s is not None:
            # The node's rule: a frame within a millisecond of the replan time is on time.
            wait_s = max(0.0, self._node.replan_steps * self._policy.config.action_dt - 1e-3)
            if min(newest) <= _ns(self._last_stamp_s + wait_s):
                return math.inf
        return max(self._free_at, self._frames_at)

    def _infer(self, now: float) -> None:
        cfg, node = self._policy.config, self._node
        observation = self._buffers.observation(cfg.history_frames, cfg.fps,
                                                max_joint_gap_s=node.max_obs_age_s)
        if observation is None:  # the history does not reach back far enough yet
            self._tried_at = self._frames_at
            return
        chunk = self._policy.predict(
            observation.frames, observation.joints.positions, self._instruction,
            tau_v=node.tau_v, flow_steps=node.flow_steps, noise_scale=node.noise_scale,
            seed=self._seed * 1000 + len(self.arrivals))
        self._last_stamp_s = observation.stamp_s
        self._pending = (now + self._latency_s, observation.stamp_s, np.asarray(chunk))

    def _arrive(self) -> None:
        assert self._pending is not None
        at, stamp, chunk = self._pending
        self._pending, self._free_at = None, at
        self.arrivals.append((stamp, at))
        self._scheduler.submit(chunk, stamp, self._policy.config.action_dt)

    def _control(self, now: float) -> None:
        node = self._node
        joints = self._buffers.newest_joints()
        plan = self._scheduler.plan(now, node.trajectory_points, node.min_point_lead_s)
        if plan is None or joints is None or self.fault is not None:
            return
        times, positions = plan
        try:
            safe = self._commands.filter(now, times, positions, joints.positions,
                                         joints.velocities)
        except UnsafeTargetsError as error:
            self.fault = f"safety filter: {error}"
            return
        self._executor.submit(node.joint_names, now, times, safe.positions, now)


def run_node_loop(policy: VAMPolicy, node: NodeSettings, camera_rate_hz: float,
                  latency_s: float) -> DriverFactory:
    """Rollouts driven by a `NodeLoop` with the profile's node settings."""
    return lambda arm, instruction, seed: NodeLoop(arm, policy, instruction, node,
                                                   camera_rate_hz, latency_s, seed)
