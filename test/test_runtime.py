"""PolicyRunner: cached stepping equals recomputation, chunk execution, ensembling, safety."""
import numpy as np
import pytest
import torch

from robovlm_ros.model import PolicyConfig, RoboVLM
from robovlm_ros.runtime import PolicyRunner, SafetyLimits, UnsafeActionError
from robovlm_ros.runtime.chunking import ChunkSchedule

from conftest import make_batch


def observations(n, seed=0, size=(48, 64)):
    rng = np.random.default_rng(seed)
    return [{"rgb": rng.integers(0, 255, (*size, 3), dtype=np.uint8),
             "hand_rgb": rng.integers(0, 255, (*size, 3), dtype=np.uint8),
             "state": np.r_[rng.normal(size=6), rng.choice([-1.0, 1.0])]} for _ in range(n)]


def tiny_model(space="continuous", history="post", family="llava", **kw):
    torch.manual_seed(0)
    model = RoboVLM(PolicyConfig.tiny(family, action_space=space, history_type=history, use_state=True, **kw))
    with torch.no_grad():  # spread discrete argmaxes over many bins (see test_model_inference)
        for p in model.backbone.language_model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3)
        model.backbone.lm_head.weight.normal_(0, 1.0)
    return model


ROBOVLMS_LAYOUT = dict(frame_end="<eos>", bin_style="robovlms", action_token_end=600)


@pytest.mark.parametrize("space,history,decoding,layout", [
    ("continuous", "post", "auto", {}), ("continuous", "pre", "auto", {}), ("discrete", "post", "dynamic", {}),
    ("discrete", "pre", "dynamic", {}), ("discrete", "post", "static", {}), ("discrete", "pre", "static", {}),
    ("discrete", "pre", "dynamic", ROBOVLMS_LAYOUT), ("discrete", "pre", "static", ROBOVLMS_LAYOUT),
    ("continuous", "pre", "auto", {"frame_end": "<eos>"}),
    ("continuous", "post", "auto", {"prefix_attention": "bidirectional"})],
    ids=lambda v: "robovlms" if v == ROBOVLMS_LAYOUT else (next(iter(v)) if isinstance(v, dict) and v else
                                                            ("" if v == {} else None)))
@pytest.mark.parametrize("execute_steps", [1, 2])
def test_cached_stepping_equals_recomputing_the_window(tmp_path, space, history, decoding, layout, execute_steps):
    """``decoding`` static: the KV cache preallocated (on CUDA its step is a graph; here eager), for
    ``pre`` history one cache of a full window kept across frames and reset when the window slides.
    ``layout`` robovlms: frames wrapped [BOS] ... [EOS] with RoboVLMs' bins (an imported discrete policy)."""
    tiny_model(space, history, **layout).save_pretrained(tmp_path / "ckpt")  # the runner loads a real checkpoint
    runs = []
    for use_cache in (True, False):
        runner = PolicyRunner(tmp_path / "ckpt", device="cpu", use_cache=use_cache, execute_steps=execute_steps)
        runner.model.decoding = decoding
        runner.set_instruction("pick up the red block")
        steps = [runner.step(o) for o in observations(11)]  # window 4: fills, then slides
        runs.append((np.stack(steps), runner.last_chunk))
        if decoding == "static" and use_cache:  # the preallocated cache was used, not the growing one
            if history == "pre":  # the window slid: its sequence went into the stepper's cache in one pass
                assert runner.policy._stepper is not None and runner.policy._seq is None
                assert runner.policy._stepper.cache.layers[0].keys.abs().sum() > 0
            else:
                assert runner.model._static_decoder is not None
    (a, chunk_a), (b, chunk_b) = runs
    assert a.shape == (11, 7)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    np.testing.assert_allclose(chunk_a, chunk_b, rtol=0, atol=1e-5)
    assert len(np.unique(a[:, 0])) > 3  # actions vary over time: the comparison is not trivial


@pytest.mark.slow  # torch.compile builds its kernels with the C++ compiler: tens of seconds on 2 cores
@pytest.mark.parametrize("space,history", [("continuous", "post"), ("discrete", "post"), ("continuous", "pre")])
def test_a_compiled_runner_acts_as_the_eager_one(tmp_path, space, history):
    """PolicyRunner(compile=True) (the node's `compile` parameter): the vision tower, decoder layers and head
    compiled; actions equal the eager runner's, and the modules really are compiled. Decoder layers take
    dynamo's automatic dynamic shapes: exercised by discrete decoding into the growing cache (the CPU's) and
    continuous ``pre`` history, whose cache lengths vary."""
    tiny_model(space, history).save_pretrained(tmp_path / "ckpt")
    runs = []
    for compiled in (False, True):
        runner = PolicyRunner(tmp_path / "ckpt", device="cpu", compile=compiled)
        runner.warmup()
        runner.set_instruction("pick up the red block")
        runs.append(np.stack([runner.step(o) for o in observations(5)]))
        layer = runner.model.backbone.decoder_layers[0]
        assert (getattr(layer, "_compiled_call_impl", None) is not None) == compiled
    np.testing.assert_allclose(runs[1], runs[0], rtol=0, atol=1e-5)
    assert len(np.unique(runs[0][:, 0])) > 2


@pytest.mark.slow  # compiles 2 graphs per decoder layer with the C++ compiler
def test_compiled_static_decoding_compiles_every_decoder_layer():
    """With a KV cache dynamo compiles each decoder layer apart (it specialises on the layer's index): a
    12-layer decoder needs 24 graphs for the preallocated cache's prefill and step, more than dynamo's
    default limit of 8 per function, past which layers silently run eagerly. compile_modules raises it."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    layers = 12
    model = RoboVLM(PolicyConfig.tiny("paligemma", size={"base": "tiny", "layers": layers}, action_space="discrete",
                                      fwd_pred_next_n=3, window_size=1)).eval()
    model.decoding = "static"  # the CUDA default, here on the CPU
    batch = make_batch(model, b=1)
    del batch["actions"]
    eager = model.predict(batch, normalized=True, use_cache=True)
    model.compile_modules()
    compiled = model.predict(batch, normalized=True, use_cache=True)
    assert counters["stats"]["unique_graphs"] >= 2 * layers
    assert torch.equal(compiled, eager)
    torch._dynamo.reset()


@pytest.mark.parametrize("space,history,decoding", [
    ("continuous", "post", "auto"), ("continuous", "pre", "auto"), ("discrete", "post", "static"),
    ("discrete", "pre", "static"), ("discrete", "post", "dynamic"), ("discrete", "pre", "dynamic")])
def test_a_compiled_runner_compiles_nothing_once_warm(eager_compile, space, history, decoding):
    """torch.compile makes a graph per input shape, and per decoder layer where the layer indexes a KV cache. One
    made during an episode stalls the arm (seconds at real size); past dynamo's recompile limit the rest run
    eagerly without a word. After ``warmup()``: two episodes of window 6 (execute_steps 3: frames also join
    without a prediction), a new instruction of another token count (which warms up again) and its episode
    compile nothing, a third count compiles nothing even in its warm-up, and no limit is hit (``eager_compile``:
    dynamo's tracing and guards, no C++ compiler)."""
    graphs = eager_compile
    model = tiny_model(space, history, use_hand_rgb=True, window_size=6)
    model.decoding = decoding
    runner = PolicyRunner(model, device="cpu", execute_steps=3, compile=True)
    runner.set_instruction("pick up the red block")
    runner.warmup()
    warm = len(graphs)
    for episode in range(2):
        runner.reset()
        for o in observations(9, seed=episode):
            runner.step(o)
    assert warm > 0 and len(graphs) == warm
    first = runner.warm_tokens
    runner.set_instruction("stack the cubes")
    assert runner.warm_tokens != first and runner.warmups == 2  # warmed up for the new count
    rewarm = len(graphs)
    for o in observations(9, seed=2):
        runner.step(o)
    assert len(graphs) == rewarm
    runner.set_instruction("stack the bowls")  # the same count: no warm-up
    assert runner.warmups == 2
    runner.set_instruction("put it down")  # a third count: warmed up, and the lengths that vary are dynamic by now,
    assert runner.warmups == 3 and len(graphs) == rewarm  # so a node meets any number of instructions in its limits


def test_post_cache_runs_the_vlm_on_the_newest_frame_only():
    model = tiny_model()
    calls = []
    model.backbone.language_model.register_forward_hook(lambda mod, args, kwargs, out: calls.append(
        kwargs["inputs_embeds"].shape[0]), with_kwargs=True)
    runner = PolicyRunner(model, device="cpu", execute_steps=1)
    runner.set_instruction("stack the cubes")
    for o in observations(6):
        runner.step(o)
    assert calls == [1] * 6  # one sequence (the new frame) per step, though the window holds up to 4


def test_execute_steps_replans_every_k_steps_and_plays_the_chunk_in_order():
    model = tiny_model()
    runner = PolicyRunner(model, device="cpu", execute_steps=2)
    runner.set_instruction("open the drawer")
    chunks, actions = [], []
    for o in observations(6):
        before = runner.last_chunk
        actions.append(runner.step(o))
        if runner.last_chunk is not before:
            chunks.append(runner.last_chunk)
    assert len(chunks) == 3  # steps 0, 2, 4
    for i, chunk in enumerate(chunks):
        np.testing.assert_allclose(actions[2 * i][:6], chunk[0, :6], atol=1e-6)
        np.testing.assert_allclose(actions[2 * i + 1][:6], chunk[1, :6], atol=1e-6)
    with pytest.raises(ValueError, match="execute_steps"):
        PolicyRunner(model, device="cpu", execute_steps=model.config.fwd_pred_next_n + 1)


def test_temporal_ensembling_weights_older_predictions_first():
    ens = ChunkSchedule(3, ensemble_decay=0.5)
    c0 = np.array([[0.0] * 6 + [1.0], [1.0] * 6 + [1.0], [2.0] * 6 + [-1.0]])
    c1 = np.array([[10.0] * 6 + [-1.0], [20.0] * 6 + [-1.0], [30.0] * 6 + [-1.0]])
    assert ens.wants_chunk()
    ens.add_chunk(c0, ens.request())
    np.testing.assert_allclose(ens.pop(), c0[0])
    assert ens.wants_chunk()  # a chunk every step
    ens.add_chunk(c1, ens.request())
    out = ens.pop()
    w = np.exp(-0.5 * np.arange(2))
    np.testing.assert_allclose(out[:6], (w[0] * 1.0 + w[1] * 10.0) / w.sum())
    assert out[6] == 1.0  # (0.61 * 1 - 0.39 * 1) > 0 -> open


def test_sync_schedule_keeps_only_execute_steps():
    q = ChunkSchedule(3, execute_steps=2)
    q.add_chunk(np.arange(21.0).reshape(3, 7), q.request())
    assert not q.wants_chunk()
    assert q.pop()[0] == 0 and q.pop()[0] == 7 and q.wants_chunk() and q.pop() is None


def test_safety_clamps_scales_and_rejects():
    lim = SafetyLimits(arm_low=(-0.5,) * 6, arm_high=(0.5,) * 6, max_linear=0.1, max_angular=0.2)
    out = lim.apply(np.array([0.3, 0.4, 0.0, 2.0, 0.0, 0.0, 0.3]))
    np.testing.assert_allclose(np.linalg.norm(out[:3]), 0.1)
    np.testing.assert_allclose(out[:3] / np.linalg.norm(out[:3]), [0.6, 0.8, 0.0])  # direction kept
    np.testing.assert_allclose(out[3:6], [0.2, 0.0, 0.0])  # clamped to 0.5, then norm-limited
    assert out[6] == 1.0
    for bad in (np.nan, np.inf):
        with pytest.raises(UnsafeActionError):
            lim.apply(np.array([0, 0, bad, 0, 0, 0, 1.0]))
    with pytest.raises(ValueError):
        SafetyLimits(arm_low=(1.0,) * 6, arm_high=(0.0,) * 6)


def test_runner_actions_respect_limits_and_instruction_rules():
    model = tiny_model()
    lim = SafetyLimits(arm_low=(-0.01,) * 6, arm_high=(0.01,) * 6)
    runner = PolicyRunner(model, device="cpu", limits=lim)
    obs = observations(3)
    with pytest.raises(RuntimeError, match="instruction"):
        runner.step(obs[0])
    with pytest.raises(ValueError, match="empty"):
        runner.set_instruction("   ")
    runner.set_instruction("push the cube")
    for o in obs:
        a = runner.step(o)
        assert np.all(np.abs(a[:6]) <= 0.01) and a[6] in (-1.0, 1.0)
    assert len(runner._window) == 3
    runner.set_instruction("another task")  # a new task restarts the history
    assert len(runner._window) == 0 and runner.schedule.wants_chunk()
    with pytest.raises(ValueError, match="hand_rgb"):
        runner.step({"rgb": obs[0]["rgb"], "state": obs[0]["state"]})
    with pytest.raises(ValueError, match="NaN"):
        runner.step({**obs[0], "state": np.full(7, np.nan)})


@pytest.mark.parametrize("space", ["continuous", "discrete"])
def test_each_frame_goes_through_the_vision_tower_once(space):
    """``pre`` history: once the window slides, every remaining frame is run through the decoder again (its
    position in the sequence changed), but its images are not encoded again: each step encodes only the new
    frame's two camera images, in one call (one batch: one pass's kernels, not two). Counted at the vision
    tower itself."""
    model = tiny_model(space, "pre", use_hand_rgb=True)  # window 4
    encoded = []
    model.backbone.vision_modules[0].register_forward_hook(lambda mod, args, out: encoded.append(len(args[0])))
    runner = PolicyRunner(model, device="cpu", execute_steps=1)
    runner.set_instruction("pick up the red block")
    per_step = []
    for o in observations(9):
        before = len(encoded)
        runner.step(o)
        per_step.append(encoded[before:])
    assert [f.serial for f in runner._window] == list(range(6, 10))  # the window slid (frames 6..9 of 9)
    assert per_step == [[2]] * 9, per_step  # one call of two images per step


def test_reset_gives_the_same_actions_as_a_fresh_runner():
    model = tiny_model(history="pre")
    obs = observations(5)
    runner = PolicyRunner(model, device="cpu", execute_steps=1)
    runner.set_instruction("pick up the red block")
    first = [runner.step(o) for o in obs]
    runner.reset()
    again = [runner.step(o) for o in obs]
    np.testing.assert_allclose(np.stack(first), np.stack(again), atol=1e-6)


def test_bfloat16_runner_matches_float32_closely():
    """The dtype path used on CUDA (bf16 weights and inputs), exercised on the CPU."""
    model = tiny_model()
    obs = observations(4)
    out = {}
    for dtype in ("float32", "bfloat16"):
        runner = PolicyRunner(model if dtype == "float32" else tiny_model(), device="cpu", dtype=dtype,
                              execute_steps=1)
        assert next(runner.model.parameters()).dtype == getattr(torch, dtype)
        runner.set_instruction("pick up the red block")
        out[dtype] = np.stack([runner.step(o) for o in obs])
    assert np.isfinite(out["bfloat16"]).all()
    np.testing.assert_allclose(out["bfloat16"][:, :6], out["float32"][:, :6], atol=0.05)


def chunk_of(*values):
    """[n, 7]: arm values all equal to each value, gripper open."""
    return np.array([[v] * 6 + [1.0] for v in values], dtype=float)




def test_async_schedule_action_by_action():
    s = ChunkSchedule(5, execute_steps=2, execution="async", combine="average")
    s.add_chunk(chunk_of(0, 1, 2, 3, 4), s.request())
    s.pop(), s.pop()
    mark = s.request()
    s.pop()  # executes 2 while the new chunk is computed
    s.add_chunk(chunk_of(10, 11, 12, 13, 14), mark)
    # queue was [3, 4]; new chunk after the executed step: [11, 12, 13, 14]; overlap averaged
    assert [s.pop()[0] for _ in range(4)] == pytest.approx([7, 8, 13, 14])
    assert s.pop() is None  # dry: the caller holds the arm


def test_rtc_keeps_the_committed_prefix_then_eases_into_the_new_chunk():
    s = ChunkSchedule(8, execute_steps=2, execution="async", combine="rtc")
    s.add_chunk(chunk_of(*range(8)), s.request())
    s.pop(), s.pop()
    mark = s.request()
    s.pop(), s.pop()  # two executed while it was computed: delay 2
    s.add_chunk(chunk_of(*range(100, 108)), mark)
    # queue [4..7] vs new [102..105]: 2 committed (delay), then weights 1/3, 2/3; then the new chunk's rest
    got = [s.pop()[0] for _ in range(6)]
    assert got == pytest.approx([4, 5, 6 + (104 - 6) / 3, 7 + 2 * (105 - 7) / 3, 106, 107])


def test_sync_waits_for_the_chunk_and_async_with_newest_equals_sync_without_delay():
    s = ChunkSchedule(5, execute_steps=2)
    mark = s.request()
    assert s.pop() is None  # sync: nothing to execute while the chunk is computed
    s.add_chunk(chunk_of(0, 1, 2, 3, 4), mark)
    assert s.last_delay == 0 and [s.pop()[0] for _ in range(2)] == [0, 1] and s.pop() is None
    rng = np.random.default_rng(0)
    chunks = [np.c_[rng.normal(size=(5, 6)), np.sign(rng.normal(size=5))] for _ in range(6)]
    out = {}
    for execution in ("sync", "async"):
        s, k, actions = ChunkSchedule(5, execute_steps=2, execution=execution), 0, []
        for _ in range(10):
            if s.wants_chunk():
                s.add_chunk(chunks[k], s.request())
                k += 1
            actions.append(s.pop())
        out[execution] = np.array(actions)
    np.testing.assert_array_equal(out["sync"], out["async"])
    with pytest.raises(ValueError, match="chunk_combine"):
        ChunkSchedule(5, execution="async", combine="mean")


def test_a_chunk_computed_for_the_old_instruction_is_never_executed():
    """Real time: a new instruction while a chunk is computed discards the queue at once and that chunk
    when it arrives; lockstep: a chunk still waiting out its simulated delay is discarded too."""
    from robovlm_ros.runtime.control import ChunkedControl

    model = tiny_model(fwd_pred_next_n=5)
    runner = PolicyRunner(model, device="cpu")
    runner.set_instruction("pick up the red block")
    control = ChunkedControl(runner, execution="async", execute_steps=2)
    obs = observations(8)
    action, job = control.control_step(obs[0])
    assert action is None and job.owed  # the first step waits for its own chunk
    assert control.deliver(job, control.compute(job)) is not None
    action, job = control.control_step(obs[1])
    assert action is not None and job is not None and not job.owed  # 2 executed: the next chunk is due
    action, next_job = control.control_step(obs[2])
    assert action is not None and next_job is None  # the queue runs while it is computed
    chunk = control.compute(job)
    control.clear("pick up the blue block")
    assert len(control.schedule) == 0  # at once, before the chunk arrives
    assert control.deliver(job, chunk) is None and len(control.schedule) == 0
    action, job = control.control_step(obs[3])
    assert action is None and job.owed
    control.compute(job)
    assert runner.instruction == "pick up the blue block"  # the worker restarted the runner with it

    lockstep = ChunkedControl(runner, execution="sync", execute_steps=2, simulated_delay_steps=2)
    assert lockstep.lockstep_step(obs[4]) is None  # requested: usable 2 steps later
    assert lockstep.lockstep_step(obs[5]) is None
    lockstep.clear("pick up the green block")
    assert lockstep.lockstep_step(obs[6]) is None and len(lockstep.schedule) == 0  # the old chunk is gone
    assert lockstep.starved == 3 and runner.instruction == "pick up the green block"


@pytest.mark.parametrize("space,history", [("continuous", "post"), ("discrete", "pre")])
def test_no_chunk_comes_from_observations_older_than_a_warm_up(eager_compile, space, history):
    """Compiled (or on CUDA), a new instruction of another token count warms the runner up in the worker before
    the episode's first chunk. The job that brought the instruction computes nothing, since its observations
    are as old as the warm-up; the next control step asks again with its own and those seen meanwhile
    (discrete ``pre``: frames before the episode's first chunk carry no actions and stay out). A warm-up that
    fails leaves no blank frame in the new episode's window."""
    from robovlm_ros.runtime.control import ChunkedControl

    runner = PolicyRunner(tiny_model(space, history, fwd_pred_next_n=5), device="cpu", compile=True)
    runner.set_instruction("pick up the red block")
    runner.warmup()
    control = ChunkedControl(runner, execution="async", execute_steps=2)
    obs = observations(6)
    control.clear("stack the cubes")
    action, job = control.control_step(obs[0])
    assert action is None and job.owed
    assert control.compute(job) is None and runner.warmups == 2 and runner.instruction == "stack the cubes"
    for o in obs[1:4]:  # control steps while the worker warmed up: the arm holds
        assert control.control_step(o) == (None, None)
    assert control.deliver(job, None) is None and control.schedule.wants_chunk()
    action, job = control.control_step(obs[4])
    assert action is None and job.observations == obs[1:5]
    chunk = control.compute(job)
    assert chunk is not None and np.isfinite(chunk).all()
    control.deliver(job, chunk)
    # obs[0] predates the warm-up and never joined
    assert len(runner._window) == (1 if history == "pre" else 4)
    action, job = control.control_step(obs[5])
    assert action is not None

    predict = runner.predict_chunk
    calls = []

    def out_of_memory_at_the_third(observation):
        calls.append(observation)
        if len(calls) == 3:
            raise RuntimeError("CUDA out of memory")
        return predict(observation)

    runner.predict_chunk = out_of_memory_at_the_third
    with pytest.raises(RuntimeError, match="out of memory"):
        runner.set_instruction("put it down")  # another count: warms up, and fails in it
    assert runner.instruction == "put it down" and len(runner._window) == 0 and len(calls) == 3


@pytest.mark.parametrize("space,history", [("continuous", "post"), ("discrete", "pre")])
def test_a_failed_prediction_leaves_the_window_as_it_was(space, history):
    """A prediction that fails (out of memory, say) takes its frame out of the window again: in discrete ``pre``
    history a frame without actions to carry would make every later prediction fail."""
    runner = PolicyRunner(tiny_model(space, history, fwd_pred_next_n=5), device="cpu", execute_steps=2)
    runner.set_instruction("pick up the red block")
    obs = observations(4)
    runner.step(obs[0])
    runner.step(obs[1])
    predict, failures = runner.policy.predict, []

    def out_of_memory_once(window, text):
        if not failures:
            failures.append(len(window))
            raise RuntimeError("CUDA out of memory")
        return predict(window, text)

    runner.policy.predict = out_of_memory_once
    with pytest.raises(RuntimeError, match="out of memory"):
        runner.predict_chunk(obs[2])
    assert failures == [3] and len(runner._window) == 2
    assert np.isfinite(runner.predict_chunk(obs[3])).all() and len(runner._window) == 3


def test_a_failed_inference_does_not_leave_the_schedule_waiting_forever():
    from robovlm_ros.runtime.control import ChunkedControl

    runner = PolicyRunner(tiny_model(fwd_pred_next_n=5), device="cpu")
    runner.set_instruction("pick up the red block")
    obs = observations(3)
    for lockstep in (True, False):
        control = ChunkedControl(runner, execution="async", execute_steps=2)
        bad = {**obs[0], "state": np.full(7, np.nan)}
        with pytest.raises(ValueError, match="NaN"):
            if lockstep:
                control.lockstep_step(bad)
            else:
                _, job = control.control_step(bad)
                try:
                    control.compute(job)
                finally:  # what the node's worker does with a failed job
                    control.deliver(job, None)
        assert control.schedule.wants_chunk()  # the next step asks again
        action = control.lockstep_step(obs[1]) if lockstep else control.deliver(*_job_and_chunk(control, obs[1]))
        assert action is not None and np.isfinite(action).all()


def _job_and_chunk(control, observation):
    _, job = control.control_step(observation)
    return job, control.compute(job)


def test_step_profile_counts_one_steps_ops():
    # bench --profile: what a step launches is what the GPU run is judged by (launch-bound or not)
    from robovlm_ros.runtime.latency import step_profile

    calls = {}
    for layers, steps in ((2, 2), (2, 4), (6, 2)):
        model = RoboVLM(PolicyConfig.tiny("llava", size={"base": "tiny", "layers": layers}, window_size=2,
                                          use_state=True))
        prof = step_profile(model, steps, device="cpu", dtype="float32")
        calls[layers, steps] = prof["aten_calls_per_step"]
        assert prof["device_busy_ms_per_step"] is None and prof["kernel_launches_per_step"] == 0  # no GPU here
        top = [op["ms_per_step"] for op in prof["top_cpu"]]
        assert len(top) == 10 and top == sorted(top, reverse=True)
    assert calls[2, 4] == pytest.approx(calls[2, 2], rel=0.05)  # per step, whatever the number profiled
    assert calls[6, 2] > 1.5 * calls[2, 2]  # three times the layers: more ops in each step
