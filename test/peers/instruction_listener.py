"""Test peer: serves vam_msgs/srv/SetInstruction and listens for one vam_msgs/ActionChunk.

Prints one JSON line with what it received, then exits 0; exits 1 after --timeout seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import rclpy

from vam_msgs.msg import ActionChunk
from vam_msgs.srv import SetInstruction


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    rclpy.init()
    node = rclpy.create_node("instruction_listener")
    got: dict[str, object] = {}

    def on_chunk(msg: ActionChunk) -> None:
        got.setdefault("chunk", {
            "joint_names": list(msg.joint_names),
            "horizon": msg.horizon,
            "positions": list(msg.positions),
            "dt": msg.dt,
            "chunk_id": msg.chunk_id,
            "observation_stamp": [msg.observation_stamp.sec, msg.observation_stamp.nanosec],
            "inference_latency_s": msg.inference_latency_s,
        })

    def on_instruction(request, response):
        got["instruction"] = request.instruction
        response.success = bool(request.instruction.strip())
        response.message = f"following: {request.instruction}"
        return response

    node.create_subscription(ActionChunk, "vam/action_chunk", on_chunk, 10)
    node.create_service(SetInstruction, "vam/set_instruction", on_instruction)
    deadline = time.monotonic() + args.timeout
    while rclpy.ok() and len(got) < 2 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    print(json.dumps(got), flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0 if len(got) == 2 else 1


if __name__ == "__main__":
    sys.exit(main())
