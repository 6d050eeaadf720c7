"""Every parameter of `vam_sim_node`, and the frozen settings built from them. No rclpy.

The `vam_sim_node:` section of a profile (`config/sim_panda.yaml`) sits beside the policy
node's, so one `--params-file` configures both ends of the loop. The table reuses the policy
node's `ParameterSpec` checks; `sim/recording.py` reads the same settings, so recorded
demonstrations carry exactly the topics and rates the live sim node publishes.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vam_policy.ros.parameters import (
    ParameterError,
    ParameterSpec,
    ParameterValue,
    ParamType,
    _topic_problem,
    load_parameters_file,
)
from vam_policy.sim.arm import PHYSICS_HZ, SimConfig
from vam_policy.sim.tasks import TASKS

SIM_NODE_NAME = "vam_sim_node"


def _task_problem(name: str) -> str | None:
    if name in TASKS:
        return None
    close = difflib.get_close_matches(name, TASKS, n=2)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    return f"unknown sim task {name!r}{hint} (known: {', '.join(sorted(TASKS))})"


def _rate_problem(hz: float) -> str | None:
    substeps = PHYSICS_HZ / hz
    if abs(substeps - round(substeps)) < 1e-9:
        return None
    return f"{hz} Hz does not divide the {PHYSICS_HZ:g} Hz physics rate (e.g. 10.0, 20.0, 25.0)"


def _spec(name: str, type_: ParamType, default: ParameterValue, unit: str, description: str,
          **checks: Any) -> ParameterSpec:
    """Every sim node parameter is read-only: changing a rate or topic live gains nothing."""
    return ParameterSpec(name, type_, default, unit, description, True, **checks)


_T = ParamType
SIM_PARAMETERS: tuple[ParameterSpec, ...] = (
    _spec("task", _T.STRING, "lift_red", "",
          "Task of the episode the node starts with (later ones: the ~/reset service).",
          check=_task_problem),
    _spec("seed", _T.INTEGER, 0, "", "Seed of the first episode: cube layout and start pose."),
    _spec("control_rate_hz", _T.DOUBLE, 20.0, "Hz",
          "Physics steps per second, paced by the wall clock; each holds one position command.",
          minimum=1.0, maximum=100.0, check=_rate_problem),
    _spec("episode_time_limit_s", _T.DOUBLE, 10.0, "s",
          "Simulated time after which an episode is done (the arm keeps being simulated).",
          minimum=0.0, minimum_exclusive=True),
    _spec("cameras", _T.STRING_ARRAY, ("agentview",), "",
          "MuJoCo cameras that are rendered, one topic each (robot0_eye_in_hand: the wrist).",
          min_items=1, unique_items=True),
    _spec("image_width", _T.INTEGER, 128, "px", "Rendered image width.",
          minimum=16, maximum=1024),
    _spec("image_height", _T.INTEGER, 128, "px", "Rendered image height.",
          minimum=16, maximum=1024),
    _spec("camera_rate_hz", _T.DOUBLE, 15.0, "Hz",
          "Rate of the camera timer; each publishes the newest rendered frame, once.",
          minimum=0.0, maximum=100.0, minimum_exclusive=True),
    _spec("joint_states_rate_hz", _T.DOUBLE, 50.0, "Hz",
          "Rate of the joint state timer; each publishes the newest physics state, once "
          "(stamped when it was simulated), so at most control_rate_hz states go out per s.",
          minimum=0.0, maximum=1000.0, minimum_exclusive=True),
    _spec("status_rate_hz", _T.DOUBLE, 4.0, "Hz",
          "Rate of periodic EpisodeStatus messages (also sent on every change).",
          minimum=0.0, maximum=100.0, minimum_exclusive=True),
    _spec("camera_topics", _T.STRING_ARRAY, ("/sim/camera/agentview/image_raw",), "",
          "sensor_msgs/Image (rgb8) outputs, one per camera, in the same order.",
          min_items=1, unique_items=True, check=_topic_problem),
    _spec("joint_states_topic", _T.STRING, "/joint_states", "",
          "sensor_msgs/JointState output: the arm joints and robot0_gripper.",
          check=_topic_problem),
    _spec("trajectory_topic", _T.STRING, "/joint_trajectory_controller/joint_trajectory", "",
          "trajectory_msgs/JointTrajectory input, executed like a JointTrajectoryController.",
          check=_topic_problem),
)
SIM_SPECS: Mapping[str, ParameterSpec] = {spec.name: spec for spec in SIM_PARAMETERS}


@dataclass(frozen=True)
class SimNodeSettings:
    """Validated sim node parameters (field names = parameter names; units in the table)."""

    task: str
    seed: int
    control_rate_hz: float
    episode_time_limit_s: float
    cameras: tuple[str, ...]
    image_width: int
    image_height: int
    camera_rate_hz: float
    joint_states_rate_hz: float
    status_rate_hz: float
    camera_topics: tuple[str, ...]
    joint_states_topic: str
    trajectory_topic: str

    def __post_init__(self) -> None:
        problems: list[str] = []
        for spec in SIM_PARAMETERS:
            try:
                object.__setattr__(self, spec.name, spec.validate(getattr(self, spec.name)))
            except ParameterError as error:
                problems.extend(error.problems)
        if not problems and len(self.cameras) != len(self.camera_topics):
            problems.append(f"camera_topics: expected one per camera ({len(self.cameras)}), "
                            f"got {len(self.camera_topics)}")
        if problems:
            raise ParameterError(problems)

    def arm_config(self) -> SimConfig:
        """The SimConfig the sim node (and a recording with these settings) runs."""
        return SimConfig(cameras=self.cameras, image_height=self.image_height,
                         image_width=self.image_width, control_hz=self.control_rate_hz,
                         horizon_s=self.episode_time_limit_s, seed=self.seed)


def sim_settings_from_parameters(values: Mapping[str, object]) -> SimNodeSettings:
    """SimNodeSettings from parameter values (defaults fill the rest); every problem at once."""
    problems = []
    for name in values:
        if name not in SIM_SPECS:
            close = difflib.get_close_matches(name, SIM_SPECS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{name}: not a parameter of {SIM_NODE_NAME}{hint}")
    try:
        settings = SimNodeSettings(**{spec.name: values.get(spec.name, spec.default)
                                      for spec in SIM_PARAMETERS})
    except ParameterError as error:
        problems.extend(error.problems)
    if problems:
        raise ParameterError(problems)
    return settings


def load_sim_settings(profile: str | Path) -> SimNodeSettings:
    """The `vam_sim_node` settings of a profile file, checked as the node checks them."""
    return sim_settings_from_parameters(load_parameters_file(profile, SIM_NODE_NAME))
