"""The policy node's /diagnostics: what it does and why, and whether the policy keeps up."""
from __future__ import annotations

import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue


def policy_diagnostics(node, stamp) -> DiagnosticArray:
    """One DiagnosticStatus for a PolicyNode (caller holds node.lock): state (running / holding /
    stopped) and why, input ages, commands and chunks, the cadence report (runtime/cadence.py)."""
    now = time.monotonic()
    state = "running" if node.running and not node.hold_reason else ("holding" if node.running else "stopped")
    infer = np.asarray(node.cadence.infer) * 1000
    values = {
        "state": state, "instruction": node.instruction or "", "execution": node.p.execution,
        "inference_p50_ms": f"{np.percentile(infer, 50):.1f}" if len(infer) else "",
        "inference_p99_ms": f"{np.percentile(infer, 99):.1f}" if len(infer) else "",
        "image_in_p50_ms": f"{np.percentile(node.input_ms, 50):.2f}" if node.input_ms else "",
        "camera_age_s": f"{node.camera.age(now):.3f}", "joint_states_age_s": f"{node.joints.age(now):.3f}",
        **({"gripper_camera_age_s": f"{node.hand.age(now):.3f}"} if node.uses_hand else {}),
        **{k: str(v) for k, v in node.stats.items()},
        "queued_actions": str(len(node.control.schedule)), "starved": str(node.control.starved),
        "chunk_delay_actions": str(node.control.schedule.last_delay),
        **node.cadence.flat(),
    }
    message = state + (f": {node.hold_reason}" if node.hold_reason else "")
    level = DiagnosticStatus.WARN if state == "holding" else DiagnosticStatus.OK
    status = DiagnosticStatus(level=level, name=f"{node.get_name()}: policy", message=message,
                              hardware_id=node.get_fully_qualified_name(),
                              values=[KeyValue(key=k, value=v) for k, v in values.items()])
    arr = DiagnosticArray(status=[status])
    arr.header.stamp = stamp
    return arr
