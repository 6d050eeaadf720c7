"""The architecture rule: model, data, train and sim never import ROS (they run anywhere)."""

from __future__ import annotations

import subprocess
import sys

import pytest

_BLOCK_ROS = """
import importlib, importlib.abc, sys

class BlockRos(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in {"rclpy", "vam_msgs", "sensor_msgs", "trajectory_msgs", "std_msgs",
                   "std_srvs", "builtin_interfaces", "cv_bridge"}:
            raise ImportError(f"ROS import {name!r} is not allowed here")
        return None

sys.meta_path.insert(0, BlockRos())
import pkgutil, vam_policy.{room} as room
for info in pkgutil.walk_packages(room.__path__, room.__name__ + "."):
    importlib.import_module(info.name)
print("ok")
"""


@pytest.mark.parametrize("room", ["model", "data", "train", "sim"])
def test_room_imports_with_ros_blocked(room: str) -> None:
    """Every module under vam_policy.<room> imports in a process where ROS imports fail."""
    result = subprocess.run(
        [sys.executable, "-c", _BLOCK_ROS.replace("{room}", room)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
