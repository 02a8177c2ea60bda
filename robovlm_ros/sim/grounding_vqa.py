"""Grounding questions about simulated scenes, for vision-language co-training (``data.vl_datasets``).

Policies trained on actions alone do not learn which block an instruction names (the grounding
probe, grounding.py, stays at chance). These samples teach it directly: the prompt is the task's own
instruction, "pick up the red block", and the answer is where that block is in the static camera's
image, "row R column C" on a ``grid`` x ``grid`` grid of cells. Asked with the very instruction the
policy gets, the question trains the same tokens the action tokens read.

Frames come from expert rollouts of seeded layouts (the arm at home, on its way and over the block),
so the questions cover the views the policy sees. The cell is the centroid of the block's visible
pixels (MuJoCo's segmentation rendering); a block the arm hides (< 4 visible pixels) gets no question.
"""
from __future__ import annotations

import json
import os

import cv2
import mujoco
import numpy as np

from ..atomic_io import atomic_directory
from .expert import ScriptedExpert
from .tabletop import TabletopEnv, instruction_for

MIN_VISIBLE_PIXELS = 4


def block_cells(env: TabletopEnv, segmenter: mujoco.Renderer, grid: int) -> dict[str, tuple[int, int]]:
    """(row, column) of each block seen by the static camera, from its visible pixels' centroid."""
    segmenter.update_scene(env.data, camera="static")
    geom_ids = segmenter.render()[..., 0]  # [S, S] geom id per pixel (-1: none)
    cell = env.image_size / grid
    cells = {}
    for color in env.colors:
        ys, xs = np.nonzero(geom_ids == env.model.geom(f"{color}_geom").id)
        if len(ys) >= MIN_VISIBLE_PIXELS:
            cells[color] = (int(ys.mean() // cell), int(xs.mean() // cell))
    return cells


def write_grounding_vqa(out_dir: str, seeds, image_size: int = 64, frames=(0, 10, 20), grid: int = 8,
                        actuation_noise: float = 0.5) -> int:
    """Write ``out_dir/vqa.jsonl`` + ``out_dir/img/*.png`` for the layouts ``seeds``; returns the number of
    questions. The directory appears complete or not at all (built beside it, then swapped in)."""
    if not frames or min(frames) < 0:
        raise ValueError(f"frames must be step indices >= 0, got {frames}")
    env = TabletopEnv(image_size=image_size, actuation_noise=actuation_noise)
    expert = ScriptedExpert(env)
    segmenter = mujoco.Renderer(env.model, image_size, image_size)
    segmenter.enable_segmentation_rendering()
    lines = []
    try:
        with atomic_directory(out_dir) as tmp:
            os.makedirs(os.path.join(tmp, "img"))
            _write_questions(tmp, env, expert, segmenter, seeds, frames, grid, lines)
    finally:
        segmenter.close()
        env.close()
    return len(lines)


def _write_questions(tmp: str, env, expert, segmenter, seeds, frames, grid: int, lines: list) -> None:
    """Roll the expert out on each layout; at ``frames`` save the static image and one question per block."""
    for seed in seeds:
        env.reset(int(seed))
        expert.reset()
        for step in range(max(frames) + 1):
            if step in frames:
                name = f"img/{seed}_{step}.png"
                cv2.imwrite(os.path.join(tmp, name), env.render("static")[..., ::-1])  # RGB -> BGR file
                for color, (row, col) in block_cells(env, segmenter, grid).items():
                    lines.append({"image": name, "prompt": instruction_for(color),
                                  "answer": f"row {row} column {col}"})
            env.step(expert.act())
    with open(os.path.join(tmp, "vqa.jsonl"), "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
