"""Training from LeRobot datasets with Lightning: loss falls, export loads, exact resume, DDP."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from robovlm_ros.data.lerobot import LeRobotWriter
from robovlm_ros.runtime import PolicyRunner
from robovlm_ros.train.config import load_train_config
from robovlm_ros.train.run import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_dataset(root, episodes=4, length=20, seed=0, storage="video"):
    """Episodes whose actions are a function of the images, so a policy can learn them."""
    rng = np.random.default_rng(seed)
    w = LeRobotWriter(str(root), 10.0, [f"j{i}" for i in range(6)] + ["gripper"],
                      [f"a{i}" for i in range(6)] + ["gripper"], "test", storage=storage)
    for e in range(episodes):
        # each frame a noisy grey level ramping up; the action (and so the whole chunk) follows from it
        level = rng.integers(0, 120) + 6 * np.arange(length)
        rgb = np.clip(level[:, None, None, None] + rng.integers(-8, 9, (length, 32, 32, 3)), 0, 255).astype(np.uint8)
        state = np.c_[rng.normal(size=(length, 6)), np.where(rng.normal(size=(length, 1)) > 0, 1.0, -1.0)]
        action = np.c_[np.outer(level / 255 - 0.5, np.linspace(0.5, 1.5, 6)), np.where(level > 127, 1.0, -1.0)]
        w.add_episode({"rgb": rgb, "hand_rgb": np.ascontiguousarray(rgb[:, ::-1]), "state": state, "action": action,
                       "timestamp": np.arange(length) / 10}, ["pick up the red block", "push the blue cube"][e % 2],
                      {"success": True})
    w.finish()
    return root


def write_config(path, dataset, out, **sections):
    cfg = {"output_dir": str(out), "seed": 0,
           "model": {"backbone": "llava", "tiny": True, "window_size": 2, "fwd_pred_next_n": 3, "head": "mlp",
                     "norm_mode": "quantile", "gripper_loss_weight": 0.1},
           "data": {"datasets": [str(dataset)], "batch_size": 4, "val_fraction": 0.25},
           "optim": {"lr": 0.003, "max_steps": 60, "warmup_steps": 3},
           "trainer": {"checkpoint_every": 10, "log_every": 1, "progress_bar": False}}
    for section, values in sections.items():
        cfg[section].update(values)
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def losses(run_dir):
    """train/loss per logged step; a step logged twice fails (a resumed run must not repeat rows)."""
    with open(os.path.join(run_dir, "logs", "metrics.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    steps = [int(r["step"]) for r in rows]
    assert len(steps) == len(set(steps)), f"steps logged twice: {sorted(s for s in steps if steps.count(s) > 1)}"
    return {int(r["step"]): float(r["train/loss"]) for r in rows}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "ds")


def test_training_lowers_the_loss_and_exports_a_runnable_checkpoint(tmp_path, dataset):
    cfg = load_train_config(write_config(tmp_path / "cfg.yaml", dataset, tmp_path / "run",
                                         trainer={"checkpoint_every": 20}))
    export = train(cfg)
    curve = losses(tmp_path / "run")
    steps = sorted(curve)
    first, last = np.mean([curve[s] for s in steps[:3]]), np.mean([curve[s] for s in steps[-3:]])
    assert last < 0.5 * first, f"loss {first:.4f} -> {last:.4f}"
    ckpts = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    assert ckpts == ["last.ckpt"] + [f"step-{s:06d}.ckpt" for s in (20, 40, 60)]
    runner = PolicyRunner(export, device="cpu")
    stats = runner.model.normalizer.stats
    assert stats["action"]["count"] == [80]  # the dataset's statistics travel with the policy
    runner.set_instruction("pick up the red block")
    rng = np.random.default_rng(1)
    for _ in range(3):
        a = runner.step({"rgb": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                         "hand_rgb": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                         "state": np.r_[rng.normal(size=6), 1.0]})
        assert a.shape == (7,) and np.isfinite(a).all()
        # quantile normalisation: arm actions come back inside the data's q01..q99 range
        assert np.all(a[:6] >= np.array(stats["action"]["q01"][:6]) - 1e-6)
        assert np.all(a[:6] <= np.array(stats["action"]["q99"][:6]) + 1e-6)


def test_validation_reports_held_out_r2_and_gripper_accuracy(tmp_path, dataset):
    """val/r2_arm* and val/gripper_accuracy are what the exported policy gives on the held-out episodes."""
    import torch

    from robovlm_ros.model import RoboVLM
    from robovlm_ros.train.run import build

    cfg = load_train_config(write_config(tmp_path / "cfg.yaml", dataset, tmp_path / "run",
                                         optim={"max_steps": 30}, trainer={"checkpoint_every": 30}))
    export = train(cfg)
    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        logged = [r for r in csv.DictReader(f) if r.get("val/r2_arm")][-1]
    assert int(logged["step"]) == 29  # the validation after the last step: the exported weights
    policy = RoboVLM.from_pretrained(export).eval()
    _, _, data = build(cfg)  # the same split (seeded), the exported policy's preprocessing
    loader = torch.utils.data.DataLoader(data.val_ds, batch_size=8, collate_fn=data.collate)
    pred, target = [], []
    with torch.no_grad():
        for b in loader:
            pred.append(policy.predict(b, normalized=True)[:, 0].numpy())
            target.append(b["actions"][:, -1, 0].numpy())
    pred, target = np.concatenate(pred), np.concatenate(target)
    assert len(pred) == len(data.val_ds) > 2
    r2 = 1 - ((pred - target) ** 2).sum(0) / ((target - target.mean(0)) ** 2).sum(0)
    for i in range(6):
        assert float(logged[f"val/r2_arm{i}"]) == pytest.approx(r2[i], rel=1e-3, abs=1e-4)
    assert float(logged["val/r2_arm"]) == pytest.approx(r2[:6].mean(), rel=1e-3, abs=1e-4)
    assert float(logged["val/gripper_accuracy"]) == pytest.approx(np.mean((pred[:, 6] > 0) == (target[:, 6] > 0)))


@pytest.mark.parametrize("setup", [{}, {"model": {"lora": {"r": 4}}, "trainer": {"precision": "bf16-mixed"}}],
                         ids=["fp32", "lora-bf16-mixed"])  # the second restores frozen weights stored in bf16
def test_resume_continues_with_the_same_loss_curve_and_keeps_the_log(tmp_path, dataset, setup):
    sections = dict(optim={"max_steps": 22}, trainer={"checkpoint_every": 7, **setup.get("trainer", {})},
                    **{k: v for k, v in setup.items() if k != "trainer"})
    full = load_train_config(write_config(tmp_path / "a.yaml", dataset, tmp_path / "full", **sections))
    train(full)
    part = load_train_config(write_config(tmp_path / "b.yaml", dataset, tmp_path / "part", **sections))
    part.optim.max_steps = 12  # "interrupted" after 12 steps: mid-epoch (11 batches per epoch), 5 past a checkpoint
    train(part)
    ckpts = tmp_path / "part" / "checkpoints"
    os.replace(ckpts / "step-000007.ckpt", ckpts / "last.ckpt")  # killed before a last.ckpt at step 12
    before = losses(tmp_path / "part")
    assert sorted(before) == list(range(12))
    with pytest.raises(FileExistsError, match="--resume"):
        train(part)
    part.optim.max_steps = 22
    train(part, resume=True)
    a, after = losses(tmp_path / "full"), losses(tmp_path / "part")
    # one curve: the steps before the checkpoint kept, those after it trained and logged once more
    assert sorted(after) == sorted(a) == list(range(22))
    for step, value in after.items():
        assert value == pytest.approx(a[step], rel=1e-5), f"step {step}: {value} vs {a[step]}"
    for step in range(7):
        assert after[step] == before[step]  # the rows written before the interruption, unchanged


def test_output_that_is_not_a_terminal_gets_progress_lines(tmp_path, dataset):
    """A log file gets one line every log_every steps with the logged loss, not progress-bar updates."""
    cfg = write_config(tmp_path / "p.yaml", dataset, tmp_path / "run", optim={"max_steps": 12},
                       trainer={"progress_bar": True, "log_every": 4, "checkpoint_every": 12})
    proc = subprocess.run([sys.executable, "-m", "robovlm_ros.cli", "train", "--config", cfg], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "\r" not in proc.stdout + proc.stderr
    lines = [ln.split() for ln in proc.stdout.splitlines() if ln.startswith("step ")]
    assert [ln[1] for ln in lines] == ["4/12", "8/12", "12/12"]
    logged = losses(tmp_path / "run")
    for ln in lines:  # the loss of the step just trained (logged at its 0-based index)
        assert ln[2] == "loss" and float(ln[3]) == pytest.approx(logged[int(ln[1].split("/")[0]) - 1], abs=1e-4)
        assert ln[5] == "s/step" and float(ln[4]) > 0 and ln[6] == "eta"
    assert lines[-1][7] == "0:00:00"


def test_config_errors_are_clear(tmp_path, dataset):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"datasets": [str(dataset)], "batchsize": 2}}))
    with pytest.raises(ValueError, match="unknown keys in 'data'"):
        load_train_config(str(bad))
    bad.write_text(yaml.safe_dump({"model": {"backbone": "llava", "tiny": True, "head": "rnn"},
                                   "data": {"datasets": [str(dataset)]}}))
    with pytest.raises(ValueError, match="head"):
        load_train_config(str(bad))


def test_example_configs_parse():
    for name in os.listdir(os.path.join(REPO, "config", "train")):
        cfg = load_train_config(os.path.join(REPO, "config", "train", name))
        assert cfg.optim.max_steps > 0 and cfg.data.datasets


def test_two_process_ddp_on_cpu_exports_one_checkpoint(tmp_path, dataset):
    cfg = write_config(tmp_path / "ddp.yaml", dataset, tmp_path / "run", optim={"max_steps": 6},
                       data={"batch_size": 2, "val_fraction": 0.0},
                       trainer={"strategy": "ddp", "devices": 2, "accelerator": "cpu", "checkpoint_every": 3})
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-m", "robovlm_ros.cli", "train", "--config", cfg], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("exported ") == 1  # only the main process exports
    assert "world_size: 2" in proc.stdout + proc.stderr or "distributed_backend=gloo" in proc.stdout + proc.stderr
    runner = PolicyRunner(tmp_path / "run" / "checkpoint", device="cpu")
    assert runner.config.window_size == 2


def test_vision_language_co_training_adds_its_loss(tmp_path, dataset):
    import cv2

    lines = []
    for i, (color, name) in enumerate([((0, 0, 255), "red"), ((255, 0, 0), "blue")]):
        cv2.imwrite(str(tmp_path / f"{name}.png"), np.full((32, 32, 3), color, np.uint8))
        lines.append(json.dumps({"image": f"{name}.png", "prompt": "what colour is it?", "answer": name}))
    (tmp_path / "vl.jsonl").write_text("\n".join(lines) + "\n")
    cfg = load_train_config(write_config(tmp_path / "cfg.yaml", dataset, tmp_path / "run", optim={"max_steps": 25},
                                         data={"vl_datasets": [str(tmp_path / "vl.jsonl")]},
                                         model={"vl_loss_ratio": 0.5}, trainer={"checkpoint_every": 25}))
    train(cfg)
    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss_vl")]
    assert len(rows) >= 20
    first, last = float(rows[0]["train/loss_vl"]), float(rows[-1]["train/loss_vl"])
    assert last < 0.5 * first  # the captions are learnt alongside the actions
    for r in rows:
        total = float(r["train/loss_action"]) + 0.5 * float(r["train/loss_vl"])
        assert float(r["train/loss"]) == pytest.approx(total, rel=1e-4)


def test_vl_labels_cover_the_answer_only():
    from robovlm_ros.data.vl import tokenize_vl
    from robovlm_ros.model.text_tokenizer import tiny_tokenizer

    tok = tiny_tokenizer()
    out = tokenize_vl(tok, ["colour?", "what colour is it?"], ["red", "blue"])
    for ids, mask, labels, answer in zip(out["vl_input_ids"], out["vl_attention_mask"], out["vl_labels"],
                                         ["red", "blue"]):
        kept = labels[labels != -100]
        assert tok.decode(kept[:-1]) == " " + answer and kept[-1] == tok.eos_token_id
        assert (labels[mask == 0] == -100).all()


def test_random_shift_moves_the_image_within_the_pad():
    import torch

    from robovlm_ros.data.dataset import random_shift

    img = torch.zeros(2, 3, 16, 16)
    img[..., 8, 8] = 1.0
    seen = set()
    for seed in range(30):
        out = random_shift(img, 2, torch.Generator().manual_seed(seed))
        assert out.shape == img.shape
        y, x = (out[0, 0] == 1).nonzero()[0].tolist()
        assert abs(y - 8) <= 2 and abs(x - 8) <= 2
        assert torch.equal(out[0], out[1])  # one shift for the whole window
        seen.add((y, x))
    assert len(seen) > 5


def test_bf16_mixed_precision_and_gradient_accumulation(tmp_path, dataset):
    cfg = load_train_config(write_config(tmp_path / "cfg.yaml", dataset, tmp_path / "run",
                                         optim={"max_steps": 3, "accumulate": 2},
                                         trainer={"precision": "bf16-mixed", "checkpoint_every": 3}))
    train(cfg)
    import torch

    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 3
    assert state["robovlm_ros"]["batches_seen"] == 6  # two batches per optimiser step


def test_bf16_mixed_training_keeps_frozen_matrix_weights_in_bf16_and_trains_the_same(tmp_path, dataset):
    """LoRA under bf16-mixed: the frozen linear weights are stored in bf16 while fitting (the resumable
    checkpoint shows it), the losses equal those of a run that keeps them in float32, and the exported
    policy is that run's, bit for bit: float32, the frozen weights unrounded, and it loads in the runner."""
    import torch
    from safetensors.torch import load_file

    runs = {}
    for keep_bf16 in (True, False):
        out = tmp_path / f"run_{keep_bf16}"
        cfg = load_train_config(write_config(tmp_path / f"cfg_{keep_bf16}.yaml", dataset, out,
                                             model={"lora": {"r": 4}}, optim={"max_steps": 4},
                                             trainer={"precision": "bf16-mixed", "checkpoint_every": 4,
                                                      "frozen_in_compute_dtype": keep_bf16}))
        export = train(cfg)
        fitted = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        runs[keep_bf16] = losses(out), fitted, load_file(os.path.join(export, "model.safetensors")), export
    (curve, fitted, exported, export), (curve_fp32, fitted_fp32, exported_fp32, _) = runs[True], runs[False]
    assert len(curve) == 4 and curve == curve_fp32
    base = [k for k in fitted if k.endswith("base_layer.weight")]
    assert base and all(fitted[k].dtype == torch.bfloat16 and fitted_fp32[k].dtype == torch.float32 for k in base)
    assert all(v.dtype == torch.float32 for k, v in fitted.items() if "lora_" in k or k.startswith("policy.head."))
    assert exported.keys() == exported_fp32.keys()
    assert all(v.dtype == torch.float32 and torch.equal(v, exported_fp32[k]) for k, v in exported.items())
    name = base[0].removeprefix("policy.")  # bf16 would have rounded it: the comparison sees the originals
    assert not torch.equal(exported[name], exported[name].to(torch.bfloat16).float())
    runner = PolicyRunner(export, device="cpu", dtype="float32")  # loads strictly, every weight in float32
    assert all(p.dtype == torch.float32 for p in runner.model.parameters())


def test_a_fit_that_fails_gives_the_frozen_weights_back_in_float32(tmp_path):
    """A fit that raises (an out-of-memory, a crash in a callback) never reaches on_fit_end: the frozen
    weights stored in bf16 for it are put back all the same, so the policy predicts outside autocast, and a
    second fit of the same module converts and restores them again."""
    import lightning as L
    import torch

    from robovlm_ros.model import PolicyConfig, RoboVLM
    from robovlm_ros.model.synthetic import synthetic_batch
    from robovlm_ros.train.config import OptimConfig
    from robovlm_ros.train.module import PolicyModule

    class Crash(L.Callback):
        def on_train_batch_end(self, *args):
            raise RuntimeError("simulated crash")

    model = RoboVLM(PolicyConfig.tiny("paligemma", window_size=2, fwd_pred_next_n=2, lora={"r": 4}))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module = PolicyModule(model, OptimConfig(lr=1e-3, max_steps=2))
    batches = [synthetic_batch(model, batch_size=2, seed=i) for i in range(2)]
    seen = []

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, module, *args):
            seen.append(module.policy.backbone.decoder_layers[0].self_attn.q_proj.base_layer.weight.dtype)

    def fit(*callbacks):
        trainer = L.Trainer(max_steps=2, accelerator="cpu", precision="bf16-mixed", logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[Watch(), *callbacks], default_root_dir=tmp_path)
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(Crash())
    assert seen == [torch.bfloat16]  # converted while fitting
    frozen = [(k, v) for k, v in model.state_dict().items() if "base_layer" in k]
    assert frozen and all(v.dtype == torch.float32 and torch.equal(v, before[k]) for k, v in frozen)
    model.eval().predict(synthetic_batch(model, batch_size=1))  # float32 inputs, float32 weights
    fit()
    assert seen == [torch.bfloat16] * 3
    assert all(v.dtype == torch.float32 for v in model.state_dict().values() if v.is_floating_point())


def test_frozen_weights_change_dtype_only_where_the_strategy_trains_the_parameters_themselves():
    """One device and DDP train the module's parameters as they are; FSDP, DeepSpeed and XLA (the last two
    derive from DDP) keep their own copies and precisions: their frozen weights are left to them."""
    from lightning.pytorch import strategies as S

    from robovlm_ros.train.module import plain_parameters

    assert plain_parameters(S.SingleDeviceStrategy) and plain_parameters(S.DDPStrategy)
    for own in (S.DeepSpeedStrategy, S.FSDPStrategy, S.XLAStrategy, S.SingleDeviceXLAStrategy):
        assert not plain_parameters(own), own.__name__


def test_training_normalises_with_the_datasets_own_statistics(tmp_path, dataset):
    """One home for the statistics: a single dataset's meta/stats.json (written at conversion, over the
    stored float32 values) is what the policy is normalised with, not a second computation."""
    import shutil

    from robovlm_ros.data.lerobot_reader import LeRobotEpisodes
    from robovlm_ros.data.lerobot_stats import feature_stats
    from robovlm_ros.train.run import build

    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    stats_path = copy / "meta" / "stats.json"
    written = json.loads(stats_path.read_text())
    frames = LeRobotEpisodes(str(copy)).episodes
    # the written statistics are those of the stored frames, exactly
    assert written["action"] == feature_stats(np.concatenate([e["action"] for e in frames]))
    assert written["observation.state"] == feature_stats(np.concatenate([e["state"] for e in frames]))
    # and training takes them from the file: an edited q99 reaches the policy's normaliser
    written["action"]["q99"] = [v + 0.5 for v in written["action"]["q99"]]
    stats_path.write_text(json.dumps(written))
    model, _, _ = build(load_train_config(write_config(tmp_path / "cfg.yaml", copy, tmp_path / "run")))
    assert model.normalizer.stats["action"]["q99"] == written["action"]["q99"]
    assert model.normalizer.stats["state"] == written["observation.state"]
