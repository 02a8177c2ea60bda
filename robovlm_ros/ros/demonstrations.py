"""Record expert demonstrations the way a user would: sim_node + scripted expert + episode_recorder.

All three run in one process over ROS topics; the recorder only sees what it would see on a real
robot (cameras, joint states, the commands the arm received) and writes one rosbag2 per episode.
"""
from __future__ import annotations

import json
import os
import time
import uuid

import rclpy
from rclpy.parameter import Parameter
from std_srvs.srv import SetBool

from ..atomic_io import write_json
from ..sim.scene import COLORS
from ..data.bags import EPISODE_FILE
from ..node_params import sim_robot
from .episode_recorder import EpisodeRecorder
from .params import overrides
from .sim_node import ExpertNode, SimNode, lockstep_gate
from .spin import NodesInBackground, ServiceCaller


BLOCKS = list(COLORS)  # sim_node's block colours, in the order every_block demonstrates them
RECORDING_FILE = "recording.json"  # how the episodes in a folder were recorded (for resuming)


def recorded_episodes(output_dir: str) -> list[dict]:
    """The ``episode.json`` of every complete episode in ``output_dir``, in recording order (episodes
    appear there complete or not at all, see episode_recorder)."""
    if not os.path.isdir(output_dir):
        return []
    metas = []
    for d in os.listdir(output_dir):
        path = os.path.join(output_dir, d, EPISODE_FILE)
        if not d.startswith(".") and os.path.exists(path):
            with open(path) as f:
                metas.append(json.load(f))
    return sorted(metas, key=lambda m: m["start_time_ns"])


def record_demonstrations(output_dir: str, episodes: int, seed0: int = 0, image_size: int = 64,
                          speed: float = 3.0, max_seconds: float = 6.0, actuation_noise: float = 0.0,
                          every_block: bool = False, progress: bool = True, resume: bool = False) -> dict:
    """Returns {"recorded": n, "successful": k, "layouts": [seeds], "robot": RobotDescription, "speed":
    real-time factor}: the seeds of the recorded layouts, the robot as recorded (its topics) and the
    bags' clock rate (for convert).
    ``actuation_noise``: sim_node's tracking error while recording (see TabletopEnv): the expert then
    demonstrates recoveries too, which closed-loop imitation needs.
    ``every_block``: each layout (seed) is recorded once per block, so the same images come with
    every instruction and only the instruction tells which block to take (else the target is drawn
    from the seed and a policy can fit layouts without reading the instruction).
    ``resume``: keep the complete episodes already in ``output_dir`` (an interrupted call with the same
    arguments, or fewer episodes; checked against its ``recording.json``) and record only the rest, on
    the same topics."""
    from tqdm import tqdm

    settings = {"seed0": seed0, "image_size": image_size, "speed": speed,
                "max_seconds": max_seconds, "actuation_noise": actuation_noise, "every_block": every_block}
    done = recorded_episodes(output_dir)
    ns = _recording_namespace(output_dir, done, settings, episodes, resume)
    robot = sim_robot(ns)
    seeds = [seed0 + (i // len(BLOCKS) if every_block else i) for i in range(episodes)]  # layout of episode i
    result = {"recorded": episodes, "layouts": list(dict.fromkeys(seeds)), "robot": robot, "speed": speed}
    successful = sum(bool(m["success"]) for m in done)
    if len(done) == episodes:
        return {**result, "successful": successful}

    with NodesInBackground() as ros:
        sim = SimNode(namespace=ns, parameter_overrides=overrides({
            **robot.as_params(), "image_size": image_size, "real_time_factor": speed,
            "actuation_noise": actuation_noise}))
        # lockstep: each physics step waits for the expert's command for the state just published, so
        # every recorded command is the action for the images and joint states recorded before it
        # (free-running timers slip: the arm then moves by commands the bag pairs with other frames)
        expert = ExpertNode(sim, lockstep=True, namespace=ns)
        sim.step_gate = lockstep_gate(expert, sim)
        recorder = EpisodeRecorder(namespace=ns, parameter_overrides=overrides({
            **robot.as_params(), "output_dir": output_dir, "max_input_age_s": 1.0}))
        client = rclpy.create_node("demo_client", namespace=ns)
        ros.add(sim, expert, recorder, client)
        ros.start()
        time.sleep(0.5)  # first sensor messages reach the recorder
        session = _Session(sim, expert, recorder, ServiceCaller(client), speed, max_seconds)
        for i in tqdm(range(len(done), episodes), desc="recording", unit="episode", disable=not progress,
                      initial=len(done), total=episodes):
            successful += session.record(i, seeds[i], BLOCKS[i % len(BLOCKS)] if every_block else "")
        sim.release_renderer()
    return {**result, "successful": successful}


def _recording_namespace(output_dir: str, done: list[dict], settings: dict, episodes: int, resume: bool) -> str:
    """The ROS namespace the episodes in ``output_dir`` are recorded under: a new one for a new
    recording, the recorded one when resuming (after checking the settings and the episodes match)."""
    info_path = os.path.join(output_dir, RECORDING_FILE)
    if not done:
        ns = f"demo_{uuid.uuid4().hex[:8]}"
        os.makedirs(output_dir, exist_ok=True)
        write_json(info_path, {"settings": settings, "namespace": ns})
        return ns
    if not resume:
        raise FileExistsError(f"{output_dir} already holds {len(done)} episodes: resume them or record elsewhere")
    info = {}
    if os.path.exists(info_path):
        with open(info_path) as f:
            info = json.load(f)
    if info.get("settings") != settings:
        raise ValueError(f"cannot resume: the {len(done)} episodes in {output_dir} were recorded with "
                         f"{info.get('settings', 'unknown settings')}, not {settings}")
    if len(done) > episodes:
        raise ValueError(f"cannot resume: {output_dir} already holds {len(done)} episodes, more than {episodes}")
    if settings["every_block"]:  # a missing or foreign episode shifts the instructions out of their order
        for i, m in enumerate(done):
            if f" {BLOCKS[i % len(BLOCKS)]} " not in f" {m['instruction']} ":
                raise ValueError(f"cannot resume: episode {i + 1} in {output_dir} ({m['name']}: "
                                 f"{m['instruction']!r}) is not the {BLOCKS[i % len(BLOCKS)]} block's")
    return info["namespace"]


class _Session:
    """The simulator, expert and recorder of one recording, driven through their services."""

    def __init__(self, sim: SimNode, expert: ExpertNode, recorder: EpisodeRecorder, call: ServiceCaller,
                 speed: float, max_seconds: float):
        self.sim, self.expert, self.recorder, self.call = sim, expert, recorder, call
        self.speed, self.max_seconds = speed, max_seconds
        self.ns = sim.get_namespace()

    def record(self, i: int, seed: int, target: str) -> bool:
        """Episode ``i`` of layout ``seed`` (asking for ``target``, '' = the seed's); True if the expert succeeded."""
        sim, expert, call, ns = self.sim, self.expert, self.call, self.ns
        sim.set_parameters([Parameter("seed", value=seed)] + ([Parameter("target", value=target)] if target else []))
        instruction = call(f"{ns}/sim_node/reset").message
        self.recorder.set_parameters([Parameter("instruction", value=instruction)])
        time.sleep(0.15 / self.speed)  # sensors of the new episode arrive before recording starts
        if not call(f"{ns}/episode_recorder/start").success:
            raise RuntimeError("the recorder refused to start")
        # the same seeded episode again (nothing has moved): its first sensors are now in the bag,
        # so the expert's first command has its observation
        call(f"{ns}/sim_node/reset")
        t0 = sim.sim_time
        expert.start()
        # keep lifting a moment after success so the episode shows the block held up
        while sim.sim_time - t0 < self.max_seconds and not (
                sim.env.success() and expert.expert.phase == "lift" and sim.env.block_position(sim.env.target)[2] > 0.15):
            if sim.lockstep["timeouts"]:  # a step without its command: the bag would pair them wrongly
                raise RuntimeError(f"lockstep broke while recording episode {i}: the expert did not answer")
            time.sleep(0.01)
        expert.stop()
        ok = bool(sim.env.success())
        if not ok:
            call(f"{ns}/episode_recorder/set_success", SetBool, SetBool.Request(data=False))
        call(f"{ns}/episode_recorder/stop")
        return ok
