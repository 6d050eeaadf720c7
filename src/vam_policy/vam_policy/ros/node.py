"""`vam_policy_node`: cameras + joint states in, safe joint trajectories out, at control rate.

    vam_policy_node --ros-args --params-file config/<robot>.yaml [-p checkpoint:=DIR]

Threading: one SingleThreadedExecutor runs every subscription, service and timer, so callbacks
never race each other and stay short (convert, copy into `ObservationBuffers`). The only other
thread is the `InferenceWorker`. What both threads touch locks itself (`ObservationBuffers`,
`RunState`, `RateMeter`); the chunk scheduler and the epoch counter share `_chunk_lock`.

Timing: every time is a header stamp or the node clock, in one time base. A chunk from an
observation at t0 is scheduled on t0's time grid, so inference latency shifts which steps are
still ahead instead of delaying the arm. The control timer runs watchdog -> scheduler ->
safety filter -> message -> publish; when any input is older than max_obs_age_s it publishes
nothing and drops all chunks (the epoch bump keeps an in-flight chunk from sneaking back).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from vam_msgs.msg import ActionChunk, PolicyStatus
from vam_msgs.srv import SetInstruction
from vam_policy.model.chunking import ChunkScheduler
from vam_policy.ros.buffers import (
    ObservationBuffers,
    RateMeter,
    RunState,
    State,
    StateView,
    history_capacity,
    stale_input,
)
from vam_policy.ros.image_conversion import compressed_to_rgb, image_to_rgb
from vam_policy.ros.inference import (
    InferenceResult,
    InferenceWorker,
    LoadedPolicy,
    StartupError,
    load_policy,
)
from vam_policy.ros.messages import (
    ChunkReport,
    StatusReport,
    TrajectoryCommand,
    chunk_to_msg,
    joint_sample_from_msg,
    parameter_descriptor,
    stamp_ns,
    status_to_msg,
    trajectory_to_msg,
)
from vam_policy.ros.parameters import (
    NODE_NAME,
    PARAMETERS,
    SPECS,
    NodeSettings,
    ParameterError,
    settings_from_parameters,
    validate_runtime_change,
)
from vam_policy.ros.safety import CommandStream, SafetyLimits, UnsafeTargetsError
from vam_policy.ros.spin import spin_node

_LOG_PERIOD_S = 2.0
_EMPTY_INSTRUCTION = "instruction is empty: say what to do, e.g. 'lift the red cube'"


class VAMPolicyNode(Node):
    """The policy node; raises ParameterError or StartupError when it cannot start."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        try:
            self._settings = self._declare_and_read_parameters()
            self._loaded: LoadedPolicy | None = (
                load_policy(self._settings) if self._settings.checkpoint else None
            )
        except (ParameterError, StartupError):
            self.destroy_node()
            raise
        s = self._settings
        config = self._loaded.policy.config if self._loaded else None
        self._dt = config.action_dt if config else 0.1  # unused: without a policy nothing runs
        self._scheduler = ChunkScheduler(s.execute_steps, s.blend_steps)
        self._commands = CommandStream(SafetyLimits.from_settings(s), self._dt)
        self._chunk_lock = threading.Lock()
        self._epoch = 0
        self._chunk_id = 0
        self._latency_s = 0.0
        self._rate = RateMeter()
        self._logged_at: dict[str, float] = {}
        self._buffers = ObservationBuffers(
            len(s.camera_topics),
            history_capacity(config.history_frames, config.fps) if config else 8,
        )
        self._trajectory_pub = self.create_publisher(JointTrajectory, s.trajectory_topic, 10)
        self._chunk_pub = self.create_publisher(ActionChunk, s.action_chunk_topic, 10)
        self._status_pub = self.create_publisher(PolicyStatus, s.status_topic, 10)
        self._run = RunState(self._loaded is not None, s.start_paused, s.instruction,
                             on_change=self._on_state_change)
        self._subscribe(s)
        self.create_service(Trigger, "~/pause", self._on_pause)
        self.create_service(Trigger, "~/resume", self._on_resume)
        self.create_service(SetInstruction, "~/set_instruction", self._on_set_instruction)
        self.create_timer(1.0 / s.control_rate_hz, self._on_control)
        self.create_timer(1.0 / s.status_rate_hz, self._publish_status)
        self.add_on_set_parameters_callback(self._check_parameter_change)
        self.add_post_set_parameters_callback(self._apply_parameter_change)
        self._worker: InferenceWorker | None = None
        if self._loaded is not None:
            self._worker = InferenceWorker(
                self._loaded.policy, self._buffers, self._run.running,
                settings=lambda: self._settings,
                instruction=lambda: self._run.view().instruction,
                epoch=lambda: self._epoch,
                on_result=self._on_inference, on_error=self._on_inference_error,
            )
            self._worker.start()
        view = self._run.view()
        self.get_logger().info(
            f"checkpoint {self._checkpoint_id or '(none: idle, never moves)'}; cameras "
            f"{list(s.camera_topics)}; joints {list(s.joint_names)}; control "
            f"{s.control_rate_hz:g} Hz -> {s.trajectory_topic}; state {view.state.name}"
        )
        self._publish_status()

    @property
    def _checkpoint_id(self) -> str:
        return self._loaded.checkpoint_id if self._loaded else ""

    def close(self) -> None:
        """Stop the inference thread, then destroy the node."""
        if self._worker is not None:
            self._worker.stop()
        self.destroy_node()

    # ---- parameters ---------------------------------------------------------------------

    def _declare_and_read_parameters(self) -> NodeSettings:
        """Declare every parameter of PARAMETERS and build NodeSettings from the values.

        Reports all problems at once: wrong types, values out of range, missing required
        parameters and names in the params file that are no parameter of this node.
        """
        # rclpy keeps the overrides (params file, -p) only in this attribute.
        overrides = self._parameter_overrides
        problems: list[str] = []
        values: dict[str, object] = {}
        for spec in PARAMETERS:
            descriptor = parameter_descriptor(spec)
            kind = Parameter.Type(int(spec.type))
            default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
            try:
                declared = self.declare_parameter(
                    spec.name, kind if spec.required else default, descriptor
                )
            except (InvalidParameterTypeException, InvalidParameterValueException) as error:
                problems.append(self._declare_problem(spec.name, overrides, error))
                continue
            if declared.type_ is not Parameter.Type.NOT_SET:
                values[spec.name] = declared.value
        unknown = {name: parameter.value for name, parameter in overrides.items()
                   if not self.has_parameter(name) and not name.startswith("qos_overrides.")}
        failed = {problem.split(":")[0] for problem in problems}
        settings = None
        try:
            settings = settings_from_parameters(values)
        except ParameterError as error:
            problems.extend(p for p in error.problems if p.split(":")[0] not in failed)
        if unknown:  # reported (with the closest known name) by the same function
            try:
                settings_from_parameters({**values, **unknown})
            except ParameterError as error:
                problems.extend(p for p in error.problems if p.split(":")[0] in unknown)
        if problems or settings is None:
            raise ParameterError(problems)
        return settings

    @staticmethod
    def _declare_problem(name: str, overrides: dict[str, Parameter], error: Exception) -> str:
        if name in overrides:
            try:
                SPECS[name].validate(overrides[name].value)
            except ParameterError as invalid:
                return invalid.problems[0]
        return f"{name}: {error}"

    def _check_parameter_change(self, parameters: list[Parameter]) -> SetParametersResult:
        """Accept a runtime change only if `validate_runtime_change` finds nothing wrong."""
        candidate = self._settings
        for parameter in parameters:
            if parameter.name not in SPECS:
                continue  # ROS's own parameters, e.g. use_sim_time
            if parameter.name == "instruction" and not str(parameter.value).strip():
                return SetParametersResult(successful=False, reason=_EMPTY_INSTRUCTION)
            reason = validate_runtime_change(candidate, parameter.name, parameter.value)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
            candidate = dataclasses.replace(candidate, **{parameter.name: parameter.value})
        return SetParametersResult(successful=True)

    def _apply_parameter_change(self, parameters: list[Parameter]) -> None:
        changes = {p.name: p.value for p in parameters if p.name in SPECS}
        if not changes:
            return
        self._settings = settings = dataclasses.replace(self._settings, **changes)
        with self._chunk_lock:  # applies from the next trajectory, or chunk, on
            self._commands.limits = SafetyLimits.from_settings(settings)
            self._scheduler.execute_steps = settings.execute_steps
            self._scheduler.blend_steps = settings.blend_steps
        if "instruction" in changes:
            self._halt()  # chunks for the old instruction must not run
            self._run.set_instruction(settings.instruction)
        self.get_logger().info(f"parameters changed: {changes}")

    # ---- inputs -------------------------------------------------------------------------

    def _subscribe(self, s: NodeSettings) -> None:
        for camera, (topic, compressed) in enumerate(
            zip(s.camera_topics, s.camera_compressed, strict=True)
        ):
            kind, convert = (CompressedImage, compressed_to_rgb) if compressed else (
                Image, image_to_rgb)
            callback = functools.partial(self._on_frame, camera, topic, convert)
            self.create_subscription(kind, topic, callback, qos_profile_sensor_data)
        self.create_subscription(JointState, s.joint_states_topic, self._on_joints,
                                 qos_profile_sensor_data)
        self.create_subscription(String, s.instruction_topic, self._on_instruction_topic, 10)

    def _on_frame(
        self, camera: int, topic: str, convert: Callable[[Any], np.ndarray], msg: Any
    ) -> None:
        source = f"camera {topic}"
        try:
            frame = convert(msg)
        except ValueError as error:  # UnsupportedEncodingError included
            self._input_fault(source, f"camera {topic}: frame dropped: {error}")
            return
        height, width = frame.shape[:2]
        s = self._settings
        if (s.image_width and width != s.image_width) or (
            s.image_height and height != s.image_height
        ):
            self._input_fault(source, (
                f"camera {topic}: frame dropped: {width}x{height} px, expected "
                f"{s.image_width or 'any'}x{s.image_height or 'any'} (image_width x image_height)"
            ))
            return
        try:
            self._buffers.push_frame(camera, stamp_ns(msg.header.stamp), frame)
        except ValueError as error:
            if self._due(f"order {topic}"):
                self.get_logger().warning(f"camera {topic}: frame dropped: {error}")
            return
        self._run.clear_fault(source)

    def _on_joints(self, msg: JointState) -> None:
        topic = self._settings.joint_states_topic
        try:
            sample = joint_sample_from_msg(msg, self._settings.joint_names)
        except ValueError as error:  # missing joints, NaN/inf
            self._input_fault("joint_states", f"joint states on {topic}: {error}")
            return
        try:
            self._buffers.push_joints(sample)
        except ValueError as error:
            if self._due("order joint_states"):
                self.get_logger().warning(f"joint states on {topic} dropped: {error}")
            return
        self._run.clear_fault("joint_states")

    def _on_instruction_topic(self, msg: String) -> None:
        accepted, message = self._request_instruction(msg.data)
        if not accepted and self._due("instruction"):
            self.get_logger().warning(f"instruction refused: {message}")

    def _input_fault(self, source: str, reason: str) -> None:
        # Log each new reason at once, a persisting one every _LOG_PERIOD_S.
        if self._run.raise_fault(source, reason) | self._due(source):
            self.get_logger().error(reason)

    # ---- control ------------------------------------------------------------------------

    def _on_control(self) -> None:
        if self._loaded is None:
            return  # idle: nothing to hold, nothing to publish
        s = self._settings
        now_ns = self.get_clock().now().nanoseconds
        joints = self._buffers.newest_joints()
        stale = stale_input(now_ns, s.camera_topics, self._buffers.newest_frame_stamps_ns(),
                            joints.stamp_ns if joints else None, s.max_obs_age_s)
        if stale is None:
            self._run.clear_fault("watchdog")
        elif self._run.raise_fault("watchdog", stale):
            self.get_logger().warning(f"holding: {stale}")
        if not self._run.running.is_set() or joints is None:
            return
        with self._chunk_lock:
            plan = self._scheduler.plan(now_ns / 1e9, s.trajectory_points, s.min_point_lead_s)
            if plan is None:
                return
            times, positions = plan
            try:
                safe = self._commands.filter(now_ns / 1e9, times, positions, joints.positions,
                                             joints.velocities)
            except UnsafeTargetsError as error:
                unsafe: UnsafeTargetsError | None = error
            else:
                unsafe = None
        if unsafe is not None:
            reason = f"safety filter: {unsafe}"
            self._run.raise_fault("safety", reason, latch=True)
            if self._due("safety"):
                self.get_logger().error(f"{reason}; call ~/resume once it is resolved")
            return
        command = TrajectoryCommand(now_ns, s.joint_names, times, safe.positions)
        self._trajectory_pub.publish(trajectory_to_msg(command))
        self._rate.tick(now_ns)

    def _on_inference(self, result: InferenceResult) -> None:
        """Worker thread: schedule the chunk and publish it as an ActionChunk."""
        try:
            chunk_id = self._submit(result)
        except ValueError as error:
            self._on_inference_error(f"inference gave an unusable chunk: {error}")
            return
        if chunk_id is None:
            return
        self._latency_s = result.latency_s
        self._chunk_pub.publish(chunk_to_msg(ChunkReport(
            self.get_clock().now().nanoseconds, self._settings.joint_names, result.chunk,
            self._dt, chunk_id, result.observation.stamp_ns, result.latency_s,
        )))

    def _submit(self, result: InferenceResult) -> int | None:
        """The new chunk's id, or None when a hold came in while it was computed."""
        with self._chunk_lock:
            if result.epoch != self._epoch:
                return None
            self._scheduler.submit(result.chunk, result.observation.stamp_s, self._dt)
            self._chunk_id += 1
            return self._chunk_id

    def _on_inference_error(self, reason: str) -> None:
        self._run.raise_fault("inference", reason, latch=True)
        if self._due("inference"):
            self.get_logger().error(f"{reason}; call ~/resume once it is resolved")

    def _halt(self) -> None:
        """Drop every chunk, including one being computed now (its epoch is then old); the
        next trajectory starts from the measured state."""
        with self._chunk_lock:
            self._scheduler.reset()
            self._commands.reset()
            self._epoch += 1

    # ---- state, status and services -----------------------------------------------------

    def _on_state_change(self, view: StateView) -> None:
        if view.state is not State.RUNNING:
            self._halt()
        self._publish_status(view)

    def _publish_status(self, view: StateView | None = None) -> None:
        view = view or self._run.view()
        now_ns = self.get_clock().now().nanoseconds
        self._status_pub.publish(status_to_msg(StatusReport(
            now_ns, view.state, view.instruction, self._checkpoint_id, self._latency_s,
            self._rate.rate_hz(now_ns), view.last_fault, view.faults,
        )))

    def _on_pause(self, request: Trigger.Request, response: Trigger.Response) -> Any:
        self._run.set_paused(True)
        response.success, response.message = True, "paused: no trajectories are published"
        return response

    def _on_resume(self, request: Trigger.Request, response: Trigger.Response) -> Any:
        if self._loaded is None:
            response.success = False
            response.message = "no checkpoint loaded: set the checkpoint parameter and restart"
            return response
        self._run.clear_latched()
        # Frames from before the pause show a world that may have changed since (an episode
        # reset, a person moving things): the model starts again from a fresh history.
        self._buffers.forget_frames_before(self.get_clock().now().nanoseconds)
        self._run.set_paused(False)
        view = self._run.view()
        response.success = True
        response.message = "resumed" if view.state is State.RUNNING else (
            f"resumed, but holding while faulted: {view.last_fault}")
        return response

    def _on_set_instruction(
        self, request: SetInstruction.Request, response: SetInstruction.Response
    ) -> Any:
        response.success, response.message = self._request_instruction(request.instruction)
        return response

    def _request_instruction(self, text: str) -> tuple[bool, str]:
        """Set the instruction through the parameter, so that both always agree."""
        result = self.set_parameters([Parameter("instruction", Parameter.Type.STRING, text)])[0]
        return result.successful, (f"following: {text}" if result.successful else result.reason)

    def _due(self, key: str) -> bool:
        """Rate-limits logs per key (e.g. per topic) to one per _LOG_PERIOD_S.

        rclpy's own throttle is per call site, so one bad camera would hide another's errors.
        """
        now = time.monotonic()
        if now - self._logged_at.get(key, -_LOG_PERIOD_S) < _LOG_PERIOD_S:
            return False
        self._logged_at[key] = now
        return True


def main(args: list[str] | None = None) -> int:
    """Run the node until shutdown; exit code 2 when it cannot start."""
    return spin_node(VAMPolicyNode, NODE_NAME, (ParameterError, StartupError), args)


if __name__ == "__main__":
    sys.exit(main())
