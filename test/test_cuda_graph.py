"""What a CUDA graph replays must not read device values on the host (model/cuda_graph.py). Capturing needs a
GPU (test_cuda.py); here, on the CPU:

* whether a step is fit for a graph, with the same scan the GPU path runs before it captures: every op that
  would sync with the host or copy host data in is named;
* ``recorded_graphs``: a CPU stand-in for capture. It records the aten ops of the captured call and replays
  them on the same tensors, as a CUDA graph replays its kernels on the same memory, so anything the call
  computed on the host at capture (a Python number, a shape-dependent branch on data) stays baked in, as it
  would on the GPU. It runs CapturedFunction's whole path (scan, capture, check, replay) and the runner's
  graphed step; what only a GPU shows (capture errors, kernels' numerics) is test_cuda.py's.
"""
import contextlib
import logging

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import robovlm_ros.model.cuda_graph as cuda_graph
from conftest import ALL_FAMILIES, make_batch
from robovlm_ros.model import PolicyConfig, RoboVLM
from robovlm_ros.model.cuda_graph import CapturedFunction, host_syncs
from robovlm_ros.model.static_decoding import GreedyStepper, static_cache, supports_static_decoding
from robovlm_ros.runtime import PolicyRunner


class _RecordedGraph:
    """torch.cuda.CUDAGraph's stand-in: the ops recorded at capture, replayed on the same tensors, on the
    device it was captured on (as cudaGraphLaunch needs: a graph of cuda:1's kernels on cuda:0's stream fails)."""

    def __init__(self):
        self.ops, self.addresses, self.device = [], [], None

    def replay(self):
        assert _current_device and _current_device[-1] == self.device, \
            f"captured on {self.device}, replayed on {_current_device[-1:] or 'the current device'}"
        for (func, args, kwargs, out), addresses in zip(self.ops, self.addresses):
            for t, ptr in addresses:  # a GPU graph would read the old, freed memory
                assert t.data_ptr() == ptr, f"{func} replayed over a tensor that moved since the capture"
            new = func(*args, **kwargs)
            for o, n in zip(*((x if isinstance(x, (tuple, list)) else (x,)) for x in (out, new))):
                if isinstance(o, torch.Tensor) and o.data_ptr() != n.data_ptr():  # not in place, not a view
                    o.copy_(n)


_current_device: list[torch.device] = []  # torch.cuda.device's stand-in: the devices entered


@contextlib.contextmanager
def _device(device):
    _current_device.append(torch.device(device))
    try:
        yield
    finally:
        _current_device.pop()


class _Record(TorchDispatchMode):
    def __init__(self, graph: _RecordedGraph):
        super().__init__()
        assert _current_device, "a graph captured on the thread's current device, not its inputs'"
        self.graph = graph
        graph.device = _current_device[-1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.graph.ops.append((func, args, kwargs or {}, out))
        self.graph.addresses.append(list(_tensor_addresses(args, kwargs or {})))
        return out


def _tensor_addresses(args, kwargs):
    """(tensor, data_ptr) of every tensor an op reads, nested lists included."""
    stack = [*args, *kwargs.values()]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            yield x, x.data_ptr()
        elif isinstance(x, (list, tuple)):
            stack.extend(x)


@pytest.fixture
def recorded_graphs(monkeypatch):
    class Stream:
        def wait_stream(self, other):
            pass

    monkeypatch.setattr(cuda_graph, "on_cuda", lambda device: True)
    monkeypatch.setattr(cuda_graph, "_disabled", None)
    monkeypatch.setattr(torch.cuda, "device", _device)
    monkeypatch.setattr(torch.cuda, "set_stream", lambda stream: None)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _RecordedGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda graph, **options: _Record(graph))


# Qwen2-VL's vision tower reads its grid and sequence lengths on the host (transformers' vision_utils): its
# step runs eagerly on CUDA, with a warning that names these ops (docs/PERFORMANCE.md)
EAGER_VISION = ("qwen2_vl", "qwen2_5_vl")


def _line(fn) -> int:
    return fn.__code__.co_firstlineno + 1  # the one-line body of the planted functions below


def test_the_scan_names_every_kind_of_host_sync_and_its_line():
    x = torch.randn(4, 3)

    def item(x):
        return x * x.sum().item()

    def boolean_index(x):
        return x[x > 0].sum() + x

    def nonzero(x):
        return x + torch.nonzero(x > 0).shape[0]

    def host_data(x):
        return x + torch.tensor([1.0, 2.0, 3.0])

    def repeats(x):
        return x.repeat_interleave(torch.tensor([1, 2, 1, 1]), dim=0)

    def if_tensor(x):
        return x * 2 if (x > 5).any() else x

    planted = {item: "_local_scalar_dense", boolean_index: "boolean indexing", nonzero: "nonzero",
               host_data: "a tensor made from host data", repeats: "repeat_interleave with tensor repeats",
               if_tensor: "_local_scalar_dense"}
    for fn, what in planted.items():
        out, found = host_syncs(fn, x)
        assert torch.equal(out, fn(x))  # the scanned call computes the same
        assert f"{what} at test/test_cuda_graph.py:{_line(fn)}" in found, (fn.__name__, found)


def test_the_scan_names_host_data_reaching_the_device():
    """From pageable host memory a copy waits for the device, which fails a capture, a one-value copy as
    well; a tensor made from Python data on the device, and a host index into device data, are such copies
    (the meta device stands in for the GPU here)."""
    x = torch.randn(4, 3, device="meta")

    def scalar_up(x):
        return x * torch.tensor(2.0).to(x.device)

    def rows_up(x):
        return x + torch.ones(3).to(x.device)

    def made_there(x):
        return x * torch.tensor(2.0, device=x.device)

    def host_index(x):
        return x[torch.tensor([0, 2])]

    planted = {scalar_up: "a copy from host memory", rows_up: "a copy from host memory",
               made_there: "a tensor made from host data", host_index: "host data read by a device op"}
    for fn, what in planted.items():
        assert f"{what} at test/test_cuda_graph.py:{_line(fn)}" in host_syncs(fn, x)[1], fn.__name__
    # a Python number, or a one-value host tensor, is a kernel argument (Gemma scales its embeddings so)
    assert host_syncs(lambda x: x * 2.0 + x.new_ones(3) * torch.tensor(3.0), x)[1] == []


def test_the_scan_passes_what_a_graph_can_replay():
    def clean(x, w, slot):
        y = torch.softmax(x @ w, -1).cumsum(-1)
        y = torch.where(y > 0.5, y, -y) + torch.arange(3)  # arange from shapes, not from data
        return y.index_copy(0, slot, y[:1] * 2), x.new_ones(2).repeat_interleave(3)

    args = (torch.randn(4, 3), torch.randn(3, 3), torch.tensor([2]))
    assert host_syncs(clean, *args)[1] == []


def _frame_args(model, b=1):
    batch = make_batch(model, b=b)
    return (batch["rgb"][:, 0], batch["hand_rgb"][:, 0], batch["input_ids"], batch["attention_mask"],
            batch["state"][:, 0]), batch


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_the_continuous_steps_vlm_pass_is_fit_for_a_cuda_graph(family):
    """The cached continuous step's VLM pass (RoboVLM.frame_action_features, what the GPU replays) has no
    host sync in any family but Qwen2-VL's two, with the family's own image markers in the sequence, and
    equals action_features (transformers' own mask building) frame by frame."""
    model = RoboVLM(PolicyConfig.tiny(family, use_hand_rgb=True, use_image_start_end=True,
                                      image_markers="family")).eval()
    args, batch = _frame_args(model, b=2)
    with torch.no_grad():
        feats, found = host_syncs(model.frame_action_features, *args)
        first = {k: v[:, :1] for k, v in batch.items() if k in ("rgb", "hand_rgb", "state")}
        first.update(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        reference = model.action_features(first)[:, 0]
    assert feats.shape == (2, model.config.latent_num, model.backbone.hidden_size)
    torch.testing.assert_close(feats, reference, rtol=1e-5, atol=1e-5)
    assert batch["attention_mask"].min() == 0  # one instruction is padded: the mask is not trivially all ones
    if family in EAGER_VISION:
        assert found and all("vision" in f or "backbones.py" in f for f in found), found
    else:
        assert found == [], found


def test_a_sliding_window_decoder_keeps_its_own_mask():
    """The explicit 4-D mask is full causal attention: a decoder with sliding-window layers gets the 2-D mask
    (its own per-layer masks; the step then runs eagerly on CUDA, the scan says why)."""
    config = PolicyConfig.tiny("qwen2_vl")
    config.backbone_config["text_config"].update(use_sliding_window=True, sliding_window=8, max_window_layers=1,
                                                 layer_types=None)
    model = RoboVLM(config)
    mask = torch.ones(2, 6, dtype=torch.long)
    assert not model.backbone.full_attention
    assert model.decoder_mask(mask, 4, explicit=True) is mask
    assert RoboVLM(PolicyConfig.tiny("qwen2_vl")).decoder_mask(mask, 4, explicit=True).shape == (2, 1, 6, 6)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_the_vlm_pass_is_fit_for_a_graph_with_a_bidirectional_prefix(attn):
    """PaliGemma's prefix-LM option and both attention implementations build their 4-D masks from shapes."""
    model = RoboVLM(PolicyConfig.tiny("paligemma", prefix_attention="bidirectional")).eval()
    model.backbone.hf.set_attn_implementation(attn)
    args, _ = _frame_args(model)
    with torch.no_grad():
        assert host_syncs(model.frame_action_features, *args)[1] == []


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_the_decoding_prefix_is_fit_for_a_cuda_graph(family):
    """Discrete post decoding's prefix (images encoded, [BOS] images text state into the preallocated cache:
    StaticGreedyDecoder._frame_prefix, what the GPU replays before the tokens) has no host sync but Qwen's."""
    from robovlm_ros.model.static_decoding import StaticGreedyDecoder

    model = RoboVLM(PolicyConfig.tiny(family, action_space="discrete", use_hand_rgb=True, use_image_start_end=True,
                                      image_markers="family")).eval()
    if not supports_static_decoding(model.backbone):
        pytest.skip(f"{family} decodes into the growing cache")
    args, batch = _frame_args(model, b=2)
    decoder = StaticGreedyDecoder(model)
    with torch.no_grad():
        first = {k: v[:, :1] if k in ("rgb", "hand_rgb", "state") else v for k, v in batch.items()}
        decoder.frames(first, 3)  # builds the stepper for this shape
        (hidden, mask), found = host_syncs(decoder._frame_prefix, *args)
    assert hidden.shape == (2, 1, model.backbone.hidden_size) and mask.shape[0] == 2
    if family in EAGER_VISION:
        assert found and all("vision" in f or "backbones.py" in f for f in found), found
    else:
        assert found == [], found


@pytest.mark.parametrize("family", [f for f in ALL_FAMILIES if f not in EAGER_VISION])
def test_on_a_device_the_graphed_passes_bring_no_host_data_in(family, monkeypatch):
    """On the CPU no copy between host and device can show; with the policy on the meta device standing in for
    the GPU (shapes without data), the passes the GPU replays as graphs (a frame's VLM pass, the decoding
    prefix and step) make no tensor from host data, copy none in and read no host tensor."""
    import robovlm_ros.model.static_decoding as static_decoding
    from robovlm_ros.model.static_decoding import StaticGreedyDecoder

    monkeypatch.setattr(static_decoding, "cache_precision", lambda device: None)  # meta has no autocast
    found = {}
    for space in ("continuous", "discrete"):
        model = RoboVLM(PolicyConfig.tiny(family, action_space=space, use_hand_rgb=True, use_image_start_end=True,
                                          image_markers="family")).eval()
        args, batch = _frame_args(model, b=2)
        model.to("meta")
        args = tuple(a.to("meta") for a in args)
        batch = {k: v.to("meta") if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.no_grad():
            if space == "continuous":
                model.frame_action_features(*args)
                found["frame pass"] = host_syncs(model.frame_action_features, *args)[1]
            elif supports_static_decoding(model.backbone):
                decoder = StaticGreedyDecoder(model)
                decoder.frames({k: v[:, :1] if k in ("rgb", "hand_rgb", "state") else v for k, v in batch.items()}, 3)
                found["decoding prefix"] = host_syncs(decoder._frame_prefix, *args)[1]
                found["decoding step"] = host_syncs(decoder._stepper._step)[1]
    assert "frame pass" in found and found == {k: [] for k in found}, found


@pytest.mark.parametrize("family", EAGER_VISION)
def test_on_a_device_qwens_passes_after_its_images_bring_no_host_data_in(family, monkeypatch):
    """Qwen's vision tower reads its grid on the host, so on CUDA its images are encoded eagerly and the rest
    is graphed: the frame's decoder pass and the decoding prefix's pass into the cache over given image
    tokens, and the decoding step. On the meta device standing in for the GPU they bring no host data in."""
    import robovlm_ros.model.static_decoding as static_decoding
    from robovlm_ros.model.static_decoding import StaticGreedyDecoder

    monkeypatch.setattr(static_decoding, "cache_precision", lambda device: None)  # meta has no autocast
    found = {}
    for space in ("continuous", "discrete"):
        model = RoboVLM(PolicyConfig.tiny(family, action_space=space, use_hand_rgb=True)).eval()
        (rgb, hand, ids, am, state), _ = _frame_args(model, b=2)
        with torch.no_grad():
            images = model.frame_images(rgb, hand)  # on the CPU: the part that stays eager
        model.to("meta")
        ids, am, state = ids.to("meta"), am.to("meta"), state.to("meta")
        cameras = [x.to("meta") for tokens_and_row in images for x in tokens_and_row]
        with torch.no_grad():
            if space == "continuous":
                found["frame decoder pass"] = host_syncs(
                    lambda *a: model.frame_action_features(None, None, *a[:3], list(zip(a[3::2], a[4::2]))),
                    ids, am, state, *cameras)[1]
            else:
                decoder = StaticGreedyDecoder(model)
                embeds, _, _ = model.sequences(model.single_frames(None, None, ids, am, state), None,
                                               list(zip(cameras[::2], cameras[1::2])))
                stepper = decoder._stepper_for(embeds.shape[0], embeds.shape[1], 3, embeds.dtype, embeds.device)
                decoder._start(*decoder._frame_prefix_after_images(ids, am, state, *cameras))  # the cache's first fill
                found["prefix pass"] = host_syncs(decoder._frame_prefix_after_images, ids, am, state, *cameras)[1]
                found["decoding step"] = host_syncs(stepper._step)[1]
    assert len(found) == 3 and found == {k: [] for k in found}, found


class _OpNames(TorchDispatchMode):
    """The ops a call runs and the shapes of their tensor outputs."""

    def __init__(self):
        super().__init__()
        self.names, self.shapes = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.names.append(func._schema.name.split("::")[-1])
        self.shapes += [tuple(o.shape) for o in (out if isinstance(out, (tuple, list)) else (out,))
                        if isinstance(o, torch.Tensor)]
        return out


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_the_decoding_step_is_fit_for_a_cuda_graph(family):
    """GreedyStepper's step (embed -> decoder over a preallocated cache -> argmax over the bins) is what the
    GPU replays per token; it too must stay free of host syncs."""
    model = RoboVLM(PolicyConfig.tiny(family, action_space="discrete", use_image_start_end=True)).eval()
    if not supports_static_decoding(model.backbone):
        pytest.skip(f"{family} decodes into the growing cache")
    hidden = model.backbone.hidden_size
    length, n = 12, 5
    stepper = GreedyStepper(model, static_cache(model, length + n), 1, length + n, n, torch.float32,
                            torch.device("cpu"), use_graph=False)
    with torch.no_grad():
        embeds, mask = torch.randn(1, length, hidden), torch.ones(1, length, dtype=torch.long)
        model.extend(embeds, model.decoder_mask(mask, length, kv_len=length + n), stepper.cache)
        stepper.start(torch.tensor([model.action_tokenizer.token_ids[0]]), mask)
        found = host_syncs(stepper._step)[1]
        with _OpNames() as ops:
            stepper._step()
    assert found == [], found
    assert stepper.index.item() == 3  # the steps ran: they wrote the second and third tokens
    # the additive mask goes to every layer as is: no layer turns a boolean mask into one (three kernels per
    # layer and token when sdpa gets a boolean mask)
    assert "where" not in ops.names and "scalar_tensor" not in ops.names, ops.names
    # the logits of the action bins only, not of the whole vocabulary (a fifth of PaliGemma's weight bytes)
    vocab = model.backbone.lm_head.weight.shape[0]
    assert isinstance(model.backbone.lm_head, torch.nn.Linear) and vocab > model.config.n_bins
    assert not any(shape and shape[-1] == vocab for shape in ops.shapes), "the whole vocabulary's logits"


@pytest.mark.parametrize("n", [2, 3, 7])
def test_the_decoding_steps_capture_stays_inside_the_cache(recorded_graphs, n):
    """Capturing runs the step a few times from the start (warm-up, then the capture itself): never past the
    n - 1 steps the cache and the token buffer have room for (on CUDA an index past them is a device-side
    assert that ends the process's CUDA context). The graph is kept and decodes what the eager step decodes."""
    model = RoboVLM(PolicyConfig.tiny("paligemma", action_space="discrete")).eval()
    length = 12
    runs = {}
    for graphs in (False, True):
        stepper = GreedyStepper(model, static_cache(model, length + n), 1, length + n, n, torch.float32,
                                torch.device("cpu"), use_graph=graphs)
        torch.manual_seed(0)
        embeds, mask = torch.randn(1, length, model.backbone.hidden_size), torch.ones(1, length, dtype=torch.long)
        with torch.no_grad():
            hidden, _ = model.extend(embeds, model.decoder_mask(mask, length, kv_len=length + n), stepper.cache)
            stepper.start(stepper.first_token(hidden), mask)
            if stepper.use_graph:
                stepper.capture()
                assert stepper.graph is not None, "the capture failed"
            runs[graphs] = stepper.decode_rest()
    assert torch.equal(runs[True], runs[False]) and runs[True].shape == (1, n)


def test_a_captured_function_replays_only_what_follows_its_inputs(recorded_graphs):
    x = torch.randn(64, 64)
    syncs = CapturedFunction(lambda x: x * x.sum().item(), "sync")
    baked = CapturedFunction(lambda x: x + float(np.asarray(x).mean()), "baked")  # host value, no sync op
    for _ in range(3):
        torch.testing.assert_close(syncs(x), x * x.sum())
        y = torch.randn(16)
        torch.testing.assert_close(baked(y), y + float(y.mean()))
    assert syncs.replays == 0 and "_local_scalar_dense at test/test_cuda_graph.py" in syncs.refused
    assert baked.replays == 0 and "something else" in baked.refused
    lin = torch.nn.Linear(64, 64)
    graphed = CapturedFunction(lambda x: torch.tanh(lin(x)), "linear", guard=lambda: (lin.weight.data_ptr(),))
    with torch.no_grad():
        for i in range(4):
            y = torch.randn(8, 64)
            torch.testing.assert_close(graphed(y), torch.tanh(lin(y)))
            if i == 1:  # new weights at a new address: captured again, not the old graph replayed
                lin.weight.data = lin.weight.data * -2.0
    assert graphed.refused is None and graphed.replays == 4


@pytest.mark.parametrize("family", ["paligemma", "smolvlm", "kosmos2", "qwen2_vl", "qwen2_5_vl"])
def test_the_runners_graphed_step_acts_as_its_eager_step(recorded_graphs, family):
    """The cached continuous step with its VLM pass replayed (recorded) equals the eager runner over 9 steps,
    the window filling; Qwen's whole pass is refused with the reason: its images are encoded eagerly and the
    decoder's pass over them replayed."""
    from test_runtime import observations, tiny_model

    actions, reports = {}, {}
    for graphs in (False, True):
        runner = PolicyRunner(tiny_model(family=family, use_hand_rgb=True, window_size=4), device="cpu",
                              execute_steps=1, cuda_graphs=graphs)
        runner.set_instruction("pick up the red block")
        actions[graphs] = np.stack([runner.step(o) for o in observations(9)])
        reports[graphs] = runner.policy.graph_report()
    np.testing.assert_allclose(actions[True], actions[False], rtol=0, atol=1e-6)
    assert len(np.unique(actions[True][:, 0])) > 3  # actions vary: the comparison is not trivial
    assert reports[False]["frame_replays"] == 0
    if family in EAGER_VISION:  # the images eagerly, the decoder's pass over them replayed from the 2nd step
        assert reports[True]["frame_replays"] == 0 and "vision_utils.py" in reports[True]["frame_refused"]
        assert "vision_utils.py" in reports[True]["images_refused"]
        assert reports[True]["frame_decoder_replays"] == 8 and reports[True]["frame_decoder_refused"] is None
    else:
        assert reports[True]["frame_replays"] == 9 and reports[True]["frame_refused"] is None
        assert reports[True]["frame_decoder_captures"] == 0
    # the head: a graph per window length (1 to 4 while the window fills), every step replayed
    assert reports[True]["head_replays"] == 9 and reports[True]["head_refused"] is None


@pytest.mark.parametrize("family", ["paligemma", "smolvlm", "qwen2_vl"])
def test_graphed_discrete_decoding_acts_as_the_growing_cache(recorded_graphs, family):
    """Discrete post decoding into the preallocated cache with its prefix replayed (recorded) gives the
    growing cache's tokens, over calls with other inputs in between. Qwen's whole prefix is refused (its
    vision tower): its images are encoded eagerly and the decoder's pass over them into the cache replayed."""
    from test_runtime import tiny_model

    model = tiny_model("discrete", family=family, use_hand_rgb=True).eval()
    for seed in (0, 1, 0):
        batch = make_batch(model, b=1, seed=seed)
        del batch["actions"]
        model.decoding = "dynamic"
        growing = model.predict(batch, normalized=True)
        model.decoding = "static"
        graphed = model.predict(batch, normalized=True)
        assert torch.equal(graphed, growing)
        assert len(torch.unique(graphed)) > 5
    decoder = model._static_decoder
    if family in EAGER_VISION:
        assert decoder._prefix.replays == 0 and "vision_utils.py" in decoder._prefix.refused
        assert decoder._prefix_decoder.replays == 2 and decoder._prefix_decoder.refused is None
    else:
        assert decoder._prefix.replays == 3 and decoder._prefix.refused is None
        assert decoder._prefix_decoder.captures == 0
    assert decoder._stepper.graph is not None  # the decoding step replayed too, not eager


@pytest.mark.parametrize("history", ["post", "pre"])
def test_moved_weights_are_never_read_through_an_old_decoding_graph(recorded_graphs, history):
    """After the weights move (here float64 and back: every tensor at a new address, as ``.cpu().cuda()``
    does) no graph of the old addresses replays: the stand-in fails a replay over a moved tensor, as a GPU
    would read freed memory. The decoding step's graph is captured anew and decodes what it did."""
    from test_runtime import observations, tiny_model

    model = tiny_model("discrete", history, family="paligemma", use_hand_rgb=True).eval()
    model.decoding = "static"
    runner = PolicyRunner(model, device="cpu", execute_steps=1)
    runner.set_instruction("pick up the red block")
    obs = observations(3)
    before = [runner.predict_chunk(o) for o in obs[:3]]
    stepper = (runner.policy._stepper if history == "pre" else model._static_decoder._stepper)
    assert stepper.graph is not None
    held = [p.data for p in runner.model.parameters()]  # the old storages stay: new addresses for the new ones
    runner.model.to(torch.float64).to(torch.float32)
    runner.reset()
    after = [runner.predict_chunk(o) for o in obs[:3]]
    np.testing.assert_array_equal(np.stack(after), np.stack(before))
    stepper = (runner.policy._stepper if history == "pre" else model._static_decoder._stepper)
    assert stepper.graph is not None  # captured again over the new addresses, and replayed
    del held


def test_the_graph_guard_sees_any_part_of_the_policy_move():
    """A graph is bound to the addresses of every weight it reads: moving one part alone (a user's
    ``policy.head.to(...)``) changes the guard, so graphs over the old addresses are dropped. Every module of
    the policy's own, each vision module, the embeddings, every decoder and vision encoder layer, the LM head;
    and a part replaced after the guard was first read."""
    import copy

    from test_runtime import tiny_model

    model = tiny_model("continuous", family="paligemma", head="lstm", use_hand_rgb=True, resampler_latents=4,
                       use_image_start_end=True, size={"base": "tiny", "layers": 3})
    bb = model.backbone
    vision_layers = [m for m in bb.vision_modules[0].modules() if isinstance(m, torch.nn.ModuleList)][0]
    parts = {**{name: m for name, m in model.named_children() if name != "backbone"},
             **{f"vision module {i}": m for i, m in enumerate(bb.vision_modules)}, "embeddings": bb.embed_tokens,
             **{f"decoder layer {i}": m for i, m in enumerate(bb.decoder_layers)},
             **{f"vision layer {i}": m for i, m in enumerate(vision_layers)}, "lm head": bb.lm_head}
    parts = {name: m for name, m in parts.items() if next(m.parameters(), None) is not None}
    assert {"head", "vision module 1", "state_arm", "decoder layer 1", "vision layer 1"} <= parts.keys(), sorted(parts)
    held = [p.data for p in model.parameters()]  # the old storages stay: the new ones get other addresses
    for name, module in [*parts.items(), *((n, None) for n, _ in model.named_parameters(recurse=False))]:
        before = model.graph_guard()
        if module is None:
            getattr(model, name).data = getattr(model, name).data.clone()
        else:
            module.to(torch.float64).to(torch.float32)
        assert model.graph_guard() != before, name
        held += [p.data for p in model.parameters()]  # nor can a later move land where this one did
    assert len(parts) > 8
    before = model.graph_guard()  # a load with assign: new Parameter objects in the modules
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
    assert model.graph_guard() != before
    before = model.graph_guard()  # a part replaced by a copy: other weights, in other places
    model.head = copy.deepcopy(model.head)
    assert model.graph_guard() != before
    before = model.graph_guard()
    torch.nn.Sequential(torch.nn.Linear(2, 2))  # a module assigned elsewhere: nothing of the policy's changed
    assert model.graph_guard() == before
    samples = model._guard_slots  # an eager pass (transformers slices its layer list: a new ModuleList)
    with torch.no_grad():
        model.action_features(make_batch(model, b=1))
    model.graph_guard()
    assert model._guard_slots is samples  # not looked up again (0.6 ms at real size, against 10 us)
    del held


def test_the_guards_module_hook_leaves_other_modules_alone():
    """graph_guard's registration hook sees every module assignment in the process: one whose class defines
    ``__eq__`` and no ``__hash__`` (a dataclass module) still builds."""
    import dataclasses

    @dataclasses.dataclass(eq=True)
    class Unhashable(torch.nn.Module):
        width: int = 2

        def __post_init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(self.width, self.width)

    assert Unhashable().inner.in_features == 2


def test_a_failed_capture_turns_graphs_off_and_leaves_the_thread_on_its_stream(recorded_graphs, monkeypatch,
                                                                              caplog):
    """torch.cuda.graph ends a capture before it leaves the capture's stream: when ending fails (an op the
    scan missed), the thread stays on the side stream and PyTorch may stay mid-capture. The thread gets its
    stream back, the call runs eagerly and no graph is captured or replayed any more in the process, which
    the log says once, as an error; the policy still computes what it should."""
    from test_runtime import observations, tiny_model

    current = {"stream": "main"}  # the thread's current stream

    class Stream:
        def __init__(self, name="side"):
            self.name = name

        def wait_stream(self, other):
            pass

    @contextlib.contextmanager
    def stream(s):  # torch.cuda.stream: current for the block, the previous one restored after it
        previous, current["stream"] = current["stream"], s.name
        yield
        current["stream"] = previous

    class FailingCapture:  # torch.cuda.graph whose capture_end raises in __exit__, before its stream is left
        def __init__(self, graph, stream=None, **options):
            self.stream = stream

        def __enter__(self):
            current["stream"] = self.stream.name

        def __exit__(self, *exc):
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: Stream(current["stream"]))
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.cuda, "set_stream", lambda s: current.__setitem__("stream", s.name))
    monkeypatch.setattr(torch.cuda, "graph", FailingCapture)
    lin = torch.nn.Linear(8, 8)
    graphed = CapturedFunction(lambda x: torch.tanh(lin(x)), "a step")
    x = torch.randn(2, 8)
    with torch.no_grad(), caplog.at_level(logging.ERROR, logger="robovlm_ros.model.cuda_graph"):
        torch.testing.assert_close(graphed(x), torch.tanh(lin(x)))
        assert current["stream"] == "main"
        assert "capture failed" in graphed.refused and cuda_graph._disabled is not None
        runner = PolicyRunner(tiny_model("discrete", family="paligemma", use_hand_rgb=True), device="cpu",
                              execute_steps=1)
        runner.set_instruction("pick up the red block")
        actions = [runner.step(o) for o in observations(3)]
    assert runner.model._static_decoder is None or runner.model._static_decoder._stepper.graph is None
    assert all(v == 0 for k, v in runner.policy.graph_report().items() if k.endswith(("_replays", "_captures")))
    assert len(np.unique(np.stack(actions)[:, 0])) > 1
    assert sum("CUDA graphs are off" in r.message for r in caplog.records) == 1


def test_decodings_at_a_new_length_every_call_capture_no_step_graph(recorded_graphs, monkeypatch):
    """``model.predict`` with ``pre`` history and no given actions decodes every frame of the window at another
    length: a step graph per call would cost a capture each (a device sync, warm-ups, the check's decodings)
    and never replay. The step is captured at the second call with one shape (teacher-forced windows, as in
    validation), then replayed; the tokens are the growing cache's throughout."""
    from test_runtime import tiny_model

    real, steps = cuda_graph.capture, []

    def counted(fn, device, warmups=2):
        steps.extend([fn.__name__] if fn.__name__ == "_step" else [])
        return real(fn, device, warmups)

    monkeypatch.setattr(cuda_graph, "capture", counted)
    model = tiny_model("discrete", "pre", family="paligemma", use_hand_rgb=True, window_size=3).eval()
    batch = make_batch(model, b=1)
    free = {k: v for k, v in batch.items() if k != "actions"}
    for b, captures in ((batch, 0), (batch, 1), (batch, 1), (free, 1), (free, 1)):
        model.decoding = "dynamic"
        growing = model.predict(b, normalized=True)
        model.decoding = "static"
        assert torch.equal(model.predict(b, normalized=True), growing)
        assert len(steps) == captures
        if b is batch and captures:  # the teacher-forced shape's graph kept and replayed
            assert model._static_decoder._stepper.graph is not None


def test_compile_modes_that_capture_graphs_of_their_own_are_refused(monkeypatch):
    """torch.compile's reduce-overhead / max-autotune capture CUDA graphs themselves, which would nest inside
    the policy's own captures on CUDA; elsewhere, or with the policy's graphs off, they are welcome."""
    from test_runtime import tiny_model

    model = tiny_model()
    model.compile_modules("max-autotune")  # on the CPU: no graphs to nest in
    assert model.backbone.decoder_layers[0]._compiled_call_impl is not None
    monkeypatch.setattr(cuda_graph, "on_cuda", lambda device: True)
    for mode in ("reduce-overhead", "max-autotune"):
        with pytest.raises(ValueError, match="captures CUDA graphs itself"):
            model.compile_modules(mode)
    model.cuda_graphs = False
    model.compile_modules("max-autotune")
    torch._dynamo.reset()


def test_a_decoding_graph_that_decodes_otherwise_is_dropped(recorded_graphs, monkeypatch, caplog):
    """The decoding step's graph is kept only if, from the same start, it decodes the step's own tokens: one
    that recorded nothing (as a capture on another device than the step's would) decodes eagerly, warned."""
    from test_runtime import tiny_model

    real = cuda_graph.capture

    def records_nothing(fn, device, warmups=2):
        graph, out = real(fn, device, warmups)
        if fn.__name__ == "_step":  # the decoding step's capture only (the prefix's graph stays)
            graph.ops = []
        return graph, out

    monkeypatch.setattr(cuda_graph, "capture", records_nothing)
    model = tiny_model("discrete", family="paligemma", use_hand_rgb=True).eval()
    batch = make_batch(model, b=1)
    del batch["actions"]
    model.decoding = "dynamic"
    growing = model.predict(batch, normalized=True)
    model.decoding = "static"
    with caplog.at_level(logging.WARNING):
        static = model.predict(batch, normalized=True)
    assert torch.equal(static, growing) and len(torch.unique(static)) > 5
    decoder = model._static_decoder
    assert decoder._stepper.graph is None and "decoded other tokens" in caplog.text
    assert decoder._prefix.replays == 1  # the prefix's graph was kept: only the bad one is dropped


def test_the_bench_times_the_prefix_as_decoding_runs_it(recorded_graphs):
    """bench's "prefix" row: with the preallocated cache (the CUDA default) the prefix is the decoding's own,
    one graph replay per call into the decoder's cache, and its first token equals the full decoding's."""
    from robovlm_ros.runtime.latency import _batch, prefix_latency

    model = RoboVLM(PolicyConfig.tiny("paligemma", action_space="discrete", use_hand_rgb=True)).eval()
    model.decoding = "static"
    row = prefix_latency(model, 4)
    decoder = model._static_decoder
    assert row["n"] == 4 and decoder._prefix.replays == 5  # the warm-up call and the 4 timed ones
    first = decoder._stepper.out[:, 0].clone()
    model.predict(_batch(model), normalized=True)  # the whole decoding, from the same prefix
    assert decoder._prefix.replays == 6 and torch.equal(decoder._stepper.out[:, 0], first)
    assert len(torch.unique(decoder._stepper.out)) > 3  # it decoded on from there


def test_no_graph_is_captured_or_replayed_under_autocast(recorded_graphs):
    """Training's validation predicts inside autocast (bf16-mixed), whose low-precision weight copies live for
    one autocast block: a graph captured there would read freed memory, or stale weights, later. Under
    autocast decoding runs eagerly (it follows weights changed in place); afterwards graphs are captured."""
    from test_runtime import tiny_model

    model = tiny_model("discrete", family="paligemma", use_hand_rgb=True).eval()
    model.decoding = "static"
    batch = make_batch(model, b=1)
    del batch["actions"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.predict(batch, normalized=True)
        with torch.no_grad():
            for p in model.backbone.language_model.parameters():
                p.mul_(-1.5)  # a training step: the same tensors, new values
        again = model.predict(batch, normalized=True)
        model.cuda_graphs = False
        eager = model.predict(batch, normalized=True)
        model.cuda_graphs = True
    assert torch.equal(again, eager)
    decoder = model._static_decoder
    assert decoder._prefix.captures == 0 and decoder._stepper.graph is None
    model.predict(batch, normalized=True)  # outside autocast: captured as usual
    assert decoder._prefix.replays == 1 and decoder._stepper.graph is not None


def test_switching_between_instructions_replays_their_graphs(recorded_graphs):
    """A graph per instruction length: going back to an earlier task replays its graph, not a new capture."""
    from test_runtime import observations, tiny_model

    runner = PolicyRunner(tiny_model(use_hand_rgb=True), device="cpu", execute_steps=1)
    frames = runner.policy._frame_features
    first, second = "pick up the red block", "stack the green one on it"
    for instruction in (first, second, first):
        runner.set_instruction(instruction)
        for o in observations(3):
            runner.step(o)
    lengths = {len(runner.model.processor.text([t])[0][0]) for t in (first, second)}
    assert len(lengths) == 2  # two signatures, or the test proves nothing
    assert frames.captures == 2 and frames.replays == 9 and frames.refused is None


@pytest.mark.parametrize("space,history,family", [("continuous", "post", "llava"), ("continuous", "pre", "llava"),
                                                  ("discrete", "post", "llava"), ("discrete", "pre", "llava"),
                                                  ("continuous", "post", "qwen2_vl"), ("discrete", "post", "qwen2_vl")])
def test_the_warm_up_captures_every_graph_an_episode_needs(recorded_graphs, space, history, family):
    """After ``warmup()`` the robot's steps replay graphs and capture none (at real size a capture costs several
    steps' time, and a compiled shape seconds, while the arm waits): the warm-up predicts at every window
    length and once after the window slid. Qwen: its split pass (images eagerly, the decoder's pass a graph)."""
    from test_runtime import observations, tiny_model

    model = tiny_model(space, history, family=family, use_hand_rgb=True, window_size=4)
    model.decoding = "static"  # the CUDA default
    runner = PolicyRunner(model, device="cpu", execute_steps=2)
    runner.set_instruction("pick up the red block")

    def graphs() -> dict:
        report = runner.policy.graph_report()
        found = {k: v for k, v in report.items() if k.endswith(("_captures", "_replays"))}
        stepper = runner.policy._stepper if history == "pre" else getattr(runner.model._static_decoder, "_stepper", None)
        found["decoding_step"] = None if stepper is None else id(stepper.graph)
        if space == "discrete" and history == "post":
            decoder = runner.model._static_decoder
            found["prefix_captures"], found["prefix_replays"] = decoder._prefix.captures, decoder._prefix.replays
            found["prefix_decoder_captures"] = decoder._prefix_decoder.captures
            found["prefix_decoder_replays"] = decoder._prefix_decoder.replays
        return found

    def captures(found: dict) -> dict:
        return {k: v for k, v in found.items() if "_replays" not in k}

    runner.warmup()
    assert runner.instruction == "pick up the red block" and len(runner._window) == 0  # state restored
    warm = graphs()
    for episode in range(2):
        runner.reset()
        for o in observations(9, seed=episode):
            runner.step(o)
    after = graphs()
    assert captures(after) == captures(warm)
    assert sum(v for k, v in after.items() if k.endswith("_replays")) > sum(
        v for k, v in warm.items() if k.endswith("_replays"))  # the episodes replayed graphs
    if space == "discrete":
        assert after["decoding_step"] != id(None)  # the decoding step's graph was captured in the warm-up
    # another instruction token count: the runner warms up again before its first step (a graph per count)
    runner.set_instruction("stack the cubes")
    rewarmed = graphs()
    assert runner.warmups == 2 and captures(rewarmed) != captures(after)  # new graphs, in the warm-up
    for o in observations(9, seed=2):
        runner.step(o)
    assert captures(graphs()) == captures(rewarmed)


@pytest.mark.parametrize("space,history", [("continuous", "post"), ("continuous", "pre"), ("discrete", "post"),
                                           ("discrete", "pre")])
def test_the_warm_up_meets_every_input_shape_an_episode_has(recorded_graphs, space, history):
    """What is not a graph may be compiled (``compile``), and a compiled kernel is bound to its input shapes too:
    the vision tower's and each decoder pass's inputs over two episodes (execute_steps 2: frames also join
    without a prediction) all had their shape in the warm-up."""
    from test_runtime import observations, tiny_model

    model = tiny_model(space, history, use_hand_rgb=True, window_size=4)
    model.decoding = "static"  # the CUDA default
    seen = []
    for module in (model.backbone.vision_modules[0], model.backbone.decoder_layers[0]):
        module.register_forward_pre_hook(lambda mod, args: seen.append((type(mod).__name__, tuple(args[0].shape))))
    runner = PolicyRunner(model, device="cpu", execute_steps=2)
    runner.set_instruction("pick up the red block")
    runner.warmup()
    warm = set(seen)
    seen.clear()
    for episode in range(2):
        runner.reset()
        for o in observations(9, seed=episode):
            runner.step(o)
    assert len(warm) >= 2 and set(seen) <= warm, sorted(set(seen) - warm)  # (a graph replay runs no module)


@pytest.mark.parametrize("space,history", [("continuous", "post"), ("continuous", "pre"), ("discrete", "pre")])
def test_graphs_captured_over_compiled_modules_act_as_the_eager_runner(recorded_graphs, eager_compile, space,
                                                                       history):
    """``compile`` on CUDA: the graphs are captured over compiled modules (decoder layers with dynamic shapes,
    dynamo's guards run at every call). The scan refuses none of them, the stand-in's replays give the
    uncompiled, ungraphed runner's actions, and once warm nothing compiles."""
    from test_runtime import observations, tiny_model

    actions = {}
    for compiled in (True, False):
        model = tiny_model(space, history, use_hand_rgb=True, window_size=4)
        model.decoding = "static"  # the CUDA default
        runner = PolicyRunner(model, device="cpu", execute_steps=2, compile=compiled, cuda_graphs=compiled)
        runner.set_instruction("pick up the red block")
        runner.warmup()
        warm = len(eager_compile)
        actions[compiled] = np.stack([runner.step(o) for o in observations(9)])
        if compiled:
            report = runner.policy.graph_report()
            assert warm > 0 and len(eager_compile) == warm
            assert not any(v for k, v in report.items() if k.endswith("_refused")), report
            assert sum(v for k, v in report.items() if k.endswith("_replays")) >= 9, report
    np.testing.assert_allclose(actions[True], actions[False], rtol=0, atol=1e-5)
    assert len(np.unique(actions[True][:, 0])) > 3  # actions vary: the comparison is not trivial


@pytest.mark.parametrize("layout", [{}, {"frame_end": "<eos>"}], ids=["bos", "wrapped"])
def test_a_full_pre_window_is_one_graphed_pass(recorded_graphs, layout):
    """Continuous ``pre``: once the window is full every step slides it, nothing cached can be reused, and the
    window is one pass (replayed); it gives the recomputing runner's actions (the window filling first)."""
    from test_runtime import observations, tiny_model

    actions, runners = {}, {}
    for use_cache in (True, False):
        runner = runners[use_cache] = PolicyRunner(tiny_model(history="pre", use_hand_rgb=True, **layout),
                                                   device="cpu", execute_steps=1, use_cache=use_cache)
        runner.set_instruction("pick up the red block")
        actions[use_cache] = np.stack([runner.step(o) for o in observations(9)])
    np.testing.assert_allclose(actions[True], actions[False], rtol=0, atol=1e-5)
    assert len(np.unique(actions[True][:, 0])) > 3  # actions vary: the comparison is not trivial
    passes = runners[True].policy._window_features
    full_steps = 9 - runners[True].config.window_size + 1  # steps 4..9 of window 4
    assert passes.captures == 1 and passes.replays == full_steps and passes.refused is None
    report = runners[True].policy.graph_report()  # each step's new frame: its images encoded by a replay
    assert report["images_replays"] == 9 and report["images_refused"] is None, report


@pytest.mark.parametrize("space", ["continuous", "discrete"])
def test_frames_joined_without_a_prediction_go_through_one_by_one(recorded_graphs, space):
    """``pre`` history, execute_steps 2: two frames join between predictions. On CUDA each goes through the vision
    tower and the decoder alone (the shapes the warm-up met: one graph, one compiled kernel per shape); the
    actions equal the recomputing runner's while the window of 6 fills and slides."""
    from test_runtime import observations, tiny_model

    actions, runners = {}, {}
    for use_cache in (True, False):
        model = tiny_model(space, "pre", use_hand_rgb=True, window_size=6)
        model.decoding = "static"
        runner = runners[use_cache] = PolicyRunner(model, device="cpu", execute_steps=2, use_cache=use_cache)
        runner.set_instruction("pick up the red block")
        actions[use_cache] = np.stack([runner.step(o) for o in observations(12)])
    np.testing.assert_allclose(actions[True], actions[False], rtol=0, atol=1e-5)
    assert len(np.unique(actions[True][:, 0])) > 3  # actions vary: the comparison is not trivial
    report = runners[True].policy.graph_report()
    # one frame per replay, one signature: frames 1..11 (the 12th joined after the last prediction)
    assert report["images_replays"] == 11 and report["images_captures"] == 1, report


ROBOVLMS_LAYOUT = {"frame_end": "<eos>", "bin_style": "robovlms", "action_token_end": 600}


@pytest.mark.parametrize("family,layout", [("llava", {}), ("paligemma", {}), ("kosmos2", {}),
                                           ("llava", ROBOVLMS_LAYOUT)], ids=["llava", "paligemma", "kosmos2", "robovlms"])
def test_a_full_discrete_pre_window_is_one_graphed_prefix(recorded_graphs, family, layout):
    """Discrete ``pre`` with the preallocated cache: once the window is full, the earlier frames with their
    action tokens and the newest frame's prefix go into the cache in one pass (replayed), then the chunk is
    decoded; the actions equal the growing cache's, frame after frame."""
    from test_runtime import observations, tiny_model

    actions, runners = {}, {}
    for decoding in ("static", "dynamic"):
        model = tiny_model("discrete", "pre", family=family, use_hand_rgb=True, **layout)
        runner = runners[decoding] = PolicyRunner(model, device="cpu", execute_steps=1)
        runner.model.decoding = decoding
        runner.set_instruction("pick up the red block")
        actions[decoding] = np.stack([runner.step(o) for o in observations(9)])
    np.testing.assert_array_equal(actions["static"], actions["dynamic"])
    assert len(np.unique(actions["static"][:, 0])) > 3  # actions vary: the comparison is not trivial
    prefix = runners["static"].policy._window_prefix
    full_steps = 9 - runners["static"].config.window_size + 1
    assert prefix.captures == 1 and prefix.replays == full_steps and prefix.refused is None
    assert runners["static"].policy._stepper.graph is not None  # the decoding step's graph, kept
    report = runners["static"].policy.graph_report()
    assert report["images_replays"] == 9 and report["prefix_replays"] == full_steps, report
