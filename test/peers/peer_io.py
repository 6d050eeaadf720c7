"""Plumbing shared by the test peers: JSON event lines out, JSON commands in, spin until done.

A peer node has a `commands` queue (filled from stdin, one JSON object a line) and `now()`;
what it observes it reports with `emit`, one JSON object a line on stdout.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

_print_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    with _print_lock:
        print(json.dumps({"event": event, **fields}), flush=True)


def seconds(stamp: Any) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def _read_commands(commands: queue.Queue[dict[str, Any]]) -> None:
    for line in sys.stdin:
        if line.strip():
            commands.put(json.loads(line))


def run_peer(peer: Node, timeout_s: float) -> int:
    """Feed stdin commands to `peer`, say "ready", spin until shutdown or `timeout_s`."""
    threading.Thread(target=_read_commands, args=(peer.commands,), daemon=True).start()
    executor = SingleThreadedExecutor()
    executor.add_node(peer)
    emit("ready", t=peer.now())
    deadline = time.monotonic() + timeout_s
    try:
        while rclpy.ok() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        peer.destroy_node()
        rclpy.try_shutdown()
    return 0
