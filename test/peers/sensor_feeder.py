"""Test peer: the robot around vam_policy_node: synthetic sensors in, recorded outputs out.

Publishes camera frames (sensor_msgs/Image, on each --camera-topic) and joint states (the
profile's joints plus a gripper joint, in a new shuffled order every message), and prints one
JSON line per message the node sends back (trajectory, chunk, status). Reads JSON commands on
stdin to inject faults and to call the node's services and parameters (one line each,
answered by an "ack" or "reply" line with the same id). Camera faults hit the first camera
topic only; the others keep streaming good frames.

    {"cmd": "camera", "on": false}            stop / restart the first camera's frames
    {"cmd": "encoding", "value": "16UC1"}     publish its frames in another encoding
    {"cmd": "size", "width": 32, "height": 24}
    {"cmd": "joints", "mode": "nan"}          ok | nan | missing (drops robot0_joint3)
    {"cmd": "trigger", "service": "resume"}   std_srvs/Trigger ~/pause or ~/resume
    {"cmd": "set_instruction", "text": "..."} the SetInstruction service
    {"cmd": "publish_instruction", "text": "..."}
    {"cmd": "set_params", "params": {"execute_steps": 3}}
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
from typing import Any

import numpy as np
import rclpy
from peer_io import emit, run_peer, seconds
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from vam_msgs.msg import ActionChunk, PolicyStatus
from vam_msgs.srv import SetInstruction

GRIPPER = "robot0_finger_joint1"
_BYTES_PER_PIXEL = {"rgb8": 3, "bgr8": 3, "mono8": 1, "16UC1": 2, "yuv422": 2}
class Feeder(Node):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__("sensor_feeder")
        self.args = args
        self.joint_names: list[str] = json.loads(args.joint_names)
        self.positions = np.array(json.loads(args.positions), dtype=np.float64)
        self.camera_on, self.encoding = True, "rgb8"
        self.width, self.height = args.width, args.height
        self.joint_mode = "ok"
        self.last_frame_stamp = 0.0
        self.commands: queue.Queue[dict[str, Any]] = queue.Queue()
        self.rng = np.random.default_rng(0)
        node = f"/{args.node}"
        self.image_pubs = [self.create_publisher(Image, t, 10) for t in args.camera_topic]
        self.joint_pub = self.create_publisher(JointState, args.joint_states_topic, 10)
        self.instruction_pub = self.create_publisher(String, f"{node}/instruction", 10)
        self.create_subscription(JointTrajectory, args.trajectory_topic, self.on_trajectory, 50)
        self.create_subscription(ActionChunk, f"{node}/action_chunk", self.on_chunk, 50)
        self.create_subscription(PolicyStatus, f"{node}/status", self.on_status, 50)
        self.triggers = {name: self.create_client(Trigger, f"{node}/{name}")
                         for name in ("pause", "resume")}
        self.instruction_client = self.create_client(SetInstruction, f"{node}/set_instruction")
        self.params = AsyncParameterClient(self, args.node)
        self.create_timer(1.0 / args.camera_hz, self.publish_frame)
        self.create_timer(1.0 / args.joint_hz, self.publish_joints)
        self.create_timer(0.02, self.run_commands)

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # ---- sensors ------------------------------------------------------------------------

    def publish_frame(self) -> None:
        stamp = self.get_clock().now().to_msg()
        first, *others = self.image_pubs
        for publisher in others:
            publisher.publish(self.frame(stamp, "rgb8", self.args.width, self.args.height))
        if self.camera_on:
            first.publish(self.frame(stamp, self.encoding, self.width, self.height))
            self.last_frame_stamp = seconds(stamp)

    def frame(self, stamp: Any, encoding: str, width: int, height: int) -> Image:
        msg = Image(height=height, width=width, encoding=encoding, is_bigendian=0)
        msg.step = width * _BYTES_PER_PIXEL[encoding]
        msg.data = self.rng.integers(0, 256, msg.step * height, dtype=np.uint8).tobytes()
        msg.header.stamp = stamp
        msg.header.frame_id = "camera"
        return msg

    def publish_joints(self) -> None:
        names = [*self.joint_names, GRIPPER]
        values = [*self.positions.tolist(), 0.02]
        if self.joint_mode == "nan":
            values[1] = float("nan")
        elif self.joint_mode == "missing":
            del names[2], values[2]
        order = self.rng.permutation(len(names))
        msg = JointState(name=[names[i] for i in order],
                         position=[values[i] for i in order],
                         velocity=[0.0] * len(names))
        msg.header.stamp = self.get_clock().now().to_msg()
        self.joint_pub.publish(msg)

    # ---- what the node sends ------------------------------------------------------------

    def on_trajectory(self, msg: JointTrajectory) -> None:
        emit("trajectory", recv=self.now(), stamp=seconds(msg.header.stamp),
             joint_names=list(msg.joint_names),
             positions=[list(p.positions) for p in msg.points],
             times=[seconds(p.time_from_start) for p in msg.points])

    def on_chunk(self, msg: ActionChunk) -> None:
        emit("chunk", recv=self.now(), stamp=seconds(msg.header.stamp),
             joint_names=list(msg.joint_names), horizon=msg.horizon,
             positions=list(msg.positions), dt=msg.dt, chunk_id=msg.chunk_id,
             observation_stamp=seconds(msg.observation_stamp),
             latency=msg.inference_latency_s)

    def on_status(self, msg: PolicyStatus) -> None:
        emit("status", recv=self.now(), state=msg.state, instruction=msg.instruction,
             checkpoint_id=msg.checkpoint_id, latency=msg.last_inference_latency_s,
             rate=msg.control_rate_hz, last_fault=msg.last_fault,
             active_faults=list(msg.active_faults))

    # ---- commands -----------------------------------------------------------------------

    def run_commands(self) -> None:
        while not self.commands.empty():
            command = self.commands.get()
            ident = command.get("id")
            handler = getattr(self, f"cmd_{command['cmd']}")
            handler(ident, command)

    def ack(self, ident: Any) -> None:
        emit("ack", id=ident, t=self.now(), last_frame_stamp=self.last_frame_stamp)

    def cmd_camera(self, ident: Any, command: dict[str, Any]) -> None:
        self.camera_on = bool(command["on"])
        self.ack(ident)

    def cmd_encoding(self, ident: Any, command: dict[str, Any]) -> None:
        self.encoding = command["value"]
        self.ack(ident)

    def cmd_size(self, ident: Any, command: dict[str, Any]) -> None:
        self.width, self.height = int(command["width"]), int(command["height"])
        self.ack(ident)

    def cmd_joints(self, ident: Any, command: dict[str, Any]) -> None:
        self.joint_mode = command["mode"]
        self.ack(ident)

    def cmd_publish_instruction(self, ident: Any, command: dict[str, Any]) -> None:
        self.instruction_pub.publish(String(data=command["text"]))
        self.ack(ident)

    def cmd_trigger(self, ident: Any, command: dict[str, Any]) -> None:
        future = self.triggers[command["service"]].call_async(Trigger.Request())
        future.add_done_callback(lambda f: emit(
            "reply", id=ident, t=self.now(), success=f.result().success,
            message=f.result().message))

    def cmd_set_instruction(self, ident: Any, command: dict[str, Any]) -> None:
        request = SetInstruction.Request(instruction=command["text"])
        future = self.instruction_client.call_async(request)
        future.add_done_callback(lambda f: emit(
            "reply", id=ident, t=self.now(), success=f.result().success,
            message=f.result().message))

    def cmd_set_params(self, ident: Any, command: dict[str, Any]) -> None:
        params = [Parameter(name, value=value) for name, value in command["params"].items()]
        future = self.params.set_parameters(params)
        future.add_done_callback(lambda f: emit(
            "reply", id=ident, t=self.now(),
            results=[{"successful": r.successful, "reason": r.reason}
                     for r in f.result().results]))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--joint-names", required=True, help="JSON list, profile order")
    parser.add_argument("--positions", required=True, help="JSON list, profile order")
    parser.add_argument("--camera-topic", required=True, action="append")
    parser.add_argument("--joint-states-topic", default="/joint_states")
    parser.add_argument("--trajectory-topic", required=True)
    parser.add_argument("--node", default="vam_policy_node")
    parser.add_argument("--camera-hz", type=float, default=20.0)
    parser.add_argument("--joint-hz", type=float, default=100.0)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    rclpy.init()
    return run_peer(Feeder(args), args.timeout)


if __name__ == "__main__":
    sys.exit(main())
