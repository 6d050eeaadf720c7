"""Record demonstrations for VAM: `ros2 bag record` of every topic a robot profile needs.

    ros2 launch launch/record_demonstrations.launch.py robot:=ur5e out:=demos/ur5e_001

The topic list comes from the same profile the policy node runs with (cameras, joint states,
trajectory commands, instruction), through the code behind `vam record`, so a recording
always holds what `vam dataset build` reads. One bag is one episode.
"""

from __future__ import annotations

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration

from vam_policy.data.cli import record_command
from vam_policy.data.episodes import RecordingProfile


def _record(context: LaunchContext) -> list[ExecuteProcess]:
    robot = LaunchConfiguration("robot").perform(context)
    profile_path = Path(get_package_share_directory("vam_bringup"), "config", f"{robot}.yaml")
    out = Path(LaunchConfiguration("out").perform(context))
    command = record_command(RecordingProfile.load(profile_path), out)
    return [ExecuteProcess(cmd=command, output="screen")]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument("robot", default_value="ur5e",
                              description="robot profile: franka_fr3, ur5e or sim_panda"),
        DeclareLaunchArgument("out", description="new bag folder, one episode"),
        OpaqueFunction(function=_record),
    ])
