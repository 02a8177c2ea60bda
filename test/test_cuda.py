"""The GPU path: the same checks as on the CPU, run on CUDA (skipped where no GPU is present).

Run on a GPU machine with ``python -m pytest test/test_cuda.py -m cuda`` (this file alone: the others import
ROS 2, MuJoCo and rosbags, which a GPU machine's image may lack); CI has no GPU, so there these are skipped.
"""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from robovlm_ros.runtime import PolicyRunner
from robovlm_ros.train.config import load_train_config
from robovlm_ros.train.run import train

from test_runtime import observations, tiny_model
from test_training import losses, make_dataset, write_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.fixture(autouse=True)
def _exact_fp32():
    # TF32 matmuls would make "float32 on the GPU" differ from the CPU by ~1e-3; compare real fp32
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def run_steps(model_or_ckpt, device, dtype, n=9, use_cache=True, **kw):
    runner = PolicyRunner(model_or_ckpt, device=device, dtype=dtype, use_cache=use_cache, execute_steps=1, **kw)
    runner.set_instruction("pick up the red block")
    return np.stack([runner.step(o) for o in observations(n)])


@pytest.mark.parametrize("space,history", [("continuous", "post"), ("continuous", "pre"),
                                           ("discrete", "post"), ("discrete", "pre")])
def test_cached_stepping_on_cuda_equals_recomputing(tmp_path, space, history):
    tiny_model(space, history).save_pretrained(tmp_path / "ckpt")
    cached = run_steps(tmp_path / "ckpt", "cuda", "float32", use_cache=True)
    full = run_steps(tmp_path / "ckpt", "cuda", "float32", use_cache=False)
    np.testing.assert_allclose(cached, full, rtol=0, atol=1e-4)
    assert len(np.unique(cached[:, 0])) > 3  # actions vary: the comparison is not trivial


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_camera_frames_normalised_on_the_gpu_equal_the_cpus(dtype):
    """The runner sends frames to the GPU as uint8 and normalises them there (processing.images): bit for bit
    what the CPU computes, and what training saw (with a Python 255.0, CUDA's reciprocal product differs)."""
    clip = dict(image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
    obs = observations(1, size=(480, 640))[0]
    frames = {}
    for device in ("cpu", "cuda"):
        runner = PolicyRunner(tiny_model(use_hand_rgb=True, **clip), device=device, dtype=dtype)
        frames[device] = [x.cpu() for x in runner.preprocess(obs)]
        assert frames[device][0].dtype == getattr(torch, dtype)
    for cpu, cuda in zip(frames["cpu"], frames["cuda"]):
        assert torch.equal(cpu, cuda)
    assert len(torch.unique(frames["cuda"][0])) > 20  # varied pixels: the comparison is not trivial


def test_cuda_float32_matches_the_cpu(tmp_path):
    tiny_model().save_pretrained(tmp_path / "ckpt")
    cpu = run_steps(tmp_path / "ckpt", "cpu", "float32")
    gpu = run_steps(tmp_path / "ckpt", "cuda", "float32")
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-4)


def test_auto_device_is_cuda_bf16_and_close_to_cpu_float32(tmp_path):
    tiny_model().save_pretrained(tmp_path / "ckpt")
    runner = PolicyRunner(tmp_path / "ckpt")  # device/dtype "auto"
    assert runner.device.type == "cuda" and runner.dtype == torch.bfloat16
    cpu = run_steps(tmp_path / "ckpt", "cpu", "float32")
    gpu = run_steps(tmp_path / "ckpt", "auto", "auto")
    assert np.isfinite(gpu).all()
    np.testing.assert_allclose(gpu[:, :6], cpu[:, :6], atol=0.05)


def test_discrete_decoding_with_kv_cache_on_cuda_equals_uncached():
    model = tiny_model("discrete", "post").cuda().eval()
    from robovlm_ros.model.synthetic import synthetic_batch

    batch = synthetic_batch(model, batch_size=2)
    assert batch["rgb"].is_cuda  # synthetic batches follow the model's device
    del batch["actions"]
    cached = model.predict(batch, normalized=True, use_cache=True)
    assert torch.equal(cached, model.predict(batch, normalized=True, use_cache=False))
    assert len(torch.unique(cached)) > 10


def test_pre_history_graph_decoding_on_cuda_equals_the_growing_cache(tmp_path):
    """Discrete ``pre``: the window's sequence in one preallocated cache, the chunk decoded by a graph
    bound to it; over 11 steps the window fills, then slides (the cache is refilled in one pass, replayed as
    a graph too)."""
    tiny_model("discrete", "pre").save_pretrained(tmp_path / "ckpt")
    runs = []
    for decoding in ("auto", "dynamic"):
        runner = PolicyRunner(tmp_path / "ckpt", device="cuda", dtype="float32", execute_steps=1)
        runner.model.decoding = decoding
        runner.set_instruction("pick up the red block")
        runs.append(np.stack([runner.step(o) for o in observations(11)]))
        if decoding == "auto":
            assert runner.policy._stepper.graph is not None  # captured, not the eager fallback
            prefix = runner.policy._window_prefix  # the full window's prefix: 11 - 4 + 1 steps
            assert prefix.refused is None and prefix.replays == 8, (prefix.replays, prefix.refused)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert len(np.unique(runs[0][:, 0])) > 3


@pytest.mark.parametrize("family", ["paligemma", "llava", "qwen2_vl"])
def test_cuda_graph_decoding_equals_the_growing_cache(family):
    """On CUDA the KV-cached decoding replays a captured graph of its prefix and one of a step
    (model/static_decoding.py): it must give the growing cache's tokens, over repeated calls with other
    inputs in between."""
    from robovlm_ros.model import PolicyConfig, RoboVLM
    from robovlm_ros.model.synthetic import synthetic_batch

    model = RoboVLM(PolicyConfig.tiny(family, action_space="discrete")).cuda().eval()
    with torch.no_grad():  # spread the argmax over many bins, as in test_model_inference
        for p in model.backbone.language_model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3)
        model.backbone.lm_head.weight.normal_(0, 1.0)
    for seed in (0, 1, 0):
        batch = synthetic_batch(model, batch_size=2, seed=seed)
        del batch["actions"]
        model.decoding = "dynamic"
        growing = model.predict(batch, normalized=True, use_cache=True)
        model.decoding = "auto"
        graphed = model.predict(batch, normalized=True, use_cache=True)
        assert torch.equal(graphed, growing)
        assert len(torch.unique(graphed)) > 10
    decoder = model._static_decoder
    assert decoder._stepper.graph is not None  # the graph was captured, not the eager fallback
    if family == "qwen2_vl":  # its vision tower eagerly, the decoder's pass into the cache a graph
        assert decoder._prefix_decoder.refused is None and decoder._prefix_decoder.replays == 2
    else:
        assert decoder._prefix.refused is None and decoder._prefix.replays == 3  # the prefix's graph too


@pytest.mark.parametrize("family", ["paligemma", "smolvlm", "kosmos2", "qwen2_vl"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_graphed_continuous_step_acts_as_the_eager_step(family, dtype):
    """On CUDA the cached continuous step's VLM pass and head replay CUDA graphs (model/cuda_graph.py): over 9 steps,
    the window filling, the actions equal the same runner's with cuda_graphs off, and the graph really
    served the steps (not its eager fallback). Qwen's vision tower runs eagerly, the decoder's pass over its
    images is the graph."""
    actions, reports = {}, {}
    for graphs in (False, True):
        model = tiny_model(family=family, use_hand_rgb=True, window_size=4)
        runner = PolicyRunner(model, device="cuda", dtype=dtype, execute_steps=1, cuda_graphs=graphs)
        runner.set_instruction("pick up the red block")
        actions[graphs] = np.stack([runner.step(o) for o in observations(9)])
        reports[graphs] = runner.policy.graph_report()
    assert reports[False]["frame_replays"] == reports[False]["head_replays"] == 0
    part = "frame_decoder" if family == "qwen2_vl" else "frame"
    assert reports[True][f"{part}_refused"] is None and reports[True][f"{part}_replays"] >= 7, reports[True]
    assert reports[True]["head_refused"] is None and reports[True]["head_replays"] >= 7, reports[True]
    np.testing.assert_allclose(actions[True], actions[False], rtol=0, atol=1e-4 if dtype == "float32" else 2e-2)
    assert len(np.unique(actions[True][:, 0])) > 3  # actions vary: the comparison is not trivial


@pytest.mark.parametrize("space", ["continuous", "discrete"])
def test_a_new_instruction_length_is_captured_before_its_first_step(space):
    """Graphs are bound to the instruction's token count: after the warm-up, an instruction of another count
    warms up again in set_instruction, so its steps replay graphs and capture none."""
    runner = PolicyRunner(tiny_model(space, use_hand_rgb=True, window_size=4), device="cuda", execute_steps=1)
    runner.set_instruction("pick up the red block")
    runner.warmup()

    def captures() -> tuple:
        report = runner.policy.graph_report()
        decoder = runner.model._static_decoder
        prefix = None if decoder is None else (decoder._prefix.captures, id(decoder._stepper.graph))
        return tuple(v for k, v in report.items() if k.endswith("_captures")), prefix

    before = captures()
    runner.set_instruction("stack the cubes")
    assert runner.warmups == 2 and captures() != before
    ready = captures()
    for o in observations(6):
        runner.step(o)
    assert captures() == ready


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="fewer than two CUDA devices")
@pytest.mark.parametrize("space", ["continuous", "discrete"])
def test_graphs_run_on_the_policys_device_not_the_current_one(space):
    """A policy on the last GPU (the thread's current device stays cuda:0): its graphs are captured and
    replayed there, and act as the same policy without graphs (captured on cuda:0's stream, a graph would
    record nothing and replay nothing)."""
    device = f"cuda:{torch.cuda.device_count() - 1}"
    actions, runners = {}, {}
    for graphs in (False, True):
        runner = runners[graphs] = PolicyRunner(tiny_model(space, use_hand_rgb=True), device=device, dtype="float32",
                                                execute_steps=1, cuda_graphs=graphs)
        runner.set_instruction("pick up the red block")
        actions[graphs] = np.stack([runner.step(o) for o in observations(6)])
    assert torch.cuda.current_device() == 0
    np.testing.assert_allclose(actions[True], actions[False], rtol=0, atol=1e-4)
    assert len(np.unique(actions[True][:, 0])) > 3  # actions vary: the comparison is not trivial
    if space == "continuous":
        report = runners[True].policy.graph_report()
        assert report["frame_refused"] is None and report["frame_replays"] >= 5, report
    else:
        decoder = runners[True].model._static_decoder
        assert decoder._stepper.graph is not None and decoder._prefix.replays >= 5


def test_moved_weights_never_replay_an_old_decoding_graph():
    """After ``.cpu().cuda()`` the weights live at new addresses: the decoding step's graph of the old ones
    must not replay (it would read freed memory). The old storages are held and zeroed, so a stale graph
    decodes something else, and the moved weights are changed, so the tokens must follow them."""
    from robovlm_ros.model.synthetic import synthetic_batch

    model = tiny_model("discrete", family="paligemma", use_hand_rgb=True).cuda().eval()
    model.decoding = "static"
    batch = {k: v for k, v in synthetic_batch(model, batch_size=1).items() if k != "actions"}
    for _ in range(2):  # captured, then replayed
        model.predict(batch, normalized=True)
    assert model._static_decoder._stepper.graph is not None
    held = [p.data for p in model.parameters()]
    model.cpu().cuda()
    with torch.no_grad():
        for old in held:
            old.zero_()
        for p in model.parameters():
            p.mul_(-1.5)
    model.decoding = "dynamic"
    expected = model.predict(batch, normalized=True)
    model.decoding = "static"
    for _ in range(2):
        assert torch.equal(model.predict(batch, normalized=True), expected)
    assert len(torch.unique(expected)) > 3


def test_after_a_failed_capture_the_policy_runs_eagerly_on_its_stream(tmp_path):
    """A capture that fails (here a copy to the host inside it, which the scan would have refused) leaves
    the thread on its own stream with graphs off, and the policy still steps as on the CPU. In a process of
    its own: a failed capture may leave PyTorch's allocator mid-capture."""
    script = tmp_path / "failed_capture.py"
    script.write_text("""
import numpy as np, torch
import robovlm_ros.model.cuda_graph as cuda_graph
from robovlm_ros.runtime import PolicyRunner
from test_runtime import observations, tiny_model
x = torch.randn(64, 64, device="cuda")
try:
    cuda_graph.capture(lambda: x * x.cpu().sum().to(x.device), x.device)
    print("captured")
except Exception as e:
    print("failed", type(e).__name__)
print("stream", torch.cuda.current_stream() == torch.cuda.default_stream(), "off", cuda_graph._disabled is not None)
actions, replays = {}, {}
for device in ("cuda", "cpu"):
    runner = PolicyRunner(tiny_model(), device=device, dtype="float32", execute_steps=1)
    runner.set_instruction("pick up the red block")
    actions[device] = np.stack([runner.step(o) for o in observations(4)])
    replays[device] = runner.policy.graph_report()["frame_replays"]
print("same", np.allclose(actions["cuda"], actions["cpu"], rtol=0, atol=1e-4), replays["cuda"])
""")
    here = os.path.dirname(os.path.abspath(__file__))  # the package and the tests, before what the path has
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([os.path.dirname(here), here, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    lines = proc.stdout.split("\n")
    assert proc.returncode == 0 and lines[0].startswith("failed"), proc.stdout + proc.stderr[-3000:]
    assert lines[1] == "stream True off True" and lines[2] == "same True 0", proc.stdout + proc.stderr[-3000:]


def test_captured_functions_refuse_what_a_graph_cannot_replay_and_follow_moved_weights():
    from robovlm_ros.model.cuda_graph import CapturedFunction

    x = torch.randn(64, 64, device="cuda")
    syncs = CapturedFunction(lambda x: x * x.sum().item(), "sync")
    for _ in range(3):
        torch.testing.assert_close(syncs(x), x * x.sum())
    assert syncs.replays == 0 and "_local_scalar_dense" in syncs.refused
    noisy = CapturedFunction(lambda x: x + torch.rand_like(x), "noise")  # a graph replays other numbers
    for _ in range(3):
        noisy(x)
    assert noisy.replays == 0 and "something else" in noisy.refused
    lin = torch.nn.Linear(64, 64, device="cuda")
    graphed = CapturedFunction(lambda x: torch.tanh(lin(x)), "linear", guard=lambda: (lin.weight.data_ptr(),))
    with torch.no_grad():
        for i in range(4):
            y = torch.randn(8, 64, device="cuda")
            torch.testing.assert_close(graphed(y), torch.tanh(lin(y)))
            if i == 1:  # new weights at a new address: captured again, never the old graph
                lin.weight.data = lin.weight.data * -2.0
    assert graphed.refused is None and graphed.replays == 4  # each call, the two capturing ones included


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_training_on_the_gpu_exports_a_checkpoint_the_cpu_runs_alike(tmp_path, precision):
    # PNG storage: GPU machines' images may lack PyAV (tools/gpu-checks runs there), and the GPU is what is tested
    dataset = make_dataset(tmp_path / "ds", storage="png")
    cfg = load_train_config(write_config(tmp_path / "cfg.yaml", dataset, tmp_path / "run",
                                         trainer={"accelerator": "gpu", "precision": precision,
                                                  "checkpoint_every": 30}))
    export = train(cfg)
    curve = losses(tmp_path / "run")
    steps = sorted(curve)
    first, last = np.mean([curve[s] for s in steps[:3]]), np.mean([curve[s] for s in steps[-3:]])
    assert last < 0.5 * first, f"loss {first:.4f} -> {last:.4f}"
    state = torch.load(os.path.join(tmp_path, "run", "checkpoints", "last.ckpt"), map_location="cpu",
                       weights_only=False)
    assert state["global_step"] == 60
    size = (32, 32)
    obs = observations(5, size=size)
    out = {}
    for device in ("cpu", "cuda"):
        runner = PolicyRunner(export, device=device, dtype="float32", execute_steps=1)
        runner.set_instruction("pick up the red block")
        out[device] = np.stack([runner.step(o) for o in obs])
    np.testing.assert_allclose(out["cuda"], out["cpu"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lstm_heads_keep_cudnn_packed_weights_after_moving_to_the_gpu(dtype):
    # unpacked, every call on CUDA copies an LSTM's weights into one buffer (the H200 bench warned "RNN module
    # weights are not part of single contiguous chunk of memory" at each step, bf16): the runner packs them,
    # bf16 too, which torch's flatten_parameters leaves out (RoboVLM.pack_rnn_weights, heads.pack_rnn)
    model = tiny_model("continuous", "post", head="lstm")
    lstms = [m for m in model.modules() if isinstance(m, torch.nn.LSTM)]
    assert lstms, "the tiny policy has no LSTM head: nothing is checked"
    runner = PolicyRunner(model, device="cuda", dtype=dtype, execute_steps=1)
    runner.set_instruction("pick up the red block")
    for lstm in lstms:
        storages = {w.untyped_storage().data_ptr() for w in lstm._flat_weights}
        assert len(storages) == 1, f"{len(storages)} separate weight buffers"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*single contiguous chunk.*")
        for o in observations(3):
            runner.step(o)
