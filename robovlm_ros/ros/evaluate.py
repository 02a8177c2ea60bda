"""Closed-loop evaluation: ``sim_node`` and ``policy_node`` talking over ROS topics in one process.

For each held-out seed the simulator starts an episode, the policy node gets the instruction as a
parameter and is started through its ``~/start`` service; it then sees only camera images and joint
states and drives the arm only through its command topics. An episode ends when the physics reports
success or after ``max_seconds`` of simulated time. ``wrong_instruction`` asks for another block than
the one success is measured on (the baseline).

``lockstep`` (the default): the simulator advances one control period only once the policy node has
published a command computed from the newest sensors (matched by the stamp the simulator puts on
all messages of a step), so the success rate measures the policy, not how fast this machine runs it
(free-running at ``speed`` x real time on 2 CPU cores, a policy that succeeds in lockstep can fail
only because its commands arrive late). ``lockstep=False`` runs the
simulator on its clock, as a real robot would, to see the effect of inference latency.
"""
from __future__ import annotations

import os
import time
import uuid

import mujoco
import numpy as np
import rclpy
from rclpy.parameter import Parameter

from ..atomic_io import write_json
from ..node_params import sim_robot
from ..runtime.cpu_kernels import cpu_numerics
from ..sim.tabletop import instruction_for
from .params import overrides
from .policy_node import PolicyNode
from .sim_node import SimNode, lockstep_gate
from .spin import NodesInBackground, ServiceCaller

EVAL_SEED0 = 100_000  # held-out seeds: demonstrations use small seeds
LOCKSTEP_TIMEOUT_S = 60.0  # longest wait for one command in lockstep before the evaluation fails


def evaluate(checkpoint: str, episodes: int, seed0: int = EVAL_SEED0, max_seconds: float = 6.0,
             wrong_instruction: bool = False, speed: float = 2.0, image_size: int = 64, device: str = "cpu",
             frames_to_keep: int = 3, progress: bool = True, lockstep: bool = True, execute_steps: int = 1,
             actuation_noise: float = 0.0, noise_seed: int = 0, execution: str = "sync", chunk_combine: str = "newest",
             inference_delay_ms: float = 0.0) -> dict:
    """Run ``episodes`` seeded episodes; returns per-episode results, per-task and overall success.
    ``execute_steps``: actions of each predicted chunk executed before the policy predicts again.
    ``actuation_noise`` / ``noise_seed``: the simulated arm's relative tracking error (TabletopEnv).
    ``execution`` / ``chunk_combine``: the policy node's chunk execution; ``inference_delay_ms``
    (lockstep): each chunk becomes usable that much simulated time after its inputs were captured,
    rounded up to whole control periods, while the simulator keeps stepping with the node's commands.
    Each result carries a digest of every action the physics applied, so two runs can be compared
    step for step (same digest: bit-identical episodes)."""
    from tqdm import tqdm

    ns = f"eval_{uuid.uuid4().hex[:8]}"
    robot = sim_robot(ns).as_params()
    if inference_delay_ms and not lockstep:
        raise ValueError("a simulated inference delay needs lockstep (in real time the delay is the real one)")
    delay_steps = int(np.ceil(inference_delay_ms / 1000.0 * robot["control_rate_hz"] - 1e-9))
    with NodesInBackground() as ros:
        policy = PolicyNode(namespace=ns, parameter_overrides=overrides({
            **robot, "checkpoint": checkpoint, "device": device, "control_rate_hz": 10.0 * speed,
            # in lockstep the simulator waits for the policy, however long it takes on this machine: inputs
            # never count as stale (a hold would restart the history and change the episode)
            "max_input_age_s": LOCKSTEP_TIMEOUT_S if lockstep else 0.5 / speed, "execute_steps": execute_steps,
            "action_low": [-0.3] * 6, "action_high": [0.3] * 6, "max_linear_velocity": 0.3,
            "max_angular_velocity": 1.5, "wait_for_new_inputs": lockstep, "execution": execution,
            "chunk_combine": chunk_combine, "simulated_inference_delay_steps": delay_steps}))
        sim = SimNode(namespace=ns, parameter_overrides=overrides({
            **robot, "image_size": image_size, "real_time_factor": speed, "max_episode_seconds": max_seconds,
            "stop_on_success": True, "lockstep_timeout_s": LOCKSTEP_TIMEOUT_S, "actuation_noise": actuation_noise,
            "noise_seed": noise_seed}))
        if lockstep:  # set before the executor spins: no tick has run yet
            sim.step_gate = lockstep_gate(policy, sim)
        client = rclpy.create_node("eval_client", namespace=ns)
        call = ServiceCaller(client)
        ros.add(sim, policy, client)
        ros.start()
        try:
            results = [run_episode(sim, policy, call, seed0 + i, wrong_instruction, max_seconds, speed, frames_to_keep)
                       for i in tqdm(range(episodes), desc="evaluating", unit="episode", disable=not progress)]
        finally:
            sim.release_renderer()  # on the executor thread that owns its context, also after an error
        stats = {**policy.stats, "starved": policy.control.starved, "cadence": policy.cadence.report(), "execute_steps": execute_steps, "lockstep": lockstep,
                 **{f"lockstep_{k}": v for k, v in sim.lockstep.items()}}
    report = summarize(results, stats)
    numerics = {**cpu_numerics(), "mujoco": mujoco.__version__, "renderer": sim.env.renderer_info}
    report["conditions"] = {"actuation_noise": actuation_noise, "noise_seed": noise_seed, "execution": execution,
                            "chunk_combine": chunk_combine, "inference_delay_ms": inference_delay_ms,
                            "inference_delay_steps": delay_steps, "numerics": numerics}
    return report


def run_episode(sim: SimNode, policy: PolicyNode, call: ServiceCaller, seed: int, wrong_instruction: bool,
                max_seconds: float, speed: float, frames_to_keep: int) -> dict:
    """One seeded episode: reset the simulator, instruct and start the policy, wait for the physics to
    stop (success or time limit). ``wrong_instruction`` names another block than the one scored."""
    ns = sim.get_namespace()
    sim.set_parameters([Parameter("seed", value=seed)])
    instruction = call(f"{ns}/sim_node/reset").message
    asked = sim.env.target
    if wrong_instruction:
        others = [c for c in sim.env.colors if c != asked]
        asked = others[seed % len(others)]
    policy.set_parameters([Parameter("instruction", value=instruction_for(asked))])
    if not call(f"{ns}/robovlm_policy/start").success:
        raise RuntimeError("the policy node refused to start")
    t0, frames, trace = sim.episode_start, [], []
    while not sim.episode_over:  # the simulator stops itself: at success or after max_seconds
        if sim.lockstep["timeouts"]:
            raise RuntimeError(f"lockstep broke in episode seed {seed}: the policy sent no command for a "
                               f"published step in {LOCKSTEP_TIMEOUT_S:.0f} s, so the simulator stepped "
                               "without it and the result would depend on this machine's speed")
        if len(frames) < frames_to_keep and sim.sim_time - t0 >= len(frames) * max_seconds / frames_to_keep:
            frames.append(sim.last_images["static"].copy())
        trace.append(np.r_[sim.sim_time - t0, sim.twist, sim.gripper])
        time.sleep(0.02 / speed)
    success = call(f"{ns}/sim_node/success").success
    call(f"{ns}/robovlm_policy/stop")
    return {"seed": seed, "task": instruction, "asked": instruction_for(asked), "success": bool(success),
            "seconds": round(sim.sim_time - t0, 2), "steps": round((sim.sim_time - t0) / sim.env.dt),
            "actions_sha1": sim.applied.hexdigest(), "trace": np.asarray(trace).tolist(), "frames": frames}


def summarize(results: list[dict], node_stats: dict | None = None) -> dict:
    tasks: dict[str, dict] = {}
    for r in results:
        t = tasks.setdefault(r["task"], {"episodes": 0, "successes": 0})
        t["episodes"] += 1
        t["successes"] += r["success"]
    for t in tasks.values():
        t["success_rate"] = t["successes"] / t["episodes"]
    return {"episodes": len(results), "success_rate": float(np.mean([r["success"] for r in results])) if results else 0.0,
            "per_task": dict(sorted(tasks.items())), "results": results, "node_stats": node_stats or {}}


def save_report(report: dict, out_dir: str, baseline: dict | None = None) -> list[str]:
    """report.json (without images) and plots: success per task, an action trace, camera frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    strip = lambda rep: {**rep, "results": [{k: v for k, v in r.items() if k != "frames"}  # noqa: E731
                                            for r in rep["results"]]}
    path = os.path.join(out_dir, "report.json")
    write_json(path, {"policy": strip(report), **({"baseline": strip(baseline)} if baseline else {})})
    files = [path]
    for name, plot in (("success_per_task.png", _plot_success), ("action_trace.png", _plot_trace),
                       ("frames.png", _plot_frames)):
        fig = plot(plt, report, baseline)
        if fig is not None:
            fig.tight_layout()
            files.append(os.path.join(out_dir, name))
            fig.savefig(files[-1])
            plt.close(fig)
    return files


def _plot_success(plt, report: dict, baseline: dict | None):
    fig, ax = plt.subplots(figsize=(6, 3))
    names = list(report["per_task"])
    x = np.arange(len(names))
    ax.bar(x - 0.2, [report["per_task"][n]["success_rate"] for n in names], 0.4, label="policy")
    if baseline:
        ax.bar(x + 0.2, [baseline["per_task"].get(n, {}).get("success_rate", 0) for n in names], 0.4,
               label="baseline (wrong instruction)")
    ax.set_xticks(x, [n.replace("pick up the ", "") for n in names])
    ax.set_ylim(0, 1)
    ax.set_ylabel("success rate")
    ax.legend()
    return fig


def _plot_trace(plt, report: dict, baseline: dict | None):
    """The commands the physics applied in the first episode."""
    trace = np.asarray(report["results"][0]["trace"]) if report["results"] and report["results"][0]["trace"] else None
    if trace is None or not len(trace):
        return None
    fig, ax = plt.subplots(figsize=(6, 3))
    for i, label in enumerate(["vx", "vy", "vz", "wx", "wy", "wz", "gripper"]):
        ax.plot(trace[:, 0], trace[:, 1 + i], label=label)
    ax.set_xlabel("simulated seconds")
    ax.set_title(report["results"][0]["task"])
    ax.legend(ncol=4, fontsize=7)
    return fig


def _plot_frames(plt, report: dict, baseline: dict | None):
    """Static-camera frames of up to four episodes."""
    shown = [r for r in report["results"] if r["frames"]][:4]
    if not shown:
        return None
    cols = max(len(r["frames"]) for r in shown)
    fig, axes = plt.subplots(len(shown), cols, figsize=(2 * cols, 2 * len(shown)), squeeze=False)
    for row, r in zip(axes, shown):
        for ax, frame in zip(row, r["frames"]):
            ax.imshow(frame)
        for ax in row:
            ax.axis("off")
        row[0].set_title(f"{r['task'].replace('pick up the ', '')}: {'ok' if r['success'] else 'fail'}",
                         fontsize=8, loc="left")
    return fig
