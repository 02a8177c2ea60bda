"""Sim grounding questions (sim/grounding_vqa.py): right answers, deterministic, written atomically."""
import json
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from robovlm_ros.data.vl import VLDataset, tokenize_vl  # noqa: E402
from robovlm_ros.model import PolicyConfig, RoboVLM  # noqa: E402
from robovlm_ros.sim.grounding_vqa import write_grounding_vqa  # noqa: E402
from robovlm_ros.sim.tabletop import TabletopEnv  # noqa: E402


def projected_cell(env: TabletopEnv, point: np.ndarray, grid: int) -> tuple[int, int]:
    """Pinhole projection of a world point into the static camera, independent of the segmentation."""
    cam = env.model.camera("static")
    pos, rot = env.data.cam_xpos[cam.id], env.data.cam_xmat[cam.id].reshape(3, 3)
    x, y, z = rot.T @ (point - pos)  # camera frame: x right, y up, looking along -z
    f = env.image_size / 2 / np.tan(np.radians(env.model.cam_fovy[cam.id]) / 2)
    u, v = env.image_size / 2 + f * x / -z, env.image_size / 2 - f * y / -z
    cell = env.image_size / grid
    return int(v // cell), int(u // cell)


def read(out):
    with open(os.path.join(out, "vqa.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_answers_name_the_cell_of_the_instructed_block(tmp_path):
    out = str(tmp_path / "vqa")
    seeds = range(40, 52)
    n = write_grounding_vqa(out, seeds, frames=(0,))
    lines = read(out)
    assert n == len(lines) == 3 * len(seeds)  # the arm at home hides no block
    env, exact, near = TabletopEnv(image_size=64), 0, 0
    by_image = {}
    for line in lines:
        by_image.setdefault(line["image"], []).append(line)
    for seed in seeds:
        env.reset(seed)
        questions = by_image[f"img/{seed}_0.png"]
        assert sorted(q["prompt"] for q in questions) == sorted(f"pick up the {c} block" for c in env.colors)
        for q in questions:
            color = q["prompt"].split()[3]
            row, col = (int(t) for t in q["answer"].split()[1::2])
            top = env.block_position(color) + [0, 0, 0.02]  # the camera sees the top face most
            want = projected_cell(env, top, 8)
            exact += (row, col) == want
            near += abs(row - want[0]) <= 1 and abs(col - want[1]) <= 1
    assert near == len(lines) and exact >= 0.8 * len(lines), (exact, near, len(lines))
    answers = {q["answer"] for q in lines}
    assert len(answers) >= 10  # the blocks' places vary, so do the answers
    img = cv2.imread(os.path.join(out, lines[0]["image"]))
    assert img.shape == (64, 64, 3)


def test_same_seeds_same_questions_and_images_and_a_rewrite_replaces_the_old(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_grounding_vqa(a, [3, 4], frames=(0, 10))
    write_grounding_vqa(b, [3, 4], frames=(0, 10))
    assert read(a) == read(b)
    for line in read(a):
        np.testing.assert_array_equal(cv2.imread(os.path.join(a, line["image"])), cv2.imread(os.path.join(b, line["image"])))
    write_grounding_vqa(a, [5], frames=(0,))
    assert {q["image"] for q in read(a)} == {"img/5_0.png"} and sorted(os.listdir(os.path.join(a, "img"))) == ["5_0.png"]
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]  # no temporary directory left behind
    with pytest.raises(ValueError):
        write_grounding_vqa(a, [6], frames=())
    assert {q["image"] for q in read(a)} == {"img/5_0.png"}  # a refused write keeps the old version

    def seeds_then_interrupted():
        yield 6
        raise KeyboardInterrupt  # e.g. Ctrl-C after the first layout was rendered
    with pytest.raises(KeyboardInterrupt):
        write_grounding_vqa(a, seeds_then_interrupted(), frames=(0,))
    assert {q["image"] for q in read(a)} == {"img/5_0.png"}  # an interrupted write keeps it too
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]  # and leaves no partial directory behind


def test_the_questions_load_as_co_training_data_with_the_instruction_as_prompt(tmp_path):
    out = str(tmp_path / "vqa")
    write_grounding_vqa(out, [9], frames=(0,))
    model = RoboVLM(PolicyConfig.tiny(backbone="paligemma", image_size=64))
    ds = VLDataset([os.path.join(out, "vqa.jsonl")], model.processor)
    sample = ds[0]
    assert sample["vl_rgb"].shape == (3, 64, 64)
    # the question is tokenised exactly like the instruction the policy gets
    instruction_ids, _ = model.processor.text([sample["prompt"]])
    vl = tokenize_vl(model.processor.tokenizer, [sample["prompt"]], [sample["answer"]])
    prompt_part = vl["vl_input_ids"][0][vl["vl_labels"][0] == -100].tolist()
    assert prompt_part == instruction_ids[0].tolist()
