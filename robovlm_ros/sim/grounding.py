"""Does a policy's first command head for the block its instruction names? A probe of language grounding.

Closed-loop success mixes everything a policy must get right. This probe isolates the first of them,
in seconds: on held-out layouts, with the arm at home, the policy is given each of the three
instructions in turn. A trial is a hit when the policy's first horizontal command (linear x, y) is
closer to the scripted expert's first command for the named block than to the expert's commands for
the other two blocks.

Layouts where two blocks call for nearly the same first command are skipped (the expert clips its
speed per axis, so two blocks that both lie far ahead and to the left both get "+x, +y at full
speed"). On the layouts kept, a policy that ignores the instruction sends one command for all three
instructions, which is closest to exactly one block's: it scores exactly 1/3. The expert scores 1.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .expert import ScriptedExpert
from .tabletop import TabletopEnv, instruction_for

GROUNDING_SEED0 = 300_000  # layouts used by no training recording (seeds from 0) or evaluation (from 100 000)

Act = Callable[[dict, str], np.ndarray]  # (observation {"rgb", "hand_rgb", "state"}, instruction) -> 7 actions


def expert_first_commands(env: TabletopEnv) -> dict[str, np.ndarray]:
    """The expert's first (x, y) command for each block of the current layout, arm at home."""
    expert, target, out = ScriptedExpert(env), env.target, {}
    for color in env.colors:
        env.target = color
        expert.reset()
        out[color] = expert.act()[:2]
    env.target = target
    return out


def first_command_grounding(act: Act, layouts: int = 40, seed0: int = GROUNDING_SEED0, image_size: int = 64,
                            min_gap: float = 0.03, max_seeds: int = 10_000, env: TabletopEnv | None = None) -> dict:
    """Hit rate of ``act``'s first command over ``layouts`` usable layouts x every instruction.
    ``min_gap`` (m/s): the expert's first commands for any two blocks must differ by more than this.
    ``env``: the simulator to probe in (default: a new one at ``image_size``)."""
    own_env = env is None
    env = env or TabletopEnv(image_size=image_size)
    hits, used, skipped, seed = 0, 0, 0, seed0
    try:
        while used < layouts:
            if seed - seed0 >= max_seeds:
                raise RuntimeError(f"only {used} of {layouts} usable layouts in {max_seeds} seeds")
            env.reset(seed)
            seed += 1
            expert = expert_first_commands(env)
            commands = np.stack([expert[c] for c in env.colors])  # [3, 2]
            gaps = np.linalg.norm(commands[:, None] - commands[None], axis=-1)[np.triu_indices(len(commands), 1)]
            if gaps.min() <= min_gap:
                skipped += 1
                continue
            used += 1
            obs = {"rgb": env.render("static"), "hand_rgb": env.render("gripper"), "state": env.state()}
            for i, color in enumerate(env.colors):
                xy = np.asarray(act(obs, instruction_for(color)), dtype=np.float64)[:2]
                hits += int(np.argmin(np.linalg.norm(commands - xy, axis=-1)) == i)
    finally:
        if own_env:
            env.close()  # its renderer; a caller's simulator stays as it was
    trials = used * len(env.colors)
    return {"layouts": used, "skipped_layouts": skipped, "trials": trials, "hits": hits,
            "hit_rate": hits / trials, "chance": 1 / len(env.colors), "seed0": seed0}


def runner_act(checkpoint: str, device: str = "cpu") -> Act:
    """A checkpoint as an ``Act``: each call starts a fresh episode with that instruction."""
    from ..runtime import PolicyRunner

    runner = PolicyRunner(checkpoint, device=device, execute_steps=1)

    def act(obs: dict, instruction: str) -> np.ndarray:
        runner.reset()
        runner.set_instruction(instruction)
        return runner.step(obs)

    return act
