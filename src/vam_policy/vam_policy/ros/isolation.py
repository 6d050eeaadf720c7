"""Environment that keeps a run's ROS 2 traffic on this machine.

Demos and tests of this workspace set `ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST` (with Kilted,
the older localhost-only switch still multicasts on external interfaces), a domain of their
own and a temporary log folder. A user's own ROS 2 install keeps ROS defaults: nothing here
runs unless a demo, test or self-check asks for it. Imports no rclpy.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Mapping

# Fast DDS maps domains above ~232 outside the valid port range; stay well inside it.
_DOMAIN_RANGE = (1, 100)


def local_ros_env(
    base: Mapping[str, str] | None = None,
    domain_id: int | None = None,
    log_dir: str | None = None,
) -> dict[str, str]:
    """Return a copy of `base` (default: os.environ) with loopback-only ROS 2 settings.

    Keeps a `ROS_DOMAIN_ID` / `ROS_LOG_DIR` already in `base` unless one is passed, so that
    processes started by one run (a test session, a demo) share one private domain.
    """
    env = dict(os.environ if base is None else base)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    elif "ROS_DOMAIN_ID" not in env:
        env["ROS_DOMAIN_ID"] = str(random.randint(*_DOMAIN_RANGE))
    if log_dir is not None:
        env["ROS_LOG_DIR"] = log_dir
    elif "ROS_LOG_DIR" not in env:
        env["ROS_LOG_DIR"] = tempfile.mkdtemp(prefix="vam-ros-log-")
    return env


def isolate_this_process(domain_id: int | None = None) -> dict[str, str]:
    """Apply `local_ros_env` to this process (before `rclpy.init`) and return the settings."""
    env = local_ros_env(domain_id=domain_id)
    keys = ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "ROS_LOG_DIR")
    os.environ.update({k: env[k] for k in keys})
    return {k: env[k] for k in keys}
