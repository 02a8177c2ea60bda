"""Entry-point plumbing shared by the package's executables."""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from std_srvs.srv import Trigger


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


class NodesInBackground:
    """rclpy for a script that drives nodes from its main thread (evaluation, recording demonstrations):
    ``add`` the nodes, ``start`` spins them in a thread; leaving the ``with`` block stops the spinning
    before the nodes are destroyed and shuts rclpy down, also on an exception.

    Without rclpy's signal handler a signal acts on the script as Python's defaults say: Ctrl-C
    raises KeyboardInterrupt in the main thread, ``kill`` ends the process at once. rclpy's handler
    shut the context down under the spin thread instead: after ``kill`` the main thread failed 11 s
    later on an unanswered service call, and in a background run (SIGINT ignored) Ctrl-C's signal
    left it waiting forever."""

    def __enter__(self) -> "NodesInBackground":
        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        self.nodes: list[Node] = []
        self.executor = SingleThreadedExecutor()
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        return self

    def add(self, *nodes: Node) -> None:
        for node in nodes:
            self.nodes.append(node)
            self.executor.add_node(node)

    def start(self) -> None:
        self.thread.start()

    def __exit__(self, *exc) -> None:
        self.executor.shutdown()
        if self.thread.is_alive():  # the spin loop must be out of its wait set before the nodes are destroyed
            self.thread.join(timeout=5.0)
        for node in self.nodes:
            node.destroy_node()
        rclpy.try_shutdown()


class ServiceCaller:
    """Blocking service calls from a script thread while the node spins in NodesInBackground.

    One client per service, kept for the whole run: a client made for a single call can lose the
    response when the server has not yet discovered the client's reply reader (ROS 2 discovery is
    asynchronous). That happened once in 3400 demonstration episodes on a loaded machine and ended a
    70-minute recording with "did not answer"."""

    def __init__(self, node: Node, timeout: float = 10.0):
        self.node, self.timeout, self.clients = node, timeout, {}

    def __call__(self, name: str, srv_type=Trigger, request=None):
        client = self.clients.get(name)
        if client is None:
            client = self.clients[name] = self.node.create_client(srv_type, name)
            if not client.wait_for_service(timeout_sec=self.timeout):
                raise RuntimeError(f"service {name} not available")
        future = client.call_async(request if request is not None else srv_type.Request())
        deadline = time.monotonic() + self.timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.005)
        if not future.done():
            client.remove_pending_request(future)
            raise RuntimeError(f"service {name} did not answer in {self.timeout:.0f} s")
        return future.result()
