"""Test peer: what a policy sees of vam_sim_node, and the commands a policy would send.

Prints one JSON line per camera frame (topic, frame id, size, encoding, stamp, mean colour),
joint state and EpisodeStatus it receives. Reads JSON commands on stdin, answered by an "ack"
or "reply" line with the same id:

    {"cmd": "reset", "task": "lift_blue", "seed": 3}        the ~/reset service
    {"cmd": "trajectory", "joint_names": [...], "positions": [[...], ...], "times": [...]}
                                                            stamp 0: start on receipt
"""

from __future__ import annotations

import argparse
import queue
import sys
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Duration
from peer_io import emit, run_peer, seconds
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vam_msgs.msg import EpisodeStatus
from vam_msgs.srv import ResetEpisode


class Probe(Node):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__("arm_probe")
        self.commands: queue.Queue[dict[str, Any]] = queue.Queue()
        for topic in args.camera_topic:
            self.create_subscription(Image, topic, lambda msg, t=topic: self.on_image(t, msg), 10)
        self.create_subscription(JointState, args.joint_states_topic, self.on_joints, 50)
        self.create_subscription(EpisodeStatus, f"/{args.node}/episode", self.on_episode, 50)
        self.trajectory_pub = self.create_publisher(JointTrajectory, args.trajectory_topic, 10)
        self.reset_client = self.create_client(ResetEpisode, f"/{args.node}/reset")
        self.create_timer(0.02, self.run_commands)

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def on_image(self, topic: str, msg: Image) -> None:
        pixels = np.frombuffer(msg.data, dtype=np.uint8)
        emit("image", recv=self.now(), topic=topic, frame_id=msg.header.frame_id,
             stamp=seconds(msg.header.stamp), width=msg.width,
             height=msg.height, encoding=msg.encoding, step=msg.step, bytes=len(msg.data),
             mean=float(pixels.mean()) if pixels.size else 0.0)

    def on_joints(self, msg: JointState) -> None:
        emit("joints", recv=self.now(), stamp=seconds(msg.header.stamp), names=list(msg.name),
             positions=list(msg.position), velocities=list(msg.velocity))

    def on_episode(self, msg: EpisodeStatus) -> None:
        emit("episode", recv=self.now(), episode=msg.episode, task=msg.task,
             instruction=msg.instruction, seed=msg.seed, sim_time=msg.sim_time_s,
             success=msg.success, done=msg.done, accepted=msg.trajectories_accepted,
             rejected=msg.trajectories_rejected, travel=msg.joint_travel_rad,
             rtf=msg.real_time_factor)

    def run_commands(self) -> None:
        while not self.commands.empty():
            command = self.commands.get()
            getattr(self, f"cmd_{command['cmd']}")(command.get("id"), command)

    def cmd_reset(self, ident: Any, command: dict[str, Any]) -> None:
        request = ResetEpisode.Request(task=command["task"], seed=int(command["seed"]))
        future = self.reset_client.call_async(request)
        future.add_done_callback(lambda f: emit(
            "reply", id=ident, t=self.now(), success=f.result().success,
            message=f.result().message, instruction=f.result().instruction))

    def cmd_trajectory(self, ident: Any, command: dict[str, Any]) -> None:
        msg = JointTrajectory(joint_names=command["joint_names"])
        for positions, t in zip(command["positions"], command["times"], strict=True):
            sec, nanosec = divmod(round(t * 1e9), 1_000_000_000)
            msg.points.append(JointTrajectoryPoint(
                positions=[float(p) for p in positions],
                time_from_start=Duration(sec=sec, nanosec=nanosec)))
        self.trajectory_pub.publish(msg)
        emit("ack", id=ident, t=self.now())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--camera-topic", required=True, action="append")
    parser.add_argument("--joint-states-topic", required=True)
    parser.add_argument("--trajectory-topic", required=True)
    parser.add_argument("--node", default="vam_sim_node")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    rclpy.init()
    return run_peer(Probe(args), args.timeout)


if __name__ == "__main__":
    sys.exit(main())
