"""The demo's pipeline (``robovlm-ros demo --retrain``): scripted-expert episodes recorded over ROS ->
converted bags -> a trained policy, with the demo's recipe (``sim/demo_recipe.py``).

Resumable: the finished stages are recorded in ``demo_run.json`` in the output directory, so the
same command continues an interrupted run (recording resumes episode by episode, training from its
last checkpoint).
"""
from __future__ import annotations

import json
import os
import shutil

from ..atomic_io import write_json
from ..sim.demo_recipe import DEMO_EVERY_BLOCK, DEMO_IMAGE_SIZE, DEMO_STORAGE, DEMO_TRAIN

DEMO_STATE = "demo_run.json"  # in the output directory: the arguments of the run and the stages it has finished
DEMO_STAGE_DIRS = ("episodes", "dataset", "grounding_vqa", "run")  # what a run makes in its output directory


def demo_state(out: str, arguments: dict, fresh: bool) -> tuple[dict, callable]:
    """The progress of a run in ``out``. Returns the state and ``mark(stage, value)``, which records a
    finished stage atomically. A run made with other ``arguments`` is refused, not mixed in."""
    if os.path.exists(out) and fresh:
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, DEMO_STATE)
    if os.path.exists(path):
        with open(path) as f:
            state = json.load(f)
        if state["arguments"] != arguments:
            raise SystemExit(f"{out} holds a demo run made with {state['arguments']}, not {arguments}: give those "
                             f"arguments to resume it, or pass --fresh (deletes it) or another --out")
    elif set(os.listdir(out)) & set(DEMO_STAGE_DIRS):  # (an eval/ of the shipped policy may be there)
        raise SystemExit(f"{out} holds pipeline files but no {DEMO_STATE}: pass --fresh (deletes it) or another --out")
    else:
        state = {"arguments": arguments}
        write_json(path, state)

    def mark(stage: str, value) -> None:
        state[stage] = value
        write_json(path, state)
    return state, mark


def retrain(out: str, demos: int, actuation_noise: float, steps: int, grounding_questions: bool,
            fresh: bool = False) -> dict:
    """Record ``demos`` expert episodes, convert them, train the demo's policy on them (co-trained
    with grounding questions when asked). Returns {"checkpoint", "expert_episodes",
    "grounding_questions", "train_config"} (the raw training configuration, for made_by.json)."""
    from ..data.convert import convert_bags
    from ..train.config import train_config_from_dict
    from .demonstrations import record_demonstrations, recorded_episodes

    out = os.path.abspath(out)
    arguments = {"demos": demos, "actuation_noise": actuation_noise, "steps": steps,
                 "grounding_questions": grounding_questions}
    state, mark = demo_state(out, arguments, fresh)
    episodes = os.path.join(out, "episodes")
    print(f"1/4 recording {demos} scripted-expert episodes through sim_node + episode_recorder")
    before = len(recorded_episodes(episodes))
    if before:
        print(f"    resuming: {before} recorded before")
    rec = record_demonstrations(episodes, demos, image_size=DEMO_IMAGE_SIZE, resume=True,
                                actuation_noise=actuation_noise, every_block=DEMO_EVERY_BLOCK)
    print(f"    {rec['successful']}/{rec['recorded']} expert episodes succeeded")
    print("2/4 converting the bags")
    if not state.get("converted"):
        # the bags carry wall-clock stamps of a simulation run ``speed`` times faster than real time;
        # the recording is lockstep and keeps every command, so the rate only sets the dataset's fps
        # and how long after an arm command its gripper command is looked for
        reports = convert_bags([episodes], os.path.join(out, "dataset"), rec["robot"],
                               rate_hz=rec["robot"].control_rate_hz * rec["speed"], overwrite=True, progress=False,
                               every_command=True, storage=DEMO_STORAGE, plots=False)  # 3600 episodes
        print(f"    {sum(r.status == 'converted' for r in reports)} of {len(reports)} bags converted")
        mark("converted", True)
    else:
        print("    converted before")
    raw = {**DEMO_TRAIN, "output_dir": os.path.join(out, "run"),
           "data": {**DEMO_TRAIN["data"], "datasets": [os.path.join(out, "dataset")]},
           "optim": {**DEMO_TRAIN["optim"], "max_steps": steps}}
    questions = _grounding_questions(out, rec, actuation_noise, state, mark) if grounding_questions else 0
    if grounding_questions:
        raw["data"]["vl_datasets"] = [os.path.join(out, "grounding_vqa", "vqa.jsonl")]
    print("3/4 training")
    checkpoint = _train(train_config_from_dict(raw), state, mark)
    return {"checkpoint": checkpoint, "expert_episodes": {k: rec[k] for k in ("recorded", "successful")},
            "grounding_questions": questions, "train_config": raw}


def _grounding_questions(out: str, rec: dict, actuation_noise: float, state: dict, mark) -> int:
    from ..sim.grounding_vqa import write_grounding_vqa

    if state.get("questions") is None:
        mark("questions", write_grounding_vqa(os.path.join(out, "grounding_vqa"), rec["layouts"],
                                              image_size=DEMO_IMAGE_SIZE, actuation_noise=actuation_noise))
    print(f"    {state['questions']} grounding questions about the recorded layouts (vision-language co-training)")
    return state["questions"]


def _train(cfg, state: dict, mark) -> str:
    from ..train.run import EXPORT_DIR, train

    checkpoint = os.path.join(cfg.output_dir, EXPORT_DIR)
    if state.get("trained") and os.path.exists(os.path.join(checkpoint, "config.json")):
        print(f"    trained before: {checkpoint}")
        return checkpoint
    # an interrupted run continues from its last Lightning checkpoint (saved every checkpoint_every steps)
    resume = os.path.exists(os.path.join(cfg.output_dir, "checkpoints", "last.ckpt"))
    if resume:
        print("    resuming from the last checkpoint")
    else:
        shutil.rmtree(cfg.output_dir, ignore_errors=True)
    checkpoint = train(cfg, resume=resume)
    mark("trained", True)
    return checkpoint


def made_by(made: dict, command: str, evaluation: dict) -> dict:
    """The provenance record a retrained demo checkpoint carries (``made_by.json``)."""
    cfg = made["train_config"]
    return {"command": command, "expert_episodes": made["expert_episodes"],
            "grounding_questions": made["grounding_questions"],
            "train_config": {k: v for k, v in cfg.items() if k not in ("output_dir", "data")} | {
                "data": {k: v for k, v in cfg["data"].items() if k not in ("datasets", "vl_datasets")}},
            "evaluation": evaluation}
