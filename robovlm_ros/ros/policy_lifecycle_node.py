"""``robovlm_policy`` as a managed (lifecycle) node: executable ``policy_lifecycle_node``.

Same parameters, topics and services as the plain node (ros/policy_node.py); its life is driven by
lifecycle transitions (``ros2 lifecycle set /robovlm_policy configure``, or ``policy.launch.py
lifecycle:=true``, which drives it to active):

* configure: load the checkpoint, warm up, open topics and services (a failure leaves it unconfigured);
* activate: control starts (at once with an instruction, else as soon as one is set);
* deactivate: a hold command, control stops, queued actions and chunks in flight are discarded;
* cleanup: topics and services closed, the policy freed (GPU memory given back);
* shutdown (from any state): as cleanup.

A transition requested while a chunk is being computed waits for it to finish (cleanup) or discards
it (deactivate); nothing computed before a deactivate is sent after it.
"""
from __future__ import annotations

import sys

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from ..node_params import POLICY_NODE
from .policy_node import PolicyCore
from .spin import run_node


class LifecyclePolicyNode(PolicyCore, LifecycleNode):
    def __init__(self, **kwargs):
        LifecycleNode.__init__(self, POLICY_NODE, **kwargs)
        self._declare()
        self.active = False
        self.configured = False

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            warm_s = self._configure()
        except Exception as e:  # a missing or broken checkpoint: stay unconfigured, say why
            self.get_logger().error(f"configure failed: {e}")
            self.control = self.runner = None  # nothing half-made is used by a later transition
            return TransitionCallbackReturn.FAILURE
        self.configured = True
        self._log_ready(warm_s)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = True
        self._instruction_changed()
        if not self.running:
            self.get_logger().info("active: control starts once an instruction is set")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        with self.lock:
            self.running, self.hold_reason = False, "inactive"
            self._new_episode()
            self._publish_hold()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._free()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.active:
            self.on_deactivate(state)
        self._free()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        self._free()
        return TransitionCallbackReturn.SUCCESS

    def _free(self) -> None:
        if self.configured:
            self._release()
            self.configured = False

    def _instruction_changed(self) -> None:
        with self.lock:
            if self.active and self.instruction and not self.running:
                self._new_episode()
                self.running, self.hold_reason = True, ""

    def _on_start(self, request, response):
        if not self.active:
            response.success, response.message = False, "not active: activate the node first"
            return response
        return super()._on_start(request, response)

    def destroy_node(self):
        self._free()
        return super().destroy_node()


def main(args=None) -> int:
    return run_node(LifecyclePolicyNode, POLICY_NODE, args)


if __name__ == "__main__":
    sys.exit(main())
