"""Inference properties: cached decoding, history causality, batching, state token, predict()."""
import numpy as np
import pytest
import torch

from conftest import ALL_FAMILIES, make_batch
from robovlm_ros.model import PolicyConfig, RoboVLM


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_backbone_kv_cache_matches_full_forward(family):
    """Prefix with padding in the middle, then tokens one at a time through the cache."""
    model = RoboVLM(PolicyConfig.tiny(family, action_space="discrete")).eval()
    bb = model.backbone
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(2, 12, bb.hidden_size, generator=g)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, 3:6] = 0  # left-padded text slot of the shorter sample
    with torch.no_grad():
        full, _ = bb.decode(embeds, mask, model.positions(mask))
        hidden, cache = bb.decode(embeds[:, :8], mask[:, :8], model.positions(mask[:, :8]), use_cache=True)
        steps = [hidden[:, -1]]
        for i in range(8, 12):
            h, cache = bb.decode(embeds[:, i : i + 1], mask[:, : i + 1], model.positions(mask[:, : i + 1])[..., -1:],
                                 cache=cache, use_cache=True)
            steps.append(h[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 7:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("history", ["post", "pre"])
@pytest.mark.parametrize("decoding", ["dynamic", "static"])
def test_kv_cached_decoding_matches_uncached(family, history, decoding):
    """Both caches: the growing one, and the preallocated one the GPU replays as a CUDA graph (here
    the same step eagerly). The static decoder is reused across calls, so a second batch and the
    first one again must come out right too (nothing left over from the call before)."""
    # image start / end tokens on: the family's own tokens (Kosmos-2, Qwen, Idefics3 / SmolVLM) sit
    # in the prefix, and Qwen's image tokens take their 3-D positions
    _check_cached_equals_uncached(family, decoding, history_type=history, use_image_start_end=True)


@pytest.mark.parametrize("family", ["paligemma", "kosmos2"])
@pytest.mark.parametrize("history", ["post", "pre"])
@pytest.mark.parametrize("decoding", ["dynamic", "static"])
def test_kv_cached_decoding_matches_uncached_robovlms_layout(family, history, decoding):
    """RoboVLMs' discrete layout: frames wrapped as [BOS] segment [EOS], its bins and token ids."""
    _check_cached_equals_uncached(family, decoding, history_type=history, frame_end="<eos>",
                                  bin_style="robovlms", action_token_end=600)


@pytest.mark.parametrize("decoding", ["dynamic", "static"])
def test_kv_cached_decoding_matches_uncached_with_a_bidirectional_prefix(decoding):
    """PaliGemma's prefix-LM attention: the prefix enters the cache at once, bidirectionally."""
    _check_cached_equals_uncached("paligemma", decoding, history_type="post", prefix_attention="bidirectional")


def _check_cached_equals_uncached(family, decoding, **overrides):
    from robovlm_ros.model.static_decoding import supports_static_decoding

    model = RoboVLM(PolicyConfig.tiny(family, action_space="discrete", **overrides)).eval()
    model.decoding = decoding
    assert supports_static_decoding(model.backbone)
    # spread the argmax over many bins (an untrained model tends to repeat one token)
    # Kosmos-2 (post-LN sublayers, sinusoidal positions, embeddings times sqrt(d)) needs larger weights
    # and unscaled embeddings before its greedy tokens stop repeating
    kosmos = family == "kosmos2"
    with torch.no_grad():
        for p in model.backbone.language_model.parameters():
            if p.ndim == 2:
                p.normal_(0, 1.0 if kosmos else 0.3)
        model.backbone.lm_head.weight.normal_(0, 1.0)
        if kosmos:
            model.backbone.embed_tokens.weight.div_(model.backbone.language_model.embed_scale)
    batches = [make_batch(model, b=2, seed=seed) for seed in (0, 1, 0)]
    for batch in batches:
        del batch["actions"]
        cached = model.predict(batch, normalized=True, use_cache=True)
        uncached = model.predict(batch, normalized=True, use_cache=False)
        assert cached.shape == (2, model.config.fwd_pred_next_n, 7)  # the whole chunk, not one step
        assert torch.equal(cached, uncached)
        assert len(torch.unique(cached)) > 10, "degenerate decoding: the comparison would prove little"
    assert (model._static_decoder is not None) == (decoding == "static")


def _features(model, batch):
    with torch.no_grad():
        return model.action_features(batch)


def test_post_history_frames_are_independent_at_vlm_stage():
    model = RoboVLM(PolicyConfig.tiny("llava", history_type="post")).eval()
    batch = make_batch(model)
    base = _features(model, batch)
    batch["rgb"][:, 1] += 1.0  # change frame 1 only
    changed = _features(model, batch)
    w = model.config.window_size
    for t in range(w):
        if t == 1:
            assert not torch.allclose(changed[:, t], base[:, t])
        else:
            assert torch.equal(changed[:, t], base[:, t]), f"frame {t} changed"


@pytest.mark.parametrize("family", ["paligemma", "llava", "kosmos2"])
@pytest.mark.parametrize("b", [1, 2])  # b=1: no padding, so the decoder may take its mask-free path
def test_pre_history_is_causal(family, b):
    model = RoboVLM(PolicyConfig.tiny(family, history_type="pre")).eval()
    _check_pre_history_is_causal(model, b)


@pytest.mark.parametrize("b", [1, 2])
def test_pre_history_with_wrapped_frames_is_causal(b):
    """RoboVLMs' discrete layout: each frame [BOS] images text actions [EOS]; frame t's loss terms
    and decoding see frames <= t only."""
    model = RoboVLM(PolicyConfig.tiny("kosmos2", history_type="pre", action_space="discrete", frame_end="<eos>")).eval()
    batch = make_batch(model, b=b, seed=3)
    with torch.no_grad():
        embeds, mask, unflatten = model.sequences(batch, model.backbone.embed(
            model.action_tokenizer.encode(batch["actions"]).flatten(2)))
        seg = unflatten(model.backbone.decode(embeds, mask, model.positions(mask))[0])  # [B, W, S_f, D]
        later = dict(batch, rgb=batch["rgb"].clone(), hand_rgb=batch["hand_rgb"].clone())
        later["rgb"][:, -1] = torch.randn_like(later["rgb"][:, -1])
        later["hand_rgb"][:, -1] = torch.randn_like(later["hand_rgb"][:, -1])
        embeds2, mask2, _ = model.sequences(later, model.backbone.embed(
            model.action_tokenizer.encode(batch["actions"]).flatten(2)))
        seg2 = unflatten(model.backbone.decode(embeds2, mask2, model.positions(mask2))[0])
    n_frame = embeds.shape[1] // batch["rgb"].shape[1]
    assert embeds.shape[1] == batch["rgb"].shape[1] * n_frame  # no extra leading BOS
    assert embeds.shape[1] == mask.shape[1] and seg.shape[2] == n_frame - 2  # BOS and EOS stripped
    torch.testing.assert_close(seg[:, :-1], seg2[:, :-1], rtol=0, atol=1e-6)
    assert (seg[:, -1] - seg2[:, -1]).abs().max() > 1e-3  # the newest frame did change


def _check_pre_history_is_causal(model, b):
    batch = make_batch(model, b=b)
    base = _features(model, batch)
    batch["rgb"][:, 2] += 1.0  # change frame 2
    changed = _features(model, batch)
    torch.testing.assert_close(changed[:, :2], base[:, :2], rtol=0, atol=1e-5)  # earlier frames ignore it
    assert (changed[:, 2:] - base[:, 2:]).abs().amax(dim=(0, 2, 3)).min() > 1e-4  # later frames see it


@pytest.mark.parametrize("space", ["continuous", "discrete"])
@pytest.mark.parametrize("history", ["post", "pre"])
def test_batched_prediction_equals_one_by_one(space, history):
    """Instructions of different lengths are padded inside the sequence; that must not change results."""
    model = RoboVLM(PolicyConfig.tiny("paligemma", action_space=space, history_type=history, use_state=True)).eval()
    with torch.no_grad():
        model.backbone.lm_head.weight.normal_(0, 1.0)
    batch = make_batch(model, b=3)
    del batch["actions"]
    together = model.predict(batch)
    assert together.shape == (3, model.config.fwd_pred_next_n, 7)
    for i in range(3):
        single = {k: v[i : i + 1] for k, v in batch.items() if torch.is_tensor(v)}
        ids, mask = model.processor.text([model.processor.tokenizer.decode(
            batch["input_ids"][i][batch["attention_mask"][i].bool()])])
        single.update(input_ids=ids, attention_mask=mask)
        alone = model.predict(single)
        torch.testing.assert_close(alone, together[i : i + 1], rtol=0, atol=1e-4)


def test_state_token_is_used_only_when_enabled():
    for use_state in (True, False):
        model = RoboVLM(PolicyConfig.tiny("llava", use_state=use_state)).eval()
        batch = make_batch(model)
        base = _features(model, batch)
        batch["state"][..., :6] += 1.0
        moved = not torch.allclose(_features(model, batch), base)
        assert moved == use_state


@pytest.mark.parametrize("family", ["paligemma", "smolvlm"])
def test_predict_from_raw_observations(family):
    cfg = PolicyConfig.tiny(family, norm_mode="clip", clip_bound=0.5)
    model = RoboVLM(cfg).eval()
    rng = np.random.default_rng(0)
    obs = lambda: {"rgb": rng.integers(0, 255, (48, 64, 3), dtype=np.uint8),  # noqa: E731
                   "hand_rgb": rng.integers(0, 255, (24, 32, 3), dtype=np.uint8),
                   "state": np.r_[rng.normal(size=6), 1.0]}
    windows = [[obs() for _ in range(cfg.window_size)] for _ in range(2)]
    actions = model.predict(model.processor.observations(windows, ["pick up the red block", "stack the cubes"]))
    assert actions.shape == (2, cfg.fwd_pred_next_n, 7)
    assert torch.isfinite(actions).all()
    assert (actions[..., :6].abs() <= 0.5 + 1e-6).all()  # unnormalised into the clip bound
    assert set(actions[..., 6].unique().tolist()) <= {-1.0, 1.0}


def test_missing_gripper_camera_is_a_clear_error():
    model = RoboVLM(PolicyConfig.tiny("paligemma"))
    windows = [[{"rgb": np.zeros((32, 32, 3), np.uint8), "state": np.zeros(7)}] * model.config.window_size]
    with pytest.raises(ValueError, match="hand_rgb"):
        model.predict(model.processor.observations(windows, ["go"]))


@pytest.mark.parametrize("decoding", ["dynamic", "static"])
def test_kosmos2_cached_decoding_past_its_position_table(decoding):
    """Kosmos-2's sinusoidal table grows in its own forward by the tokens fed at once: decoding one token at
    a time past max_position_embeddings indexed beyond it (an IndexError in the node on a long pre window).
    With a table shorter than the sequence, cached decoding must still equal uncached."""
    model = RoboVLM(PolicyConfig.tiny("kosmos2", action_space="discrete", history_type="pre")).eval()
    model.decoding = decoding
    batch = make_batch(model, b=1)
    del batch["actions"]
    embeds, _, _ = model.sequences({k: v[:, :1] if k in ("rgb", "hand_rgb", "state") else v for k, v in batch.items()},
                                   None)
    table = model.backbone.language_model.embed_positions
    table.make_weights(embeds.shape[1] + 4, table.embedding_dim, table.padding_idx)  # shorter than the window
    assert table.weights.shape[0] < embeds.shape[1] * batch["rgb"].shape[1]
    cached = model.predict(batch, normalized=True, use_cache=True)
    torch.testing.assert_close(cached, model.predict(batch, normalized=True, use_cache=False), rtol=0, atol=0)


def test_a_graph_captured_before_a_buffer_was_replaced_is_not_replayed():
    """Kosmos-2's position table is regrown for longer sequences; a CUDA graph captured over the old table
    would read freed memory. The stepper compares Backbone.graph_inputs with those at capture and decodes
    eagerly (capturing again next time) when they differ. Here a stale graph is planted on the CPU."""
    model = RoboVLM(PolicyConfig.tiny("kosmos2", action_space="discrete")).eval()
    model.decoding = "static"
    batch = make_batch(model, b=1)
    del batch["actions"]
    first = model.predict(batch, normalized=True)
    stepper = model._static_decoder._stepper

    class StaleGraph:
        def replay(self):
            raise AssertionError("a graph over a replaced buffer was replayed")

    assert model.backbone.graph_inputs()  # Kosmos-2 has a replaceable table
    stepper.graph, stepper._graph_inputs = StaleGraph(), (0,)
    assert torch.equal(model.predict(batch, normalized=True), first)
    assert stepper.graph is None and stepper.use_graph  # captured again on the next call (on CUDA)
