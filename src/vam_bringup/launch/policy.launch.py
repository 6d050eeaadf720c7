"""Start vam_policy_node for one robot profile.

    ros2 launch vam_bringup policy.launch.py robot:=ur5e checkpoint:=/path/to/checkpoint

`robot` picks `share/vam_bringup/config/<robot>.yaml` (the workspace's config/, installed by
CMake); the other arguments override single parameters of that profile, and are left to the
profile when empty. `camera_topics` takes "/a,/b" or "[/a, /b]". Needs a ROS 2 install with
`launch` and `launch_ros`; the node itself also runs without them (see the README).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

ROBOTS = ("franka_fr3", "ur5e", "sim_panda")


def _camera_topics(text: str) -> list[str]:
    """'/a,/b' or '[/a, /b]' -> ['/a', '/b']."""
    value = yaml.safe_load(text) if text.strip().startswith("[") else text.split(",")
    topics = [str(topic).strip() for topic in value if str(topic).strip()]
    if not topics:
        raise ValueError(f"camera_topics: expected '/a,/b' or '[/a, /b]', got {text!r}")
    return topics


def _start_paused(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false"):
        raise ValueError(f"start_paused: expected true or false, got {text!r}")
    return lowered == "true"


def _policy_node(context: LaunchContext) -> list[Node]:
    robot = LaunchConfiguration("robot").perform(context)
    profile = Path(get_package_share_directory("vam_bringup"), "config", f"{robot}.yaml")
    overrides: dict[str, object] = {}
    checkpoint = LaunchConfiguration("checkpoint").perform(context)
    if checkpoint:
        overrides["checkpoint"] = str(Path(checkpoint).expanduser().resolve())
    cameras = LaunchConfiguration("camera_topics").perform(context)
    if cameras.strip():
        overrides["camera_topics"] = _camera_topics(cameras)
    paused = LaunchConfiguration("start_paused").perform(context)
    if paused.strip():
        overrides["start_paused"] = _start_paused(paused)
    return [Node(
        package="vam_policy",
        executable="vam_policy_node",
        name="vam_policy_node",
        parameters=[str(profile), overrides],
        output="screen",
        emulate_tty=True,
    )]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument("robot", choices=list(ROBOTS),
                              description="robot profile: " + ", ".join(ROBOTS)),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="policy checkpoint folder; empty: the node idles"),
        DeclareLaunchArgument("camera_topics", default_value="",
                              description="camera topics replacing the profile's, '/a,/b'"),
        DeclareLaunchArgument("start_paused", default_value="",
                              description="true or false; empty: the profile's value"),
        OpaqueFunction(function=_policy_node),
    ])
