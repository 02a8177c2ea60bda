"""Write RoboVLMs reference fixtures: RoboVLMs' own code builds each policy, predicts, and scores a batch.

Runs in its own virtual environment with RoboVLMs' pinned versions (see setup.sh and README.md), never in
robovlm_ros' environment. For each case it writes into OUT/<case>/:

  run.json        the RoboVLMs run config (the released calvin_finetune config, sized down)
  model.ckpt      a Lightning checkpoint: {"state_dict": {"model.<policy parameter>": tensor}, ...}
  backbone/       (shared per family, OUT/<family>_backbone/) the tiny VLM directory the config points at
  reference.pt    fixed inputs and RoboVLMs' outputs (see `reference` below)

Usage: python generate.py --robovlms PATH_TO_ROBOVLMS_CHECKOUT --out DIR [--case NAME ...]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import types

import numpy as np
import torch

# RoboVLMs' source checkout this generator was written against (README.md: tools/robovlms_reference)
ROBOVLMS_COMMIT = "8adc1d28d3565699eba90b7d97a97fb6001eb87d"

# a released run config per family, the starting point of every case of that family
BASE_CONFIGS = {
    "kosmos": "configs/calvin_finetune/finetune_kosmos_cont-lstm-post_full-ft_text_vision_wd-0_use-hand_ws-16_act-10.json",
    "paligemma": "configs/calvin_finetune/finetune_paligemma_cont-lstm-post_full-ft_text_vision_wd=0_ws-8_act-10.json",
}

# case name -> overrides: family, act_head type and fields, window, chunk, wrist camera
CASES = {
    "kosmos_lstm_post_hand": dict(family="kosmos", head="LSTMDecoder", window=3, chunk=2, hand=True),
    "kosmos_lstm_post": dict(family="kosmos", head="LSTMDecoder", window=3, chunk=2, hand=False),
    "kosmos_lstm_latent2": dict(family="kosmos", head="LSTMDecoder", window=2, chunk=2, hand=True, latent=2),
    "kosmos_mlp": dict(family="kosmos", head="FCDecoder", window=2, chunk=3, hand=True),
    "kosmos_gpt": dict(family="kosmos", head="GPTDecoder", window=3, chunk=2, hand=True),
    # pre history: the window one sequence of [BOS] images text action [EOS] frames (RoboVLMs' evaluation
    # of it reads the oldest frame, a defect the import does not keep: only the window pass is compared)
    "kosmos_lstm_pre": dict(family="kosmos", head="LSTMDecoder", window=3, chunk=2, hand=True, history="pre"),
    "paligemma_lstm_pre": dict(family="paligemma", head="LSTMDecoder", window=3, chunk=2, hand=True, history="pre"),
    # RoboVLMs' Perceiver resampler over each image's tokens (built with its default sizes)
    "kosmos_lstm_resampler": dict(family="kosmos", head="LSTMDecoder", window=2, chunk=2, hand=True, resampler=True),
    "paligemma_lstm_post_hand": dict(family="paligemma", head="LSTMDecoder", window=3, chunk=2, hand=True),
    # discrete actions: RoboVLMs' DiscreteDecoder (the VLM's own LM head over 256 action-bin tokens)
    "kosmos_discrete_hand": dict(family="kosmos", head="DiscreteDecoder", window=3, chunk=2, hand=True),
    # training loss only: RoboVLMs' discrete evaluation (pred_action_discrete) calls
    # PaliGemmaForConditionalGeneration without an attention mask, which transformers 4.44 requires
    # (AttributeError: 'NoneType' object has no attribute 'to'), so RoboVLMs has no PaliGemma actions to compare
    "paligemma_discrete_hand": dict(family="paligemma", head="DiscreteDecoder", window=3, chunk=2, hand=True,
                                    evaluation=False),
}
# RoboVLMs' action tokens are the 256 ids below vocab_size - (special tokens) - 10: a discrete case's tiny
# tokenizer gets this many unused pieces after its words, as a real vocabulary's rare tokens
DISCRETE_FILLER = 400

IMAGE_SIZE = 32  # tiny vision towers: 32 px, 8 px patches
HEAD_HIDDEN = 32
WORDS = ["An", "image", "of", "a", "robot", "pick", "up", "the", "red", "block", "push", "blue", "open",
         "drawer", "and", "to"]
INSTRUCTION = "pick up the red block"
SECOND_INSTRUCTION = "push up the blue block"  # as many tokens as INSTRUCTION (RoboVLMs' discrete batches
                                               # pad each frame in the middle of the sequence)
SEED = 1234


def import_robovlms(root: str):
    """Import the parts of RoboVLMs a policy needs, without its package __init__ files (they import
    every backbone, dataset and trainer, with dependencies a policy never calls: open_clip, llava,
    datasets, deepspeed). Nothing of RoboVLMs is changed or copied."""
    sys.path.insert(0, root)
    for name in ("robovlms.data", "robovlms.model.backbone"):
        pkg = types.ModuleType(name)
        pkg.__path__ = [os.path.join(root, *name.split("."))]
        sys.modules[name] = pkg
    # only ClipTextFeatureEncoder (use_clip_norm) uses open_clip; no case enables it
    sys.modules.setdefault("open_clip", types.ModuleType("open_clip"))
    # torchvision's wheel on PyPI is built against CUDA torch, and its compiled operators do not load
    # beside the CPU torch; RoboVLMs only uses its pure-Python transforms (Resize, ToTensor, Normalize),
    # so the module that registers those compiled operators is skipped
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import importlib

    # RoboVLMs' get_prompt_builder (its discrete prompts) returns `data.prompting.PhiPromptBuilder(...)` but
    # its module never binds the name `data` (at ROBOVLMS_COMMIT a NameError: the discrete path cannot run
    # as released); the name is bound to the package it evidently means
    data_utils = importlib.import_module("robovlms.data.data_utils")
    importlib.import_module("robovlms.data.prompting")
    data_utils.data = sys.modules["robovlms.data"]

    return {
        "kosmos": importlib.import_module("robovlms.model.backbone.robokosmos").RoboKosMos,
        "paligemma": importlib.import_module("robovlms.model.backbone.robopaligemma").RoboPaligemma,
    }


def tiny_tokenizer(fast_class, specials: dict, bos_eos: tuple[str, str] | None, filler: int = 0):
    """A real fast tokenizer (Unigram, sentencepiece-style) over a few words, made without downloads;
    ``filler`` unused pieces after them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    chars = sorted(set("".join(WORDS) + "abcdefghijklmnopqrstuvwxyz\n"))
    vocab = [(t, 0.0) for t in specials.values()] + [(f"\u2581{w}", -1.0) for w in WORDS]
    vocab += [(c, -8.0) for c in chars] + [("\u2581", -4.0)]
    vocab += [(f"\u2581unused{i}", -20.0) for i in range(filler)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=list(specials).index("unk")))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    if bos_eos is not None:
        bos, eos = bos_eos
        ids = {t: i for i, (t, _) in enumerate(vocab)}
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
            special_tokens=[(bos, ids[bos]), (eos, ids[eos])])
    kwargs = {f"{k}_token": v for k, v in specials.items()}
    return fast_class(tokenizer_object=tok, **kwargs)


def sharpen(model) -> None:
    """transformers initialises linear layers with std 0.02: in a 32-wide model attention is then nearly
    uniform, so token order (which image comes first, where the text sits) hardly matters and a parity
    test could not see it. Linear weights get std 1/sqrt(fan_in) instead; every parameter is rounded to
    a bfloat16 value (kept in float32) so the committed files compress."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0.0, m.in_features ** -0.5)
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())


def tiny_gemma_tokenizer(fast_class, filler: int = 0):
    """Gemma's tokenizer in small: BPE with byte fallback, spaces normalised to "▁" and no prefix space,
    the special tokens at Gemma's ids (pad 0, eos 1, bos 2, unk 3, mask 4); merges spell out WORDS with and
    without a leading "▁"; ``filler`` unused pieces at the end (Gemma's <unusedN>)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    merges = []
    for word in WORDS + [w.lower() for w in WORDS]:
        for piece in (word, "▁" + word):
            for ch in piece:
                vocab.setdefault(ch, len(vocab))
            for i in range(2, len(piece) + 1):
                left, right = piece[: i - 1], piece[i - 1]
                if piece[:i] not in vocab:
                    vocab[piece[:i]] = len(vocab)
                    merges.append((left, right))
    vocab.setdefault("\n", len(vocab))
    for i in range(filler):
        vocab[f"<unused{i}>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return fast_class(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                      unk_token="<unk>", mask_token="<mask>")


def kosmos_backbone(path: str, filler: int = 0) -> None:
    """The tiny Kosmos-2 directory; with ``filler`` (discrete cases) its LM head is not tied to the token
    embeddings: in a random tied model greedy decoding repeats the token it was fed (its own embedding
    dominates the last hidden state), and a parity test of one repeated token would prove little."""
    from transformers import (CLIPImageProcessor, Kosmos2Config, Kosmos2ForConditionalGeneration,
                              Kosmos2Processor, XLMRobertaTokenizerFast)

    tok = tiny_tokenizer(XLMRobertaTokenizerFast, {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>"},
                         ("<s>", "</s>"), filler)
    ip = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = Kosmos2Processor(ip, tok)  # adds Kosmos-2's <image>, <grounding>, ... and location tokens
    d = 32
    cfg = Kosmos2Config(
        text_config=dict(vocab_size=len(processor.tokenizer), embed_dim=d, layers=2, ffn_dim=2 * d,
                         attention_heads=4, max_position_embeddings=256, dropout=0.0, attention_dropout=0.0,
                         activation_dropout=0.0, layerdrop=0.0, scale_embedding=True,
                         tie_word_embeddings=not filler),
        vision_config=dict(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE_SIZE, patch_size=8, dropout=0.0, attention_dropout=0.0),
        latent_query_num=4, tie_word_embeddings=not filler)
    torch.manual_seed(SEED)
    model = Kosmos2ForConditionalGeneration(cfg)
    sharpen(model)
    model.save_pretrained(path)
    processor.save_pretrained(path)


def paligemma_backbone(path: str, filler: int = 0) -> None:
    """The tiny PaliGemma directory; untied LM head with ``filler``, as kosmos_backbone."""
    from transformers import (GemmaTokenizerFast, PaliGemmaConfig, PaliGemmaForConditionalGeneration,
                              PaliGemmaProcessor, SiglipImageProcessor)

    tok = tiny_gemma_tokenizer(GemmaTokenizerFast, filler)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    ip = SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_seq_length=16)
    processor = PaliGemmaProcessor(ip, tok)
    d = 32
    cfg = PaliGemmaConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=d, intermediate_size=2 * d, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=8, num_image_tokens=16,
                         tie_word_embeddings=not filler),
        vision_config=dict(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE_SIZE, patch_size=8, projection_dim=d),
        projection_dim=d, hidden_size=d, image_token_index=tok.convert_tokens_to_ids("<image>"),
        vocab_size=len(tok), tie_word_embeddings=not filler)
    torch.manual_seed(SEED)
    model = PaliGemmaForConditionalGeneration(cfg)
    sharpen(model)
    model.save_pretrained(path)
    processor.save_pretrained(path)


def run_config(root: str, case: dict, backbone_dir: str) -> dict:
    cfg = json.load(open(os.path.join(root, BASE_CONFIGS[case["family"]])))
    cfg = copy.deepcopy(cfg)
    cfg["window_size"] = case["window"]
    cfg["fwd_pred_next_n"] = case["chunk"]
    cfg["use_hand_rgb"] = case["hand"]
    cfg["image_size"] = IMAGE_SIZE
    cfg["use_vision_resampler"] = case.get("resampler", False)
    for key in ("model_path", "model_config"):
        cfg.pop(key, None)
    cfg["tokenizer"]["pretrained_model_name_or_path"] = backbone_dir
    cfg["vlm"]["pretrained_model_name_or_path"] = backbone_dir
    head = cfg["act_head"]
    head.update(type=case["head"], hidden_size=HEAD_HIDDEN, latent=case.get("latent", 1),
                window_size=case["window"], fwd_pred_next_n=case["chunk"])
    head["history_type"] = case.get("history", "post")
    if case["head"] == "DiscreteDecoder":
        head.update(action_space="discrete", n_bin=256, min_action=-1, max_action=1)
    if case["head"] == "LSTMDecoder":
        head["num_layers"] = 2  # RoboVLMs' default is 4; 2 keeps the fixture small
    return cfg


def build_policy(classes: dict, cfg: dict):
    """As robovlms.train.base_trainer.BaseTrainer._init_policy builds it."""
    model = classes[cfg["model"]](
        configs=cfg, train_setup_configs=cfg["train_setup"], fwd_head_configs=cfg["fwd_head"],
        window_size=cfg["window_size"], use_hand_rgb=cfg["use_hand_rgb"], act_head_configs=cfg["act_head"],
        fwd_pred_next_n=cfg["fwd_pred_next_n"], use_vision_resampler=cfg.get("use_vision_resampler", False),
        vision_resampler_configs=cfg.get("vision_resampler", None), use_clip_norm=cfg.get("use_clip_norm", False),
        use_state=cfg.get("use_state, False", False))  # sic: RoboVLMs' trainer never passes use_state
    # RoboVLMs initialises the action token to zeros and head biases to 0: random values make a mapping
    # error (a missed or transposed tensor) visible in the actions
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "action_token" or name.startswith("act_head."):
                p.add_(torch.randn(p.shape, generator=g) * (0.5 if name == "action_token" else 0.05))
            if name.startswith("act_head.") and p.numel() > 4096:
                # the head's output MLPs have fixed widths (1024-512-256, 1.4M parameters): keep one weight
                # in 16 so the committed fixture stays small (git compresses the zeros)
                p.mul_((torch.rand(p.shape, generator=g) < 1 / 16).to(p.dtype) * 4)
            # every value a bfloat16 number held in float32: the arithmetic stays float32, the files
            # compress (half of each value's bits are zero)
            p.copy_(p.to(torch.bfloat16).to(p.dtype))
    # RoboVLMs loads PaliGemma in bfloat16 (vlm_builder.build_vlm); the reference is computed in float32
    # so that the comparison can be tight (the weights are bfloat16 values either way)
    return model.float().eval()


def text_inputs(policy, cfg: dict):
    """The instruction tokenised as RoboVLMs' evaluation wrapper does (data_utils.get_text_function)."""
    from robovlms.data.data_utils import get_text_function

    fn = get_text_function(policy.tokenizer, cfg["tokenizer"]["tokenizer_type"])
    ids, mask = fn([INSTRUCTION])
    return ids, mask.bool()


def images(policy, cfg: dict, window: int, g: torch.Generator):
    """uint8 frames and RoboVLMs' preprocessing of them (BaseRoboVLM.image_processor, or the family's)."""
    from PIL import Image

    frames = torch.randint(0, 256, (window, IMAGE_SIZE, IMAGE_SIZE, 3), generator=g, dtype=torch.uint8)
    proc = policy.image_processor
    if cfg["model"] == "paligemma":  # RoboPaligemma.image_processor is the HF processor
        pixels = proc.image_processor([Image.fromarray(f.numpy()) for f in frames], return_tensors="pt")["pixel_values"]
    else:
        pixels = torch.stack([proc(Image.fromarray(f.numpy())) for f in frames])
    return frames, pixels.unsqueeze(0).float()  # [1, W, 3, S, S]


def reference(policy, cfg: dict, case: dict) -> dict:
    g = torch.Generator().manual_seed(SEED + 2)
    w, chunk = case["window"], case["chunk"]
    lang_x, mask = text_inputs(policy, cfg)
    rgb_u8, rgb = images(policy, cfg, w, g)
    hand_u8, hand = images(policy, cfg, w, g) if case["hand"] else (None, None)
    out = {"instruction": INSTRUCTION, "lang_x": lang_x, "attention_mask": mask, "rgb_uint8": rgb_u8,
           "rgb": rgb, "robovlms_commit": ROBOVLMS_COMMIT}
    if hand is not None:
        out.update(hand_uint8=hand_u8, hand_rgb=hand)
    with torch.no_grad():
        policy.act_head.reset() if hasattr(policy.act_head, "reset") else None
        arm, grip = policy.inference(rgb, lang_x, mask, vision_gripper=hand)["action"]
        out["window_arm"], out["window_gripper_logits"] = arm, grip.reshape(arm.shape[:-1])  # [1, W, chunk, 6], [1, W, chunk]
        if case.get("history", "post") == "pre":  # see CASES: no frame-by-frame evaluation to compare
            return reference_loss(policy, cfg, case, out, g, lang_x, mask, rgb, hand)
        # RoboVLMs' CALVIN evaluation feeds one frame per step and the head keeps its own history
        if hasattr(policy.act_head, "reset"):
            policy.act_head.reset()
        for t in range(w):
            a, gl = policy.inference(rgb[:, t: t + 1], lang_x, mask,
                                     vision_gripper=None if hand is None else hand[:, t: t + 1])["action"]
        out["step_arm"], out["step_gripper_logits"] = a[:, -1], gl.reshape(a.shape[:-1])[:, -1]  # [1, chunk, 6]
        # the evaluation wrapper's conversion to a robot command: gripper sigmoid > 0.5, arm unnormalised
        from robovlms.data.data_utils import unnoramalize_action

        cmd_arm = out["step_arm"][0].numpy()
        if cfg.get("norm_action"):
            cmd_arm = unnoramalize_action(cmd_arm, cfg["norm_min"], cfg["norm_max"])
        out["command_arm"] = torch.as_tensor(np.asarray(cmd_arm, dtype=np.float32))  # [chunk, 6]
        out["command_gripper01"] = (torch.sigmoid(out["step_gripper_logits"][0]) > 0.5).float()  # [chunk]
    return reference_loss(policy, cfg, case, out, g, lang_x, mask, rgb, hand)


def reference_loss(policy, cfg: dict, case: dict, out: dict, g, lang_x, mask, rgb, hand) -> dict:
    w, chunk = case["window"], case["chunk"]
    with torch.no_grad():
        # training loss on one batch: labels normalised, gripper 0 / 1; the last step of the last frame
        # masked out (an episode end), as RoboVLMs' datasets mask chunks past the end
        labels_arm = torch.rand((1, w, chunk, 6), generator=g) * 2 - 1
        labels_grip = (torch.rand((1, w, chunk), generator=g) > 0.5).float()
        action_mask = torch.ones(1, w, chunk)
        action_mask[0, -1, -1] = 0
        policy.act_head.reset() if hasattr(policy.act_head, "reset") else None
        pred = policy.forward(rgb, lang_x, attention_mask=mask, action_labels=(labels_arm, labels_grip),
                              action_mask=action_mask, vision_gripper=hand, data_source=["calvin_action"])
        ratio = cfg["arm_gripper_loss_ratio"]
        out.update(labels_arm=labels_arm, labels_gripper01=labels_grip, action_mask=action_mask,
                   loss_arm=pred["loss_arm_act"], loss_gripper=pred["loss_gripper_act"],
                   # robovlms.train.base_trainer.BaseTrainer._get_loss
                   loss=pred["loss_arm_act"] + ratio * pred["loss_gripper_act"])
    return out


def output_embeddings(policy):
    return policy.model.get_output_embeddings().weight


def steer_to_action_tokens(policy, cfg: dict, case: dict) -> float:
    """RoboVLMs decodes by argmax over the whole vocabulary (pred_action_discrete); a random model's argmax
    mostly falls outside the 256 action ids. The LM head's rows of all other ids are scaled down until
    RoboVLMs' own greedy decoding picks action ids at every step, so that a model that restricts its argmax
    to the action ids (robovlm_ros) is compared on decodings RoboVLMs reaches too. Returns the scale."""
    at = policy.action_tokenizer
    lo, hi = at.action_token_begin_idx + 1, at.action_token_end_idx  # RoboVLMs' ids: [hi - n_bin, hi)
    weight = output_embeddings(policy)
    if weight.data_ptr() == policy.word_embedding.weight.data_ptr():
        raise SystemExit("a discrete case needs an untied LM head (kosmos_backbone / paligemma_backbone filler)")
    # the action rows lose their component along the mean final hidden state, which every step shares:
    # otherwise one row wins at every step and the decoding repeats one token
    seen = []
    hook = policy.model.get_output_embeddings().register_forward_hook(
        lambda m, inputs, out: seen.append(inputs[0][:, -1].detach()))
    discrete_steps(policy, cfg, case)
    hook.remove()
    u = torch.cat(seen).mean(0)
    u = u / u.norm()
    with torch.no_grad():
        rows = weight[lo:hi]
        weight[lo:hi] = (rows - (rows @ u)[:, None] * u[None]).to(torch.bfloat16).float()
    others = torch.ones(weight.shape[0], dtype=torch.bool)
    others[lo:hi] = False
    base = weight.detach().clone()
    for scale in (1.0, 0.5, 0.25, 0.125, 0.0625):
        with torch.no_grad():
            weight[others] = (base[others] * scale).to(torch.bfloat16).float()
        ids, _ = discrete_steps(policy, cfg, case)
        if ((ids >= lo) & (ids < hi)).all():
            if len(np.unique(ids)) < 5:
                raise SystemExit(f"RoboVLMs' greedy decoding repeats a few tokens ({ids.tolist()}): a weak fixture")
            return scale
    raise SystemExit("RoboVLMs' greedy decoding leaves the action ids even with the other rows scaled x1/16")


def discrete_prompt(policy, cfg: dict, chunk: int, instruction: str) -> torch.Tensor:
    """The prompt ids RoboVLMs' CALVIN evaluation feeds a discrete policy (eval/calvin/model_wrapper.py
    CustomModel.preprocess, mode "discrete"), with the policy's own tokenizer: the wrapper builds a second
    one with build_tokenizer, which for KosMos is an AutoProcessor without bos_token / eos_token."""
    from robovlms.data.data_utils import get_prompt_builder

    tok = policy.tokenizer
    act_step = chunk + 1  # the wrapper's act_step = fwd_pred_next_n + 1
    builder = get_prompt_builder(cfg["model"], bos=tok.bos_token, eos=tok.eos_token)
    question = (f"What action should the robot take to {instruction}?" if act_step == 1
                else f"What {act_step} step actions should the robot take to {instruction}?")
    for role, value in (("human", question), ("gpt", "")):
        builder.add_turn(role, value)
    ids = torch.tensor(list(tok(builder.get_prompt(), add_special_tokens=True).input_ids))
    if tok.eos_token is not None:
        ids = ids[:-1]
    return ids.unsqueeze(0)


def discrete_steps(policy, cfg: dict, case: dict, g_seed: int = SEED + 2):
    """RoboVLMs' evaluation of a discrete post policy: one frame per step (the wrapper queues frames only
    for pre history), pred_action_discrete's greedy decoding. Returns the decoded ids [W, 7] and the actions
    [W, 7] (bin centres, gripper +-1)."""
    g = torch.Generator().manual_seed(g_seed)
    rgb = images(policy, cfg, case["window"], g)[1]
    hand = images(policy, cfg, case["window"], g)[1] if case["hand"] else None
    lang_x = discrete_prompt(policy, cfg, case["chunk"], INSTRUCTION)
    mask = torch.ones_like(lang_x, dtype=torch.bool)
    at = policy.action_tokenizer
    seen = []
    decode = at.decode_token_ids_to_actions
    at.decode_token_ids_to_actions = lambda ids: (seen.append(np.asarray(ids)), decode(ids))[1]
    try:
        with torch.no_grad():
            acts = [np.asarray(policy.inference(rgb[:, t: t + 1], lang_x, mask,
                                                vision_gripper=None if hand is None else hand[:, t: t + 1])["action"])
                    for t in range(case["window"])]
    finally:
        at.decode_token_ids_to_actions = decode
    return np.concatenate(seen), np.concatenate(acts)


def reference_discrete(policy, cfg: dict, case: dict) -> dict:
    from types import SimpleNamespace

    import robovlms.data.calvin_dataset as calvin_dataset
    from robovlms.data.data_utils import get_prompt_builder, unnoramalize_action

    # calvin_dataset imports get_prompt_builder inside the try block that imports CALVIN's own package
    # (calvin_agent, not installed here: nothing of it is used); the name is bound as that import would
    calvin_dataset.get_prompt_builder = get_prompt_builder
    DiskCalvinDataset = calvin_dataset.DiskCalvinDataset

    g = torch.Generator().manual_seed(SEED + 2)
    w, chunk = case["window"], case["chunk"]
    rgb_u8, rgb = images(policy, cfg, w, g)
    hand_u8, hand = images(policy, cfg, w, g) if case["hand"] else (None, None)
    at = policy.action_tokenizer
    out = {"instruction": INSTRUCTION, "lang_x": discrete_prompt(policy, cfg, chunk, INSTRUCTION),
           "rgb_uint8": rgb_u8, "rgb": rgb, "robovlms_commit": ROBOVLMS_COMMIT,
           "action_token_end": at.tokenizer_orig_size, "special_tokens_count": at.special_tokens_count,
           "vocab_size": policy.tokenizer.vocab_size}
    if hand is not None:
        out.update(hand_uint8=hand_u8, hand_rgb=hand)
    if case.get("evaluation", True):
        ids, acts = discrete_steps(policy, cfg, case)
        out["step_token_ids"] = torch.as_tensor(ids)    # [W, 7] one frame per step
        out["step_actions"] = torch.as_tensor(acts)     # [W, 7] float64, gripper +-1
        # the wrapper's command from the newest step: every dimension unnormalised, then the gripper's sign
        cmd = np.array(acts[-1], dtype=np.float64)
        if cfg.get("norm_action"):
            cmd = unnoramalize_action(cmd, cfg["norm_min"], cfg["norm_max"])
        cmd[-1] = 1 if cmd[-1] > 0 else -1
        out["command"] = torch.as_tensor(cmd)
    # training loss on a batch of two windows, as RoboVLMs' CALVIN dataset builds it (one action sequence of
    # window + chunk - 1 steps per sample, normalised; the last step masked as at an episode end)
    dataset = SimpleNamespace(model_name=cfg["model"], tokenizer=policy.tokenizer, action_tokenizer=at,
                              act_step=chunk + 1, window_size=w, predict_stop_token=True)
    actions = torch.rand((2, w + chunk - 1, 7), generator=g, dtype=torch.float64) * 2 - 1
    actions[..., -1] = torch.where(actions[..., -1] > 0, 1.0, -1.0)
    actions = actions.float().double()  # float32 values, as the dataset's
    step_mask = torch.ones(2, w + chunk - 1, dtype=torch.bool)
    step_mask[:, -1] = False
    batch_ids, batch_labels = [], []
    for i, lang in enumerate((INSTRUCTION, SECOND_INSTRUCTION)):
        a, b = DiskCalvinDataset.wrap_instruction_and_action(dataset, lang, actions[i].numpy(), step_mask[i].numpy())
        batch_ids.append(a)
        batch_labels.append(b)
    if len({x.shape for x in batch_ids}) != 1:
        raise SystemExit("the two instructions must tokenise to the same length")
    ids, labels = torch.stack(batch_ids), torch.stack(batch_labels)  # [2, W, L]
    rgb2 = torch.cat([rgb, rgb.flip(1)])
    hand2 = None if hand is None else torch.cat([hand, hand.flip(1)])
    with torch.no_grad():
        pred = policy.forward(rgb2, None, vision_gripper=hand2, instr_and_action_ids=ids,
                              instr_and_action_labels=labels,
                              instr_and_action_mask=torch.ones_like(ids, dtype=torch.bool),
                              data_source=["calvin_action"])
    out.update(train_instructions=[INSTRUCTION, SECOND_INSTRUCTION], train_actions=actions.float(),
               train_step_mask=step_mask, train_ids=ids, train_labels=labels, train_rgb=rgb2, train_hand_rgb=hand2,
               loss=pred["loss_arm_act"])  # BaseTrainer._get_loss: loss_arm_act (no gripper loss when discrete)
    return out


def compact(t: torch.Tensor) -> torch.Tensor:
    """A checkpoint tensor stored as bfloat16 where that keeps its value exactly (every parameter was rounded
    to a bfloat16 value, build_policy), halving the committed files; the import reads either dtype."""
    t = t.detach().clone()
    if t.dtype == torch.float32 and torch.equal(t.to(torch.bfloat16).float(), t):
        return t.to(torch.bfloat16)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--robovlms", required=True, help="RoboVLMs checkout at commit " + ROBOVLMS_COMMIT)
    ap.add_argument("--out", required=True)
    ap.add_argument("--case", action="append", choices=sorted(CASES))
    args = ap.parse_args()
    import transformers

    root = os.path.abspath(args.robovlms)
    classes = import_robovlms(root)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    for name in args.case or list(CASES):
        case = CASES[name]
        family = case["family"]
        discrete = case["head"] == "DiscreteDecoder"
        bname = f"{family}_discrete_backbone" if discrete else f"{family}_backbone"
        bdir = os.path.join(out, bname)
        if not os.path.isdir(bdir):
            {"kosmos": kosmos_backbone, "paligemma": paligemma_backbone}[family](
                bdir, DISCRETE_FILLER if discrete else 0)
        cfg = run_config(root, case, bdir)
        torch.manual_seed(SEED)
        policy = build_policy(classes, cfg)
        if discrete:
            scale = steer_to_action_tokens(policy, cfg, case) if case.get("evaluation", True) else 1.0
            ref = reference_discrete(policy, cfg, case)
            ref["action_row_scale"] = scale
        else:
            ref = reference(policy, cfg, case)
        ref["transformers"] = str(transformers.__version__)
        ref["torch"] = str(torch.__version__)
        cdir = os.path.join(out, name)
        os.makedirs(cdir, exist_ok=True)
        cfg["tokenizer"]["pretrained_model_name_or_path"] = cfg["vlm"]["pretrained_model_name_or_path"] = \
            f".vlms/{bname}"  # as a released config names it: a path on the training machine
        with open(os.path.join(cdir, "run.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        sd = {f"model.{k}": compact(v) for k, v in policy.state_dict().items()}
        torch.save({"state_dict": sd, "epoch": 0, "global_step": 0}, os.path.join(cdir, "model.ckpt"))
        torch.save(ref, os.path.join(cdir, "reference.pt"))
        if discrete:
            print(f"{name}: token ids {ref['step_token_ids'].tolist() if 'step_token_ids' in ref else None} "
                  f"loss {float(ref['loss']):.6f} other rows x{ref['action_row_scale']}")
        elif "step_arm" in ref:
            print(f"{name}: arm {tuple(ref['step_arm'].shape)} loss {float(ref['loss']):.6f} "
                  f"window-vs-step {float((ref['window_arm'][:, -1] - ref['step_arm']).abs().max()):.2e}")
        else:
            print(f"{name}: window arm {tuple(ref['window_arm'].shape)} loss {float(ref['loss']):.6f}")


if __name__ == "__main__":
    main()
