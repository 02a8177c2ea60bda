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
    "paligemma_lstm_post_hand": dict(family="paligemma", head="LSTMDecoder", window=3, chunk=2, hand=True),
}

IMAGE_SIZE = 32  # tiny vision towers: 32 px, 8 px patches
HEAD_HIDDEN = 32
WORDS = ["An", "image", "of", "a", "robot", "pick", "up", "the", "red", "block", "push", "blue", "open",
         "drawer", "and", "to"]
INSTRUCTION = "pick up the red block"
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

    return {
        "kosmos": importlib.import_module("robovlms.model.backbone.robokosmos").RoboKosMos,
        "paligemma": importlib.import_module("robovlms.model.backbone.robopaligemma").RoboPaligemma,
    }


def tiny_tokenizer(fast_class, specials: dict, bos_eos: tuple[str, str] | None):
    """A real fast tokenizer (Unigram, sentencepiece-style) over a few words, made without downloads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    chars = sorted(set("".join(WORDS) + "abcdefghijklmnopqrstuvwxyz\n"))
    vocab = [(t, 0.0) for t in specials.values()] + [(f"\u2581{w}", -1.0) for w in WORDS]
    vocab += [(c, -8.0) for c in chars] + [("\u2581", -4.0)]
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


def tiny_gemma_tokenizer(fast_class):
    """Gemma's tokenizer in small: BPE with byte fallback, spaces normalised to "▁" and no prefix space,
    the special tokens at Gemma's ids (pad 0, eos 1, bos 2, unk 3, mask 4); merges spell out WORDS with and
    without a leading "▁"."""
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
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return fast_class(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                      unk_token="<unk>", mask_token="<mask>")


def kosmos_backbone(path: str) -> None:
    from transformers import (CLIPImageProcessor, Kosmos2Config, Kosmos2ForConditionalGeneration,
                              Kosmos2Processor, XLMRobertaTokenizerFast)

    tok = tiny_tokenizer(XLMRobertaTokenizerFast, {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>"},
                         ("<s>", "</s>"))
    ip = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = Kosmos2Processor(ip, tok)  # adds Kosmos-2's <image>, <grounding>, ... and location tokens
    d = 32
    cfg = Kosmos2Config(
        text_config=dict(vocab_size=len(processor.tokenizer), embed_dim=d, layers=2, ffn_dim=2 * d,
                         attention_heads=4, max_position_embeddings=256, dropout=0.0, attention_dropout=0.0,
                         activation_dropout=0.0, layerdrop=0.0, scale_embedding=True),
        vision_config=dict(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE_SIZE, patch_size=8, dropout=0.0, attention_dropout=0.0),
        latent_query_num=4)
    torch.manual_seed(SEED)
    model = Kosmos2ForConditionalGeneration(cfg)
    sharpen(model)
    model.save_pretrained(path)
    processor.save_pretrained(path)


def paligemma_backbone(path: str) -> None:
    from transformers import (GemmaTokenizerFast, PaliGemmaConfig, PaliGemmaForConditionalGeneration,
                              PaliGemmaProcessor, SiglipImageProcessor)

    tok = tiny_gemma_tokenizer(GemmaTokenizerFast)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    ip = SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_seq_length=16)
    processor = PaliGemmaProcessor(ip, tok)
    d = 32
    cfg = PaliGemmaConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=d, intermediate_size=2 * d, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=8, num_image_tokens=16),
        vision_config=dict(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE_SIZE, patch_size=8, projection_dim=d),
        projection_dim=d, hidden_size=d, image_token_index=tok.convert_tokens_to_ids("<image>"),
        vocab_size=len(tok))
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
    for key in ("model_path", "model_config"):
        cfg.pop(key, None)
    cfg["tokenizer"]["pretrained_model_name_or_path"] = backbone_dir
    cfg["vlm"]["pretrained_model_name_or_path"] = backbone_dir
    head = cfg["act_head"]
    head.update(type=case["head"], hidden_size=HEAD_HIDDEN, latent=case.get("latent", 1),
                window_size=case["window"], fwd_pred_next_n=case["chunk"])
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
        bdir = os.path.join(out, f"{family}_backbone")
        if not os.path.isdir(bdir):
            {"kosmos": kosmos_backbone, "paligemma": paligemma_backbone}[family](bdir)
        cfg = run_config(root, case, bdir)
        torch.manual_seed(SEED)
        policy = build_policy(classes, cfg)
        ref = reference(policy, cfg, case)
        ref["transformers"] = str(transformers.__version__)
        ref["torch"] = str(torch.__version__)
        cdir = os.path.join(out, name)
        os.makedirs(cdir, exist_ok=True)
        cfg["tokenizer"]["pretrained_model_name_or_path"] = cfg["vlm"]["pretrained_model_name_or_path"] = \
            f".vlms/{family}_backbone"  # as a released config names it: a path on the training machine
        with open(os.path.join(cdir, "run.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        sd = {f"model.{k}": v.detach().clone() for k, v in policy.state_dict().items()}
        torch.save({"state_dict": sd, "epoch": 0, "global_step": 0}, os.path.join(cdir, "model.ckpt"))
        torch.save(ref, os.path.join(cdir, "reference.pt"))
        print(f"{name}: arm {tuple(ref['step_arm'].shape)} loss {float(ref['loss']):.6f} "
              f"window-vs-step {float((ref['window_arm'][:, -1] - ref['step_arm']).abs().max()):.2e}")


if __name__ == "__main__":
    main()
