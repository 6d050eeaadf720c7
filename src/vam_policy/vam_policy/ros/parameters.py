"""Every parameter of `vam_policy_node`, in one table, and the frozen settings built from them.

The node declares each `ParameterSpec` with a `ParameterDescriptor` (type, description,
read_only, range) and reads the values once, through `settings_from_parameters`, into a
`NodeSettings`. Validation lives here, free of rclpy, so a params file is checked by a unit test
exactly as the node would check it, and the reference docs can be generated from the table.
"""

from __future__ import annotations

import array
import dataclasses
import difflib
import enum
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vam_policy.dotted_names import flatten

NODE_NAME = "vam_policy_node"

ParameterValue = (
    bool | int | float | str
    | tuple[bool, ...] | tuple[int, ...] | tuple[float, ...] | tuple[str, ...]
)


class ParamType(enum.IntEnum):
    """ROS 2 parameter types; values equal rcl_interfaces/ParameterType (and rclpy's enum)."""

    BOOL = 1
    INTEGER = 2
    DOUBLE = 3
    STRING = 4
    BOOL_ARRAY = 6
    INTEGER_ARRAY = 7
    DOUBLE_ARRAY = 8
    STRING_ARRAY = 9

    @property
    def is_array(self) -> bool:
        return self >= ParamType.BOOL_ARRAY

    @property
    def label(self) -> str:
        return {1: "bool", 2: "integer", 3: "double", 4: "string", 6: "bool[]",
                7: "integer[]", 8: "double[]", 9: "string[]"}[self.value]


class ParameterError(ValueError):
    """One or more node parameters are missing, unknown, of the wrong type or out of range."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            super().__init__(f"invalid node parameter: {self.problems[0]}")
        else:
            listed = "\n".join(f"  - {p}" for p in self.problems)
            super().__init__(f"invalid node parameters:\n{listed}")


_TOKEN = r"[A-Za-z_][A-Za-z0-9_]*"
_TOPIC = re.compile(rf"^(~(/{_TOKEN})*|/?{_TOKEN}(/{_TOKEN})*)$")
_DEVICE = re.compile(r"^(cpu|cuda(:[0-9]+)?)$")


def _topic_problem(name: str) -> str | None:
    """ROS 2 topic name rules (without substitutions): the node would fail later, less clearly."""
    if _TOPIC.match(name) and "__" not in name:
        return None
    return f"{name!r} is not a valid ROS 2 topic name (e.g. '/camera/image_raw' or '~/status')"


def _device_problem(device: str) -> str | None:
    if _DEVICE.match(device):
        return None
    return f"{device!r} is not a torch device; expected 'cpu', 'cuda' or 'cuda:<index>'"


def _joint_name_problem(name: str) -> str | None:
    if name and not any(c.isspace() for c in name):
        return None
    return f"joint name {name!r} is empty or contains whitespace"


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter: what the node declares and how a value is checked.

    `default` None means required: the profile YAML must set it (robot-specific values such as
    joint names and limits have no safe default). Ranges apply to each element of an array.
    """

    name: str
    type: ParamType
    default: ParameterValue | None
    unit: str
    description: str
    read_only: bool
    minimum: float | None = None
    maximum: float | None = None
    minimum_exclusive: bool = False
    choices: tuple[str, ...] = ()
    min_items: int = 0
    unique_items: bool = False
    check: Callable[[Any], str | None] | None = field(default=None, compare=False)

    @property
    def required(self) -> bool:
        return self.default is None

    @property
    def constraints(self) -> str:
        """Human-readable constraints, for `ParameterDescriptor.additional_constraints` and docs."""
        parts = []
        if self.minimum is not None:
            parts.append(f"{'>' if self.minimum_exclusive else '>='} {self.minimum:g}")
        if self.maximum is not None:
            parts.append(f"<= {self.maximum:g}")
        if self.choices:
            parts.append("one of " + ", ".join(self.choices))
        if self.min_items:
            parts.append(f"at least {self.min_items} item(s)")
        if self.unique_items:
            parts.append("no duplicates")
        return "; ".join(parts)

    def validate(self, value: object) -> ParameterValue:
        """Return `value` normalized (arrays become tuples) or raise ParameterError."""
        items = self._items(value) if self.type.is_array else [value]
        problems = [p for item in items if (p := self._item_problem(item)) is not None]
        if self.type.is_array and len(items) < self.min_items:
            problems.append(f"needs at least {self.min_items} item(s), got {len(items)}")
        if self.unique_items and len(set(items)) != len(items):
            problems.append(f"contains duplicates: {list(items)}")
        if problems:
            raise ParameterError([f"{self.name}: {problems[0]}"])
        if self.type.is_array:
            return tuple(_plain(item) for item in items)
        return _plain(value)

    def _items(self, value: object) -> list[object]:
        if isinstance(value, (list, tuple, array.array)) or (
            isinstance(value, np.ndarray) and value.ndim == 1
        ):
            return list(value)
        raise ParameterError(
            [f"{self.name}: expected {self.type.label} (a list), got {type(value).__name__} "
             f"{value!r}"]
        )

    def _item_problem(self, item: object) -> str | None:
        scalar = ParamType(self.type - 5) if self.type.is_array else self.type
        if scalar is ParamType.BOOL:
            ok = isinstance(item, (bool, np.bool_))
        elif scalar is ParamType.INTEGER:
            ok = isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_))
        elif scalar is ParamType.DOUBLE:
            ok = isinstance(item, (float, np.floating))
            if isinstance(item, int) and not isinstance(item, bool):
                return (f"expected {self.type.label}, got integer {item}: write {item}.0, "
                        "ROS 2 does not turn integers into doubles")
        else:
            ok = isinstance(item, str)
        if not ok:
            return f"expected {self.type.label}, got {type(item).__name__} {item!r}"
        if scalar in (ParamType.INTEGER, ParamType.DOUBLE):
            number = float(item)  # type: ignore[arg-type]
            if not math.isfinite(number):
                return f"must be finite, got {item}"
            if self.minimum is not None and (
                number < self.minimum or (self.minimum_exclusive and number == self.minimum)
            ):
                return f"{item} out of range: must be {self.constraints}"
            if self.maximum is not None and number > self.maximum:
                return f"{item} out of range: must be {self.constraints}"
        if self.choices and item not in self.choices:
            return f"{item!r} is not one of {', '.join(self.choices)}"
        if self.check is not None:
            return self.check(item)
        return None


def _plain(item: object) -> bool | int | float | str:
    """numpy scalars and array.array items to plain Python values (hashable, YAML-friendly)."""
    if isinstance(item, (bool, np.bool_)):
        return bool(item)
    if isinstance(item, (int, np.integer)):
        return int(item)
    if isinstance(item, (float, np.floating)):
        return float(item)
    return item  # type: ignore[return-value]


def _spec(name: str, type_: ParamType, default: ParameterValue | None, unit: str,
          description: str, *, read_only: bool, **checks: Any) -> ParameterSpec:
    return ParameterSpec(name, type_, default, unit, description, read_only, **checks)


_T = ParamType
PARAMETERS: tuple[ParameterSpec, ...] = (
    # Model
    _spec("checkpoint", _T.STRING, "", "path",
          "Checkpoint folder to load. Empty: the node starts without a policy and never moves.",
          read_only=True),
    _spec("device", _T.STRING, "cuda", "",
          "Torch device for inference.", read_only=True, check=_device_problem),
    _spec("dtype", _T.STRING, "bfloat16", "",
          "Inference precision of the video backbone; the action decoder stays float32.",
          read_only=True,
          choices=("float32", "float16", "bfloat16")),
    _spec("tau_v", _T.DOUBLE, 1.0, "",
          "Video flow time at which the latent plan is read: 1 = future frames pure noise, one "
          "backbone pass per chunk. Tuned per task.", read_only=False, minimum=0.0, maximum=1.0),
    _spec("flow_steps", _T.INTEGER, 10, "steps",
          "Euler steps of the action decoder's flow, from noise to actions.", read_only=False,
          minimum=1, maximum=1000),
    _spec("noise_scale", _T.DOUBLE, 1.0, "",
          "Scale of the decoder's start noise: 1 samples a chunk from the learned distribution, "
          "0 takes the one chunk the flow carries zero to (no randomness).", read_only=False,
          minimum=0.0, maximum=2.0),
    # Robot and limits
    _spec("joint_names", _T.STRING_ARRAY, None, "",
          "Joints the policy controls, in model order; joint states are reordered to it.",
          read_only=True, min_items=1, unique_items=True, check=_joint_name_problem),
    _spec("joint_position_lower", _T.DOUBLE_ARRAY, None, "rad",
          "Lower position limit of each joint (order of joint_names).", read_only=True),
    _spec("joint_position_upper", _T.DOUBLE_ARRAY, None, "rad",
          "Upper position limit of each joint (order of joint_names).", read_only=True),
    _spec("joint_limit_tolerance", _T.DOUBLE, 0.01, "rad",
          "A joint measured at most this far outside its position limits counts as at the "
          "limit (a position controller sent a target at the limit overshoots it a little); "
          "further out latches a fault. Targets always stay inside the limits.", read_only=True,
          minimum=0.0),
    _spec("max_joint_velocity", _T.DOUBLE_ARRAY, None, "rad/s",
          "Velocity limit of each joint, enforced by the safety filter.", read_only=True,
          minimum=0.0, minimum_exclusive=True),
    _spec("max_joint_acceleration", _T.DOUBLE_ARRAY, None, "rad/s^2",
          "Acceleration limit of each joint, enforced by the safety filter.", read_only=True,
          minimum=0.0, minimum_exclusive=True),
    _spec("max_step_from_current", _T.DOUBLE_ARRAY, (0.5,), "rad",
          "Largest distance of any published target from the measured position of each joint "
          "(one value for every joint, or one per joint); a commanded position further from "
          "the measured one latches a fault.", read_only=True, minimum=0.0,
          minimum_exclusive=True),
    _spec("velocity_scaling", _T.DOUBLE, 1.0, "",
          "Factor on max_joint_velocity, e.g. 0.25 for a first run on a new robot.",
          read_only=False, minimum=0.0, maximum=1.0, minimum_exclusive=True),
    # Topics
    _spec("camera_topics", _T.STRING_ARRAY, None, "",
          "Camera topics, in the order the model's views were trained.", read_only=True,
          min_items=1, unique_items=True, check=_topic_problem),
    _spec("camera_compressed", _T.BOOL_ARRAY, (False,), "",
          "Per camera: subscribe as sensor_msgs/CompressedImage. One value applies to all.",
          read_only=True, min_items=1),
    _spec("image_width", _T.INTEGER, 0, "px",
          "Expected camera frame width; frames of another width are refused. 0 = any.",
          read_only=True, minimum=0),
    _spec("image_height", _T.INTEGER, 0, "px",
          "Expected camera frame height; frames of another height are refused. 0 = any.",
          read_only=True, minimum=0),
    _spec("joint_states_topic", _T.STRING, "/joint_states", "",
          "sensor_msgs/JointState input.", read_only=True, check=_topic_problem),
    _spec("instruction_topic", _T.STRING, "~/instruction", "",
          "std_msgs/String input that replaces the instruction.", read_only=True,
          check=_topic_problem),
    _spec("trajectory_topic", _T.STRING, None, "",
          "trajectory_msgs/JointTrajectory output: the ros2_control controller's topic.",
          read_only=True, check=_topic_problem),
    _spec("action_chunk_topic", _T.STRING, "~/action_chunk", "",
          "vam_msgs/ActionChunk output, one per inference, for debugging and recording.",
          read_only=True, check=_topic_problem),
    _spec("status_topic", _T.STRING, "~/status", "",
          "vam_msgs/PolicyStatus output.", read_only=True, check=_topic_problem),
    # Behaviour
    _spec("instruction", _T.STRING, "", "",
          "Language instruction followed at start (also settable by topic and service).",
          read_only=False),
    _spec("control_rate_hz", _T.DOUBLE, 10.0, "Hz",
          "Rate of the timer that publishes trajectories.", read_only=True,
          minimum=0.0, maximum=1000.0, minimum_exclusive=True),
    _spec("trajectory_points", _T.INTEGER, 5, "points",
          "Future chunk steps sent in each published trajectory.", read_only=False,
          minimum=1, maximum=1000),
    _spec("min_point_lead_s", _T.DOUBLE, 0.02, "s",
          "Chunk steps due sooner than this are left out of a trajectory: they could be past "
          "when the controller receives it, and a trajectory that ends in the past is refused.",
          read_only=False, minimum=0.0),
    _spec("execute_steps", _T.INTEGER, 5, "steps",
          "Steps of each chunk executed before it counts as used up (the node then holds "
          "until a newer chunk arrives).", read_only=False, minimum=1),
    _spec("replan_steps", _T.INTEGER, 0, "steps",
          "Chunk steps between the observations two predictions start from. 0: predict again "
          "as soon as a newer camera frame arrives; k: follow each chunk for k steps first "
          "(keep k below execute_steps so the next chunk arrives before this one is used up).",
          read_only=False, minimum=0),
    _spec("blend_steps", _T.INTEGER, 3, "steps",
          "Steps over which a new chunk is blended in from the one being executed. 0 = switch.",
          read_only=False, minimum=0),
    _spec("max_obs_age_s", _T.DOUBLE, 0.5, "s",
          "Watchdog: hold when camera or joint data is older than this.", read_only=True,
          minimum=0.0, minimum_exclusive=True),
    _spec("start_paused", _T.BOOL, True, "",
          "Start paused; resume with the ~/resume service.", read_only=True),
    _spec("status_rate_hz", _T.DOUBLE, 2.0, "Hz",
          "Rate of periodic status messages (also sent on every state change).",
          read_only=True, minimum=0.0, maximum=100.0, minimum_exclusive=True),
)
SPECS: Mapping[str, ParameterSpec] = {spec.name: spec for spec in PARAMETERS}


# Array parameters that take one value for every item of another, or one per item:
# name -> (the parameter listing the items, what "one per item" says in an error).
_ONE_OR_EACH = {
    "max_step_from_current": ("joint_names", "one per joint in joint_names"),
    "camera_compressed": ("camera_topics", "one per camera topic"),
}


@dataclass(frozen=True)
class NodeSettings:
    """Validated node parameters (field names = parameter names; see PARAMETERS for units).

    Construction validates every field and the relations between them, so a NodeSettings is
    always usable; `camera_compressed` is expanded to one value per camera and
    `max_step_from_current` to one per joint.
    """

    checkpoint: str
    device: str
    dtype: str
    tau_v: float
    flow_steps: int
    noise_scale: float
    joint_names: tuple[str, ...]
    joint_position_lower: tuple[float, ...]
    joint_position_upper: tuple[float, ...]
    joint_limit_tolerance: float
    max_joint_velocity: tuple[float, ...]
    max_joint_acceleration: tuple[float, ...]
    max_step_from_current: tuple[float, ...]
    velocity_scaling: float
    camera_topics: tuple[str, ...]
    camera_compressed: tuple[bool, ...]
    image_width: int
    image_height: int
    joint_states_topic: str
    instruction_topic: str
    trajectory_topic: str
    action_chunk_topic: str
    status_topic: str
    instruction: str
    control_rate_hz: float
    trajectory_points: int
    min_point_lead_s: float
    execute_steps: int
    replan_steps: int
    blend_steps: int
    max_obs_age_s: float
    start_paused: bool
    status_rate_hz: float

    def __post_init__(self) -> None:
        problems: list[str] = []
        for spec in PARAMETERS:
            try:
                object.__setattr__(self, spec.name, spec.validate(getattr(self, spec.name)))
            except ParameterError as error:
                problems.extend(error.problems)
        if not problems:
            problems = self._relation_problems()
        if problems:
            raise ParameterError(problems)
        for name, (items, _) in _ONE_OR_EACH.items():
            values = getattr(self, name)
            if len(values) == 1:
                object.__setattr__(self, name, values * len(getattr(self, items)))

    def _relation_problems(self) -> list[str]:
        problems = []
        joints = self.joint_names
        for name in ("joint_position_lower", "joint_position_upper", "max_joint_velocity",
                     "max_joint_acceleration"):
            values = getattr(self, name)
            if len(values) != len(joints):
                problems.append(
                    f"{name}: expected {len(joints)} values (one per joint in joint_names), "
                    f"got {len(values)}"
                )
        if not problems:
            problems.extend(
                f"joint_position_lower/upper: {joint}: lower {lo} must be < upper {hi}"
                for joint, lo, hi in zip(
                    joints, self.joint_position_lower, self.joint_position_upper, strict=True
                )
                if not lo < hi
            )
        for name, (items, each) in _ONE_OR_EACH.items():
            count, values = len(getattr(self, items)), getattr(self, name)
            if len(values) not in (1, count):
                problems.append(f"{name}: expected 1 value or {count} ({each}), "
                                f"got {len(values)}")
        return problems

    def to_parameters(self) -> dict[str, ParameterValue]:
        """The settings as parameter values (what the node would declare)."""
        return {spec.name: getattr(self, spec.name) for spec in PARAMETERS}


def _unknown_problem(name: str) -> str:
    close = difflib.get_close_matches(name, SPECS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{name}: not a parameter of {NODE_NAME}{hint}"


def settings_from_parameters(values: Mapping[str, object]) -> NodeSettings:
    """Build NodeSettings from parameter values; defaults fill what `values` leaves out.

    Raises ParameterError listing every unknown name (with the closest known one), every
    missing required parameter and every bad value, so one run shows all mistakes of a file.
    """
    problems = [_unknown_problem(name) for name in values if name not in SPECS]
    problems.extend(
        f"{spec.name}: required ({spec.type.label}, {spec.unit or 'no unit'}): {spec.description}"
        for spec in PARAMETERS
        if spec.required and spec.name not in values
    )
    if problems:
        raise ParameterError(problems)
    merged = {spec.name: values.get(spec.name, spec.default) for spec in PARAMETERS}
    return NodeSettings(**merged)


def validate_runtime_change(settings: NodeSettings, name: str, value: object) -> str | None:
    """Why a runtime change of `name` to `value` must be rejected, or None to accept it.

    For the node's on-set-parameters callback: read-only parameters (limits, topics, model)
    cannot change while the arm may be moving; others must keep the settings valid.
    """
    spec = SPECS.get(name)
    if spec is None:
        return _unknown_problem(name)
    if spec.read_only:
        return (f"{name} is read-only: changing it while the node runs is unsafe; "
                "restart the node with the new value")
    try:
        dataclasses.replace(settings, **{name: value})
    except ParameterError as error:
        return "; ".join(error.problems)
    return None


def resolve_topic(name: str, node_name: str = NODE_NAME) -> str:
    """The absolute name of a node's topic, the node in the root namespace ('~/x' ->
    '/vam_policy_node/x', 'x' -> '/x')."""
    if name.startswith("~"):
        return f"/{node_name}{name[1:]}"
    return name if name.startswith("/") else f"/{name}"


def load_parameters_file(path: str | Path, node_name: str = NODE_NAME) -> dict[str, object]:
    """The `ros__parameters` of `node_name` in a ROS 2 params file, as a flat dict.

    Accepts the node's name, '/'-prefixed name or the '/**' wildcard as top key. Nested keys
    become dotted names (as ROS 2 reads them), so they show up as unknown parameters.
    """
    document = yaml.safe_load(Path(path).read_text())
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a YAML mapping with top key {node_name!r}")
    for key in (node_name, f"/{node_name}", "/**"):
        section = document.get(key)
        if isinstance(section, dict) and isinstance(section.get("ros__parameters"), dict):
            return flatten(section["ros__parameters"])
    raise ValueError(
        f"{path}: expected top key {node_name!r} with a 'ros__parameters' mapping, "
        f"found keys {sorted(document)}"
    )

