"""Running one of our nodes as a process: init, spin, clean stop, exit code."""

from __future__ import annotations

import signal
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

STARTUP_FAILED = 2


def spin_node(
    make_node: Callable[[], Node],
    name: str,
    startup_errors: tuple[type[Exception], ...],
    args: list[str] | None = None,
) -> int:
    """Run `make_node()` until shutdown; exit code 2 when it raises one of `startup_errors`.

    SIGINT is Python's KeyboardInterrupt only (installed even where the shell started us with
    SIGINT ignored): with rclpy's handler as well, one SIGINT arrives twice, as
    ExternalShutdownException and as KeyboardInterrupt, and the second one can cut a worker
    thread's clean stop short. rclpy handles SIGTERM. The node's `close()` stops its threads.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.SIGTERM)
    node = None
    code = 0
    try:
        node = make_node()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except startup_errors as error:
        rclpy.logging.get_logger(name).fatal(f"cannot start: {error}")
        code = STARTUP_FAILED
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.close()
        rclpy.try_shutdown()
    return code
