"""Entry-point plumbing shared by the package's executables."""
from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import sys
import threading
import time
from typing import Callable

import rclpy
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from std_srvs.srv import Trigger

TEARDOWN_LIMIT_S = 10.0  # an executable that has not finished its teardown by then exits hard
SPIN_POLL_S = 0.1  # how soon the spin loop sees a stop request
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class _StopRequest:
    """The SIGINT / SIGTERM handler of an executable. While the node starts, a signal interrupts the start;
    once it spins, the handler only records the signal and the spin loop ends between callbacks: never
    inside one (a half-written recording, a command half-built), as an exception raised there would."""

    def __init__(self):
        self.signal: str | None = None
        self.spinning = False

    def __call__(self, signum, frame):
        name = signal.Signals(signum).name
        if not self.spinning:
            raise KeyboardInterrupt(name)
        self.signal = self.signal or name


def _stop_with_parent() -> None:
    """On Linux, ask for SIGTERM when the process that started this one dies. ``ros2 launch`` stopped with
    SIGTERM (a supervisor, systemd's default) exits without stopping its nodes; a policy node left behind
    would keep commanding the arm with nobody in charge of it. (Strictly, the kernel signals when the
    starting *thread* ends: a supervisor that starts nodes from a short-lived thread stops them with it.)"""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        return  # not fatal: the node still stops on its own signals
    if os.getppid() != parent:  # the parent died before the request: nothing would signal us
        os.kill(os.getpid(), signal.SIGTERM)


def run_node(make_node: Callable[[], Node], name: str, args=None) -> int:
    """Init rclpy (with ``--ros-args`` from the command line), build the node, spin until shutdown.

    SIGINT, SIGTERM and the death of the parent process (``_stop_with_parent``) stop the node the same
    way: the spin ends between two callbacks (``_StopRequest``), the node's ``on_exit`` (the policy node's
    last hold command) runs while ROS is still up, then the node is destroyed. rclpy's own signal handler
    would shut the context down first, so nothing could be published any more. A node that cannot start
    (bad parameters, missing checkpoint) is reported as a fatal log line and exit status 1 rather than a
    traceback.
    """
    rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    stop = _StopRequest()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    _stop_with_parent()
    try:
        node = make_node()
    except (ValueError, OSError, RuntimeError) as e:
        rclpy.logging.get_logger(name).fatal(str(e))
        rclpy.try_shutdown()
        return 1
    except KeyboardInterrupt as e:
        rclpy.logging.get_logger(name).warning(f"stopped while starting ({e})")
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    try:
        executor.add_node(node)
        stop.spinning = True
        while stop.signal is None and rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_POLL_S)
        if stop.signal is not None:
            node.get_logger().info(f"stopping ({stop.signal})")
    except KeyboardInterrupt as e:  # a signal in the instant before the spin loop took over
        node.get_logger().info(f"stopping ({e})")
    except ExternalShutdownException:
        pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut the teardown short
            signal.signal(sig, signal.SIG_IGN)
        # teardown can hang inside the DDS layer (rcl_node_fini); faulthandler's watchdog is a C thread
        # that needs no GIL, so it prints where the process hangs and ends it after TEARDOWN_LIMIT_S
        faulthandler.dump_traceback_later(TEARDOWN_LIMIT_S, exit=True)
        try:
            on_exit = getattr(node, "on_exit", None)
            if on_exit is not None and rclpy.ok():
                on_exit()
        finally:
            executor.remove_node(node)
            executor.shutdown()
            node.destroy_node()
            rclpy.try_shutdown()
            faulthandler.cancel_dump_traceback_later()
    return 0


class BackgroundExecutor:
    """Spins nodes in a thread of their own, and stops safely.

    ``close`` stops the spin loop and joins its thread *before* the nodes are destroyed: destroying a
    node while the executor still waits on its entities raised ``InvalidHandle`` in the spin thread,
    which then died, and every later service call timed out.
    The loop also survives an entity destroyed under a pending wait, and records an exception raised
    by a callback (``errors``) instead of dying with it."""

    def __init__(self, context=None, poll_s: float = 0.1):
        self.executor = SingleThreadedExecutor(context=context)
        self.nodes: list[Node] = []
        self.errors: list[BaseException] = []
        self.poll_s = poll_s
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, name="ros_spin", daemon=True)

    def add(self, *nodes: Node) -> None:
        for node in nodes:
            self.nodes.append(node)
            self.executor.add_node(node)

    def start(self) -> "BackgroundExecutor":
        self.thread.start()
        return self

    def _spin(self) -> None:
        while not self._stop.is_set() and self.executor.context.ok():
            try:
                self.executor.spin_once(timeout_sec=self.poll_s)
            except ExternalShutdownException:
                return
            except InvalidHandle:
                continue  # an entity destroyed while the executor waited on it: the next wait drops it
            except Exception as e:  # a callback failed: keep the other nodes running, report it
                self.errors.append(e)
                rclpy.logging.get_logger("ros_spin").error(f"callback failed: {e!r}")

    def close(self, timeout: float = 10.0) -> None:
        """Stop spinning, join the spin thread, then destroy the nodes (in the order added)."""
        self._stop.set()
        if self.thread.is_alive():
            self.executor.wake()
            self.thread.join(timeout)
            if self.thread.is_alive():
                raise RuntimeError(f"the spin thread did not stop in {timeout:.0f} s (a callback is blocked)")
        self.executor.shutdown(timeout_sec=timeout)
        for node in self.nodes:
            node.destroy_node()
        self.nodes = []


class NodesInBackground:
    """rclpy for a script that drives nodes from its main thread (evaluation, recording demonstrations):
    ``add`` the nodes, ``start`` spins them in a thread (BackgroundExecutor); leaving the ``with``
    block stops the spinning before the nodes are destroyed and shuts rclpy down, also on an exception.

    Without rclpy's signal handler a signal acts on the script as Python's defaults say: Ctrl-C
    raises KeyboardInterrupt in the main thread, ``kill`` ends the process at once. rclpy's handler
    would shut the context down under the spin thread instead, leaving the main thread waiting on
    service calls that can no longer be answered."""

    def __enter__(self) -> "NodesInBackground":
        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        self.spinner = BackgroundExecutor()
        return self

    def add(self, *nodes: Node) -> None:
        self.spinner.add(*nodes)

    def start(self) -> None:
        self.spinner.start()

    def __exit__(self, exc_type, *exc) -> None:
        try:
            self.spinner.close()
        finally:
            rclpy.try_shutdown()
        if exc_type is None and self.spinner.errors:
            raise RuntimeError(f"{len(self.spinner.errors)} ROS callbacks failed, the first: "
                               f"{self.spinner.errors[0]!r}") from self.spinner.errors[0]


class ServiceCaller:
    """Blocking service calls from a script thread while the node spins in NodesInBackground.

    One client per service, kept for the whole run: a client made for a single call can lose the
    response when the server has not yet discovered the client's reply reader (ROS 2 discovery is
    asynchronous), which ends a long recording or evaluation with "did not answer"."""

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
