"""The node's parameter table, the settings built from it, and the robot profiles in config/."""

from __future__ import annotations

import array
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from vam_policy.ros.parameters import (
    PARAMETERS,
    SPECS,
    NodeSettings,
    ParameterError,
    ParamType,
    load_parameters_file,
    settings_from_parameters,
    validate_runtime_change,
)
from vam_policy.ros.sim_parameters import sim_settings_from_parameters

PROFILES = sorted((REPO_ROOT / "config").glob("*.yaml"))


def _minimal(**changes: object) -> dict[str, object]:
    """The required parameters for a 2-joint arm, plus `changes`."""
    values: dict[str, object] = {
        "joint_names": ["a", "b"],
        "joint_position_lower": [-1.0, -2.0],
        "joint_position_upper": [1.0, 2.0],
        "max_joint_velocity": [1.0, 1.5],
        "max_joint_acceleration": [2.0, 2.0],
        "camera_topics": ["/cam/image_raw"],
        "trajectory_topic": "/arm_controller/joint_trajectory",
    }
    values.update(changes)
    return values


def _problems(**changes: object) -> str:
    with pytest.raises(ParameterError) as caught:
        settings_from_parameters(_minimal(**changes))
    return str(caught.value)


def test_the_three_robot_profiles_exist() -> None:
    """The profile tests below would pass vacuously if config/ lost its files."""
    assert {p.name for p in PROFILES} >= {"franka_fr3.yaml", "ur5e.yaml", "sim_panda.yaml"}


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_profile_keys_are_declared_and_load_into_valid_settings(profile: Path) -> None:
    """A typo in a profile would make the real node refuse to start (or silently ignore it)."""
    values = load_parameters_file(profile)
    unknown = sorted(set(values) - set(SPECS))
    assert not unknown, f"{profile.name} sets undeclared parameters {unknown}"
    settings = settings_from_parameters(values)
    assert len(settings.joint_position_lower) == len(settings.joint_names) >= 6
    assert all(v > 0 for v in settings.max_joint_velocity)
    assert profile.read_text().startswith("#"), "profile lacks its header comment on limits"


def test_profiles_name_the_real_joints_and_controllers() -> None:
    """Joint names and controller topics must match the vendors' ROS 2 drivers exactly."""
    fr3 = settings_from_parameters(load_parameters_file(REPO_ROOT / "config/franka_fr3.yaml"))
    ur5e = settings_from_parameters(load_parameters_file(REPO_ROOT / "config/ur5e.yaml"))
    sim = settings_from_parameters(load_parameters_file(REPO_ROOT / "config/sim_panda.yaml"))
    assert fr3.joint_names == tuple(f"fr3_joint{i}" for i in range(1, 8))
    assert fr3.trajectory_topic == "/fr3_arm_controller/joint_trajectory"
    assert ur5e.joint_names == ("shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint",
                                "wrist_1_joint", "wrist_2_joint", "wrist_3_joint")
    assert ur5e.trajectory_topic == "/scaled_joint_trajectory_controller/joint_trajectory"
    assert sim.joint_names == (*(f"robot0_joint{i}" for i in range(1, 8)), "robot0_gripper")


def test_settings_fields_are_exactly_the_parameter_table() -> None:
    """One table: a parameter added to PARAMETERS but not NodeSettings (or back) is a bug."""
    assert [f.name for f in dataclasses.fields(NodeSettings)] == [s.name for s in PARAMETERS]


def test_defaults_pass_their_own_checks_and_every_spec_is_documented() -> None:
    for spec in PARAMETERS:
        assert spec.description.endswith("."), spec.name
        if not spec.required:
            assert spec.validate(spec.default) == spec.default, spec.name


def test_param_types_equal_ros_parameter_type_constants() -> None:
    """The node passes ParamType values straight into ParameterDescriptor.type."""
    from rcl_interfaces.msg import ParameterType

    for member in ParamType:
        assert getattr(ParameterType, f"PARAMETER_{member.name}") == member.value


def test_misspelled_name_is_reported_with_the_closest_parameter() -> None:
    message = _problems(control_rate_hzz=10.0)
    assert "control_rate_hzz" in message and "did you mean 'control_rate_hz'" in message


def test_missing_required_parameters_are_all_listed() -> None:
    with pytest.raises(ParameterError) as caught:
        settings_from_parameters({"joint_names": ["a"]})
    text = str(caught.value)
    for name in ("joint_position_lower", "max_joint_acceleration", "camera_topics",
                 "trajectory_topic"):
        assert f"{name}: required" in text


def test_integer_for_a_double_is_refused_as_ros_2_would_with_a_hint() -> None:
    message = _problems(control_rate_hz=10)
    assert "control_rate_hz" in message and "write 10.0" in message


def test_limit_arrays_must_have_one_value_per_joint() -> None:
    message = _problems(max_joint_velocity=[1.0, 1.0, 1.0])
    assert "max_joint_velocity: expected 2 values" in message and "got 3" in message


def test_max_step_from_current_is_one_value_for_all_joints_or_one_per_joint() -> None:
    assert settings_from_parameters(_minimal()).max_step_from_current == (0.5, 0.5)
    both = settings_from_parameters(_minimal(max_step_from_current=[0.4]))
    assert both.max_step_from_current == (0.4, 0.4)
    each = settings_from_parameters(_minimal(max_step_from_current=[0.4, 1.0]))
    assert each.max_step_from_current == (0.4, 1.0)
    message = _problems(max_step_from_current=[0.4, 0.4, 1.0])
    assert "max_step_from_current: expected 1 value or 2" in message and "got 3" in message


def test_lower_limit_must_be_below_upper() -> None:
    message = _problems(joint_position_lower=[-1.0, 2.0])
    assert "b: lower 2.0 must be < upper 2.0" in message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("control_rate_hz", 0.0, "out of range: must be > 0"),
        ("max_joint_acceleration", [2.0, -1.0], "out of range"),
        ("tau_v", 1.5, "<= 1"),
        ("execute_steps", 0, ">= 1"),
        ("max_obs_age_s", float("nan"), "must be finite"),
        ("device", "gpu", "expected 'cpu', 'cuda'"),
        ("dtype", "fp8", "not one of float32, float16, bfloat16"),
        ("trajectory_topic", "/arm controller/cmd", "not a valid ROS 2 topic name"),
        ("camera_topics", [], "at least 1 item"),
        ("joint_names", ["a", "a"], "contains duplicates"),
        ("camera_topics", ["/cam", "/cam"], "contains duplicates"),
        ("start_paused", "yes", "expected bool, got str"),
        ("camera_compressed", [True, False], "expected 1 value or 1"),
    ],
)
def test_bad_values_are_refused_naming_the_parameter(name: str, value: object,
                                                     expected: str) -> None:
    message = _problems(**{name: value})
    assert name in message and expected in message


def test_all_bad_values_are_reported_at_once() -> None:
    """A user fixing a profile should not need one node start per mistake."""
    with pytest.raises(ParameterError) as caught:
        settings_from_parameters(_minimal(tau_v=3.0, flow_steps=-1, control_rate_hz=-2.0))
    assert len(caught.value.problems) == 3


def test_values_as_rclpy_returns_them_are_accepted() -> None:
    """rclpy hands double and integer arrays over as array.array."""
    settings = settings_from_parameters(_minimal(
        joint_position_lower=array.array("d", [-1.0, -2.0]),
        max_joint_velocity=array.array("d", [1.0, 1.5]),
    ))
    assert settings.joint_position_lower == (-1.0, -2.0)
    assert isinstance(settings.joint_position_lower, tuple)


def test_one_camera_compressed_value_applies_to_every_camera() -> None:
    settings = settings_from_parameters(_minimal(
        camera_topics=["/a/image", "/b/image"], camera_compressed=[True]
    ))
    assert settings.camera_compressed == (True, True)


def test_read_only_runtime_change_is_rejected_with_a_reason() -> None:
    settings = settings_from_parameters(_minimal())
    reason = validate_runtime_change(settings, "joint_position_upper", [2.0, 3.0])
    assert reason is not None and "read-only" in reason and "restart" in reason
    assert validate_runtime_change(settings, "trajectory_topic", "/x") is not None


def test_runtime_change_of_a_tunable_parameter_is_checked_like_startup() -> None:
    settings = settings_from_parameters(_minimal())
    assert validate_runtime_change(settings, "tau_v", 0.4) is None
    assert validate_runtime_change(settings, "instruction", "stack the cups") is None
    assert "tau_v" in (validate_runtime_change(settings, "tau_v", 1.4) or "")
    assert "write 2.0" in (validate_runtime_change(settings, "velocity_scaling", 2) or "")
    assert "did you mean 'tau_v'" in (validate_runtime_change(settings, "tau", 0.5) or "")


def test_params_file_needs_the_node_key_and_reports_nested_keys(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("policy_node:\n  ros__parameters:\n    tau_v: 0.5\n")
    with pytest.raises(ValueError, match="top key 'vam_policy_node'"):
        load_parameters_file(wrong)
    nested = tmp_path / "nested.yaml"
    nested.write_text("/**:\n  ros__parameters:\n    safety:\n      margin: 0.1\n")
    assert load_parameters_file(nested) == {"safety.margin": 0.1}


def test_building_blocks_never_import_rclpy() -> None:
    """The pure modules must import with rclpy unavailable (only ros/*node* may use it)."""
    code = (
        "import sys; sys.modules['rclpy'] = None\n"
        "import vam_policy.ros.parameters, vam_policy.ros.safety\n"
        "import vam_policy.ros.image_conversion, vam_policy.model.chunking\n"
        "assert 'rclpy' not in [m.split('.')[0] for m, v in sys.modules.items() if v]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"cameras": ["agentview", "agentview"],
          "camera_topics": ["/a", "/b"]}, "cameras: contains duplicates"),
        ({"cameras": ["agentview", "robot0_eye_in_hand"],
          "camera_topics": ["/a", "/a"]}, "camera_topics: contains duplicates"),
        ({"cameras": ["agentview", "robot0_eye_in_hand"]},
         "camera_topics: expected one per camera (2), got 1"),
    ],
)
def test_sim_cameras_need_unique_names_and_one_topic_each(values: dict[str, object],
                                                         expected: str) -> None:
    with pytest.raises(ParameterError, match=re.escape(expected)):
        sim_settings_from_parameters(values)
