"""Test peer: calls vam/set_instruction once, then publishes a fixed vam_msgs/ActionChunk.

Prints the service response as one JSON line; publishes at 10 Hz until killed or --timeout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import rclpy
from builtin_interfaces.msg import Time

from vam_msgs.msg import ActionChunk
from vam_msgs.srv import SetInstruction


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instruction", required=True)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    rclpy.init()
    node = rclpy.create_node("chunk_talker")
    publisher = node.create_publisher(ActionChunk, "vam/action_chunk", 10)
    client = node.create_client(SetInstruction, "vam/set_instruction")
    chunk = ActionChunk(
        joint_names=["joint_a", "joint_b"],
        horizon=3,
        positions=[0.0, 0.5, 0.1, 0.6, 0.2, 0.7],
        dt=0.05,
        chunk_id=42,
        observation_stamp=Time(sec=12, nanosec=345),
        inference_latency_s=0.031,
    )
    deadline = time.monotonic() + args.timeout
    if not client.wait_for_service(timeout_sec=args.timeout):
        return 1
    future = client.call_async(SetInstruction.Request(instruction=args.instruction))
    reported = False
    while rclpy.ok() and time.monotonic() < deadline:
        chunk.header.stamp = node.get_clock().now().to_msg()
        publisher.publish(chunk)
        rclpy.spin_once(node, timeout_sec=0.1)
        if future.done() and not reported:
            result = future.result()
            print(json.dumps({"success": result.success, "message": result.message}), flush=True)
            reported = True
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
