"""The demo's recipe: how the shipped policy (``sim/demo_policy``) was made and is evaluated.

Plain data. Why each value was chosen is measured in README ("What was found on the way"); the
command, recipe and results of the shipped policy are in ``sim/demo_policy/made_by.json``.
"""
from __future__ import annotations

import os

SHIPPED_POLICY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_policy")
MADE_BY = "made_by.json"  # how a demo checkpoint was made: command, recipe, expert episodes, results
DEMO_IMAGE_SIZE = 64

# window 1 and no state token (a history lets the policy copy the arm's motion instead of looking),
# 8 px patches, fan-in init, batch 64 and lr 3e-4 (README)
DEMO_TRAIN = {
    "model": {"backbone": "paligemma", "tiny": True, "size": {"patch": 8, "layers": 3, "init_scale": 1.0},
              "image_size": DEMO_IMAGE_SIZE, "window_size": 1, "fwd_pred_next_n": 5, "head": "lstm",
              "head_hidden": 128, "use_state": False, "norm_mode": "quantile", "gripper_loss_weight": 0.1},
    "data": {"batch_size": 64, "val_fraction": 0.0},
    "optim": {"lr": 3e-4, "warmup_steps": 200, "schedule": "cosine", "max_steps": 15000},
    "trainer": {"log_every": 100, "checkpoint_every": 1000, "progress_bar": True},
    "seed": 0,
}
DEMO_EPISODES = 3600  # expert episodes: 1200 layouts x 3 blocks
DEMO_GROUNDING_QUESTIONS = True  # co-train with questions asked with the instruction (sim/grounding_vqa.py)
# sim_node's tracking error while recording: the expert also shows how to recover (TabletopEnv)
DEMO_ACTUATION_NOISE = 0.5
DEMO_STORAGE = "png"  # the shipped policy was trained on lossless frames; video storage is untried (README)
DEMO_EVERY_BLOCK = True  # every layout demonstrated once per block: only the instruction tells which
DEMO_EXECUTE_STEPS = 2  # actions of each predicted 5-step chunk executed (chosen on validation episodes)
