"""`vam selfcheck`: proves the installed workspace works end to end on this machine.

Checks the Python stack the policy needs, runs one prediction of a tiny random-weight policy
(real diffusers Cosmos transformer + Wan VAE, MiniLM text, flow-matching decoder), then starts
a real rclpy node on a private loopback-only domain and sends a `vam_msgs/PolicyStatus` to
itself over DDS.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from importlib.metadata import version

from vam_policy.ros.isolation import isolate_this_process

# (import name, distribution name) of what the policy needs at run time.
_MODULES = (
    ("torch", "torch"),
    ("torchvision", "torchvision"),
    ("diffusers", "diffusers"),
    ("peft", "peft"),
    ("safetensors", "safetensors"),
    ("cv2", "opencv-python-headless"),
    ("rosbags", "rosbags"),
)


def _check_modules() -> str:
    for module, _ in _MODULES:
        importlib.import_module(module)
    return ", ".join(f"{dist} {version(dist)}" for _, dist in _MODULES)


def _check_tiny_policy() -> str:
    import numpy as np

    from vam_policy.model.policy import VAMPolicy
    from vam_policy.model.policy_config import policy_preset

    joints = [f"joint{i}" for i in range(1, 8)]
    policy = VAMPolicy.build(policy_preset("tiny", joint_names=joints)).eval()
    frames = np.zeros((policy.config.history_frames, 48, 64, 3), np.uint8)
    start = time.perf_counter()
    targets = policy.predict(frames, np.zeros(len(joints)), "lift the red cube", seed=0)
    elapsed_ms = (time.perf_counter() - start) * 1e3
    if targets.shape != (policy.config.horizon, len(joints)) or not np.isfinite(targets).all():
        raise RuntimeError(f"tiny policy returned {targets.shape} with non-finite values")
    horizon, joint_count = targets.shape
    return f"tiny policy predicted a {horizon}x{joint_count} chunk in {elapsed_ms:.0f} ms"


def _check_dds_loopback(timeout_s: float = 10.0) -> str:
    settings = isolate_this_process()
    import rclpy

    from vam_msgs.msg import PolicyStatus

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("vam_selfcheck", context=context)
        received: list[PolicyStatus] = []
        node.create_subscription(PolicyStatus, "selfcheck/status", received.append, 10)
        publisher = node.create_publisher(PolicyStatus, "selfcheck/status", 10)
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(node)
        sent = PolicyStatus(state=PolicyStatus.STATE_IDLE, instruction="selfcheck")
        deadline = time.monotonic() + timeout_s
        while not received and time.monotonic() < deadline:
            publisher.publish(sent)
            executor.spin_once(timeout_sec=0.1)
        if not received or received[0].instruction != sent.instruction:
            raise RuntimeError(f"no PolicyStatus came back over DDS within {timeout_s} s")
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    return f"PolicyStatus round trip on domain {settings['ROS_DOMAIN_ID']} (loopback only)"


CHECKS: tuple[tuple[str, Callable[[], str]], ...] = (
    ("python stack", _check_modules),
    ("model core", _check_tiny_policy),
    ("ROS 2 over DDS", _check_dds_loopback),
)


def run_selfcheck() -> int:
    """Run every check, print one line each, and return a process exit code."""
    failed = 0
    for name, check in CHECKS:
        try:
            print(f"[ ok ] {name}: {check()}", flush=True)
        except Exception as error:  # report every failing check, not just the first
            failed += 1
            print(f"[FAIL] {name}: {type(error).__name__}: {error}", flush=True)
    print("selfcheck passed" if not failed else f"selfcheck: {failed} check(s) failed")
    return 1 if failed else 0
