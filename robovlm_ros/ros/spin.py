"""Entry-point plumbing shared by the package's executables."""
from __future__ import annotations

import sys
from typing import Callable

import rclpy
from rclpy.node import Node


def run_node(make_node: Callable[[], Node], name: str, args=None) -> int:
    """Init rclpy (with ``--ros-args`` from the command line), build the node, spin until shutdown.

    A node that cannot start (bad parameters, missing checkpoint) is reported as a fatal log line
    and exit status 1 rather than a traceback.
    """
    rclpy.init(args=args if args is not None else sys.argv)
    try:
        node = make_node()
    except (ValueError, OSError, RuntimeError) as e:
        rclpy.logging.get_logger(name).fatal(str(e))
        rclpy.try_shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
