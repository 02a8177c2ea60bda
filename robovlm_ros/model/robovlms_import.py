"""A RoboVLMs policy (run config + Lightning checkpoint) as a robovlm_ros checkpoint.

Every key of RoboVLMs' run config is either mapped to a PolicyConfig field, known to hold nothing a
policy computes (bookkeeping, the training run's own settings: reported, not carried), or refused by
name. Every tensor of the checkpoint is either mapped or reported; a checkpoint that leaves one of our
parameters unset is refused. Where RoboVLMs has a known defect, the import keeps robovlm_ros' behaviour
and says so in the report. README.md "From a RoboVLMs checkpoint" is the user's guide.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import torch

from .backbones import CLIP_MEAN, CLIP_STD, _hf_class, family_spec
from .config import PolicyConfig

ROBOVLM_FAMILIES = {"RoboKosMos": ("kosmos", "kosmos2"), "RoboPaligemma": ("paligemma", "paligemma")}
HEADS = {"LSTMDecoder": "lstm", "FCDecoder": "mlp", "GPTDecoder": "gpt"}

# RoboVLMs' evaluation prompt per tokenizer_type (robovlms/data/data_utils.py get_text_function):
# (prompt, with the tokenizer's special tokens, sequence start token or None for the tokenizer's BOS)
PROMPTS = {
    "kosmos": ("<grounding>An image of a robot {instruction}", True, None),
    "paligemma": ("{eos}{instruction}\n", False, "{eos}"),
}

# keys that hold nothing the policy computes: where the run wrote its files, its data, its optimiser,
# trainer and logging; reported as not carried (robovlm-ros train has its own config for a new run)
NOT_CARRIED = {
    "parent", "task_name", "model_url", "model_path", "model_config", "output_root", "log_root", "cache_root",
    "model_load_path", "model_load_source", "resume", "seed", "batch_size", "num_workers", "data_scale",
    "optimizer", "learning_rate", "min_lr_scale", "weight_decay", "warmup_epochs", "warmup_steps",
    "warmup_ratio", "trainer", "train_dataset", "val_dataset", "seq_len", "exp_name", "raw_calvin", "gpus",
    "num_nodes", "record_evaluation_video",
    # loss weights of parts an imported policy does not have (captions, KL, CLIP norm, VL co-training)
    "cap_loss_ratio", "vl_cotrain_ratio", "kl_div_ratio", "clip_norm_ratio",
}
# keys read only by RoboVLMs' forward-prediction (image generation) head; without one they change nothing
FWD_HEAD_ONLY = {"use_time_causal_attn", "use_mim_obs_loss", "use_pixel_loss", "use_obs_queries",
                 "vision_masked_ratio", "use_tube_mask", "fwd_loss_ratio"}
TRAIN_SETUP_NOT_CARRIED = {"precision", "bits", "mm_projector_lr", "freeze_mm_mlp_adapter", "tune_mm_mlp_adapter",
                           "mm_use_im_patch_token", "freeze_resampler", "predict_forward", "predict_forward_hand",
                           "lora_r", "lora_alpha", "lora_dropout", "lora_bias", "train_text_embedding", "reinit"}
TRAIN_SETUP_MAPPED = {"predict_action", "predict_caption", "lora_enable", "freeze_backbone", "train_vision",
                      "train_decoder_layers", "gradient_checkpointing", "mm_use_im_start_end"}
ACT_HEAD_KEYS = {"type", "hidden_size", "action_dim", "down_sample", "latent", "fwd_pred_next_n", "window_size",
                 "action_space", "with_history", "history_type", "num_layers", "policy_rnn_dropout_p",
                 "n_bin", "min_action", "max_action"}
# RoboVLMs' discrete prompt (robovlms/data/data_utils.py get_prompt_builder): its PhiPromptBuilder for every
# model name but these, whose builders robovlm_ros does not reproduce
# the resampler RoboVLMs builds whatever its config says: PerceiverResampler(dim=hidden) with these defaults
ROBOVLMS_RESAMPLER = dict(resampler_latents=64, resampler_depth=6, resampler_heads=8, resampler_dim_head=64,
                          resampler_ff_mult=4, resampler_ff_bias=False)
OTHER_PROMPT_BUILDERS = ("vicuna", "mistral", "llama", "qwen")
DISCRETE_HISTORY = ("post", "pre")


class RoboVLMsImportError(ValueError):
    """A RoboVLMs run config or checkpoint that robovlm_ros cannot reproduce exactly."""


@dataclass
class ImportReport:
    mapped: dict = field(default_factory=dict)        # RoboVLMs key -> PolicyConfig field / value
    not_carried: list = field(default_factory=list)   # keys with no effect on the policy
    departures: list = field(default_factory=list)    # RoboVLMs defects, fixed on import
    tensors: dict = field(default_factory=dict)       # counts: mapped, buffers_skipped, ...
    unmapped_tensors: list = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"config: {k} -> {v}" for k, v in self.mapped.items()]
        out += [f"not carried (no effect on the policy): {', '.join(sorted(self.not_carried))}"]
        out += [f"differs from RoboVLMs on purpose: {d}" for d in self.departures]
        out += [f"tensors: {', '.join(f'{k} {v}' for k, v in self.tensors.items())}"]
        out += [f"unmapped tensor: {k}" for k in self.unmapped_tensors]
        return out


def _refuse(msg: str):
    raise RoboVLMsImportError(msg)


def _expect(cfg: dict, key: str, allowed, where: str = "") -> None:
    value = cfg.get(key)
    if value not in allowed:
        _refuse(f"{where}{key} = {value!r} is not supported (robovlm_ros reproduces {sorted(map(str, allowed))})")


def robovlms_action_token_end(tokenizer) -> int:
    """RoboVLMs' ActionTokenizer.tokenizer_orig_size: the vocabulary less one id per special-token
    attribute set (bos, eos, unk, sep, pad, cls, mask) and per additional special token, less 10; its 256
    action ids are the ids just below."""
    attrs = [k for k, v in tokenizer.special_tokens_map.items() if v and k != "additional_special_tokens"]
    extra = getattr(tokenizer, "extra_special_tokens", None) or tokenizer.special_tokens_map.get(
        "additional_special_tokens") or []
    return tokenizer.vocab_size - len(attrs) - len(extra) - 10


# whether RoboVLMs' discrete prompt gets the tokenizer's special tokens: it tokenises with
# add_special_tokens=True, and its KosMos tokenizer (XLM-R) then adds <s> ... </s>, while its PaliGemma
# tokenizer, taken from PaliGemmaProcessor, adds nothing (the processor turns add_bos_token / add_eos_token off)
DISCRETE_PROMPT_SPECIAL = {"kosmos2": True, "paligemma": False}


def _discrete_prompt(run: dict, family: str, tokenizer, chunk: int, rep: ImportReport) -> dict:
    """RoboVLMs' discrete prompt (its dataset's wrap_instruction_and_action and its evaluation wrapper):
    PhiPromptBuilder's "Input: {question}\nOutput: \n{eos}" (its get_prompt drops the BOS it was given),
    tokenised. RoboVLMs inserts the images after the first token, which our sequence start then is, and
    moves the last token (the EOS) after the frame's action tokens: our frame end."""
    dataset = str((run.get("train_dataset") or {}).get("type", ""))
    if dataset and "calvin" not in dataset.lower():
        _refuse(f"train_dataset.type = {dataset!r} with discrete actions: robovlm_ros reproduces the discrete "
                "prompt and layout of RoboVLMs' CALVIN datasets; its Open-X ActionPredictionDataset asks for "
                "fwd_pred_next_n (not fwd_pred_next_n + 1) step actions and lays out frames and labels otherwise")
    builder = str((run.get("train_dataset") or {}).get("model_name", run.get("model", "")))
    for marker in OTHER_PROMPT_BUILDERS:
        if marker in builder.lower():
            _refuse(f"train_dataset.model_name = {builder!r} selects RoboVLMs' {marker} prompt builder; robovlm_ros "
                    "reproduces its PhiPromptBuilder prompt (the builder of its KosMos and PaliGemma runs)")
    if tokenizer.eos_token is None:
        _refuse("a discrete policy's prompt needs the tokenizer's EOS token")
    # RoboVLMs' act_step is fwd_pred_next_n + 1, so its question never takes the one-action form
    question = f"What {chunk + 1} step actions should the robot take to {{instruction}}?"
    prompt = f"Input: {question}\nOutput: \n{tokenizer.eos_token}"
    special = DISCRETE_PROMPT_SPECIAL[family]
    ids = tokenizer(prompt.format(instruction="x"), add_special_tokens=special)["input_ids"]
    start, frame_end = tokenizer.convert_ids_to_tokens([ids[0], ids[-1]])
    if not (run.get("train_dataset") or {}).get("predict_stop_token", True):
        rep.departures.append("train_dataset.predict_stop_token = false: robovlm_ros' loss also predicts the "
                              f"frame end {frame_end!r} (RoboVLMs' default)")
    return dict(prompt=prompt, prompt_special_tokens=special, prompt_trim=[1, 1], sequence_start=start,
                frame_end=frame_end)


def config_from_robovlms(run: dict, backbone_path: str, tokenizer,
                         discrete_history: str = "post") -> tuple[dict, ImportReport]:
    """RoboVLMs' run config -> PolicyConfig fields for the backbone in ``backbone_path`` (whose tokenizer
    fills in the prompt's special tokens). ``discrete_history``: how a discrete policy's window is read
    (README "From a RoboVLMs checkpoint": post is RoboVLMs' evaluation, pre its training layout)."""
    rep = ImportReport()
    name = run.get("robovlm_name")
    if name not in ROBOVLM_FAMILIES:
        _refuse(f"robovlm_name = {name!r}: robovlm_ros imports {sorted(ROBOVLM_FAMILIES)} (the families both support)")
    model_name, family = ROBOVLM_FAMILIES[name]
    _expect(run, "model", {model_name})
    if run.get("fwd_head") is not None:
        _refuse("fwd_head: RoboVLMs' forward-prediction head (image generation) has no robovlm_ros counterpart")
    for key in ("use_mu_law", "use_clip_norm", "tcp_rel"):
        if run.get(key):
            _refuse(f"{key} = true is not supported")
    head = dict(run.get("act_head") or {})
    if not head:
        _refuse("act_head is missing: nothing predicts actions")
    unknown_head = sorted(set(head) - ACT_HEAD_KEYS)
    space = head.get("action_space", "continuous")
    _expect({"action_space": space}, "action_space", {"continuous", "discrete"}, "act_head.")
    discrete = space == "discrete"
    if discrete:
        if head.get("type") != "DiscreteDecoder":
            _refuse(f"act_head.type = {head.get('type')!r} with discrete actions: RoboVLMs' discrete policies use "
                    "DiscreteDecoder (the VLM's own LM head)")
        if (float(head.get("min_action", -1)), float(head.get("max_action", 1))) != (-1.0, 1.0):
            _refuse(f"act_head.min_action / max_action = {head.get('min_action')} / {head.get('max_action')}: "
                    "robovlm_ros bins normalised actions in [-1, 1]")
        if discrete_history not in DISCRETE_HISTORY:
            raise ValueError(f"discrete_history must be one of {DISCRETE_HISTORY}")
    elif head.get("type") not in HEADS:
        _refuse(f"act_head.type = {head.get('type')!r}: robovlm_ros reproduces {sorted(HEADS)}")
    if unknown_head:
        _refuse(f"act_head keys robovlm_ros does not know: {', '.join(unknown_head)}")
    _expect(head, "action_dim", {7}, "act_head.")
    _expect(head, "down_sample", {"pooling", "none", None}, "act_head.")
    if head.get("with_history") is False:
        _refuse("act_head.with_history = false is not supported")
    history = head.get("history_type", "post")
    _expect({"history_type": history}, "history_type", {"post", "pre"}, "act_head.")
    if history == "pre" and not discrete:
        rep.departures.append("history_type pre: RoboVLMs' evaluation reads the action at the oldest frame of "
                              "the window; robovlm_ros reads the newest (each frame's own action tokens)")
    latent = int(head.get("latent", 1))
    head_type = HEADS.get(head["type"], "lstm")  # discrete: unused
    setup = dict(run.get("train_setup") or {})
    if not setup.get("predict_action", True):
        _refuse("train_setup.predict_action = false: the policy predicts no actions")
    if setup.get("predict_caption"):
        _refuse("train_setup.predict_caption = true: RoboVLMs' caption co-training is not imported")
    if setup.get("lora_enable"):
        _refuse("train_setup.lora_enable = true: merge the LoRA weights into the checkpoint first")
    unknown_setup = sorted(set(setup) - TRAIN_SETUP_MAPPED - TRAIN_SETUP_NOT_CARRIED)
    if unknown_setup:
        _refuse(f"train_setup keys robovlm_ros does not know: {', '.join(unknown_setup)}")
    tok_cfg = run.get("tokenizer") or {}
    if tok_cfg.get("additional_special_tokens"):
        _refuse("tokenizer.additional_special_tokens: the imported tokenizer would lack them")
    tokenizer_type = tok_cfg.get("tokenizer_type", model_name)
    if tokenizer_type not in PROMPTS:
        _refuse(f"tokenizer.tokenizer_type = {tokenizer_type!r}: robovlm_ros knows RoboVLMs' prompts for {sorted(PROMPTS)}")
    prompt, special, start = PROMPTS[tokenizer_type]
    eos = tokenizer.eos_token or ""
    prompt = prompt.replace("{eos}", eos)
    start = None if start is None else start.replace("{eos}", eos)

    known = NOT_CARRIED | FWD_HEAD_ONLY | {
        "window_size", "fwd_pred_next_n", "use_hand_rgb", "image_size", "image_mean", "image_std",
        "arm_gripper_loss_ratio", "norm_action", "norm_min", "norm_max", "fwd_head", "use_vision_resampler",
        "vision_resampler", "act_encoder", "use_state", "use_mu_law", "use_clip_norm", "tcp_rel",
        "robovlm_name", "model", "vlm", "tokenizer", "act_head", "train_setup"}
    unknown = sorted(set(run) - known)
    if unknown:
        _refuse(f"run config keys robovlm_ros does not know: {', '.join(unknown)}")
    if run.get("act_encoder") is not None:
        _refuse("act_encoder: RoboVLMs' action encoder (actions as inputs) is not supported")
    rep.not_carried += sorted(set(run) & (NOT_CARRIED | FWD_HEAD_ONLY))
    rep.not_carried += [f"train_setup.{k}" for k in sorted(set(setup) & TRAIN_SETUP_NOT_CARRIED)]
    if "policy_rnn_dropout_p" in head:
        rep.not_carried.append("act_head.policy_rnn_dropout_p (training-time dropout)")
    if discrete:
        rep.not_carried += [f"act_head.{k} (no continuous head)" for k in ("hidden_size", "latent", "num_layers")
                            if k in head]
    resampler = bool(run.get("use_vision_resampler"))
    if "vision_resampler" in run and not resampler:
        rep.not_carried.append("vision_resampler (sizes of a resampler use_vision_resampler leaves off)")
    if resampler:
        rep.departures.append(f"vision_resampler {run.get('vision_resampler')}: RoboVLMs ignores these sizes and "
                              "builds PerceiverResampler(dim=hidden) with its defaults (64 latents, depth 6, 8 heads "
                              "of 64, feed-forward x4 without biases); the imported policy has those")
    if run.get("use_state"):
        rep.departures.append("use_state: RoboVLMs' trainer never passes it to the policy (it reads the key "
                              "'use_state, False'), so its checkpoints hold no state token; the imported "
                              "policy has none, set use_state when fine-tuning to train one")
    if setup.get("mm_use_im_start_end"):
        rep.departures.append(f"train_setup.mm_use_im_start_end: {name} defines no image start / end tokens, so "
                              "RoboVLMs never adds them; neither does the imported policy")

    if run.get("norm_action"):
        lo, hi = float(run["norm_min"]), float(run["norm_max"])
        norm = dict(norm_mode="clip", clip_bound=hi, clip_low=None if lo == -hi else lo)
    else:
        norm = dict(norm_mode="none")
    window, chunk = int(run["window_size"]), int(run["fwd_pred_next_n"])
    hidden = int(head.get("hidden_size", 1024))
    layers = int(head.get("num_layers", 4)) if head_type == "lstm" else 1
    fields = dict(
        backbone=family, backbone_path=backbone_path, action_space="continuous", arm_dim=6,
        window_size=window, fwd_pred_next_n=chunk, history_type=history,
        use_hand_rgb=bool(run.get("use_hand_rgb", False)), image_order="hand_first", use_state=False,
        max_text_len=int(tok_cfg.get("max_text_len", 256)),
        use_image_start_end=False, latent_num=latent, head=head_type, head_style="robovlms",
        head_hidden=hidden, head_layers=layers, arm_loss="huber",
        gripper_loss_weight=float(run.get("arm_gripper_loss_ratio", 0.01)),
        freeze_backbone=bool(setup.get("freeze_backbone", False)),
        train_vision=bool(setup.get("train_vision", False)),
        gradient_checkpointing=bool(setup.get("gradient_checkpointing", False)),
        prompt=prompt, prompt_special_tokens=special, sequence_start=start,
        # what RoboVLMs puts around the text: with special tokens the BOS (the sequence start) and EOS; the
        # PaliGemma prompt's leading EOS (the sequence start) and trailing newline
        prompt_trim=[1, 1] if special or start is not None else [0, 0], **norm)
    if family == "kosmos2":  # RoboVLMs' own image transform (BaseRoboVLM.image_processor): CLIP mean / std
        fields.update(image_mean=list(run.get("image_mean", CLIP_MEAN)), image_std=list(run.get("image_std", CLIP_STD)))
    # PaliGemma: RoboVLMs uses the backbone's own image processor, which is what robovlm_ros reads. (It
    # also numbers positions from 0 where PaliGemma's forward starts at 1: rotary positions are relative,
    # so that changes nothing.)
    if setup.get("train_decoder_layers", -1) not in (-1, None):
        fields["train_text_last_n"] = int(setup["train_decoder_layers"])
    if run.get("image_size") is not None:
        fields["image_size"] = int(run["image_size"])
    if resampler:
        fields.update(use_resampler=True, **ROBOVLMS_RESAMPLER)
        rep.mapped["use_vision_resampler"] = "use_resampler, RoboVLMs' resampler sizes"
    for k in ("window_size", "fwd_pred_next_n", "use_hand_rgb", "norm_action", "norm_min", "norm_max",
              "arm_gripper_loss_ratio", "image_size"):
        if k in run:
            rep.mapped[k] = run[k]
    if discrete:
        fields.update(action_space="discrete", history_type=discrete_history, n_bins=int(head.get("n_bin", 256)),
                      bin_style="robovlms", action_token_end=robovlms_action_token_end(tokenizer),
                      **_discrete_prompt(run, family, tokenizer, chunk, rep))
        _discrete_departures(rep, name, history, discrete_history, chunk)
        rep.mapped["act_head"] = (f"discrete, {fields['n_bins']} bins as RoboVLMs' ActionTokenizer (token ids below "
                                  f"{fields['action_token_end']}), frame end {fields['frame_end']!r}, "
                                  f"history_type {discrete_history}")
        rep.mapped["prompt"] = f"{fields['prompt']!r} (RoboVLMs' PhiPromptBuilder)"
        return fields, rep
    if history == "pre":
        # RoboVLMs puts the action token before the prompt's last token and, in pre history, concatenates the
        # frames: that last token closes each frame, and later frames see it
        ids = tokenizer(prompt.format(instruction="x"), add_special_tokens=special)["input_ids"]
        fields["frame_end"] = tokenizer.convert_ids_to_tokens(ids[-1])
    rep.mapped["act_head"] = f"head {head_type}, head_style robovlms, head_hidden {hidden}, head_layers {layers}, " \
                             f"latent_num {latent}, history_type {history}" + \
                             (f", frame end {fields['frame_end']!r}" if history == "pre" else "")
    rep.mapped["tokenizer.tokenizer_type"] = f"prompt {prompt!r}"
    return fields, rep


def _discrete_departures(rep: ImportReport, name: str, history: str, ours: str, chunk: int) -> None:
    rep.departures.append(f"discrete chunk: RoboVLMs' evaluation decodes 7 tokens (one action) although it trains "
                          f"fwd_pred_next_n = {chunk} actions per frame; robovlm_ros decodes the whole chunk, whose "
                          "first action is RoboVLMs'")
    rep.departures.append("discrete decoding: the argmax is taken over the action ids only (RoboVLMs: over the "
                          "whole vocabulary, and an id outside the bins decodes to a clipped bin)")
    if ours == "post":
        theirs = ("as RoboVLMs' post evaluation does" if history == "post" else
                  "where RoboVLMs' pre evaluation puts all window images after one BOS")
        rep.departures.append(f"discrete window: imported as post history, each frame decoded alone, {theirs}; "
                              "RoboVLMs trains the window as one sequence of [BOS] images text actions [EOS] "
                              "frames, robovlm_ros' post training scores frames one by one "
                              "(--discrete-history pre keeps RoboVLMs' training layout)")
    else:
        rep.departures.append("discrete window: imported as pre history, RoboVLMs' training layout (frames see the "
                              "earlier frames and their action tokens); RoboVLMs' evaluation decodes "
                              + ("each frame alone" if history == "post" else
                                 "all window images after one BOS, without their actions"))
    if name == "RoboPaligemma":
        rep.departures.append("RoboVLMs' own discrete PaliGemma evaluation fails (pred_action_discrete calls "
                              "PaliGemma without the attention mask transformers 4.44 requires)")


def _strip_prefix(state: dict) -> dict:
    """Policy keys from a Lightning / DeepSpeed checkpoint: RoboVLMs' trainer holds the policy as
    ``model``; DeepSpeed wraps the module as ``_forward_module`` or ``module``."""
    out = {}
    for k, v in state.items():
        for prefix in ("_forward_module.", "module."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        if k.startswith("model."):
            k = k[len("model."):]
        out[k] = v
    return out


def read_checkpoint(path: str) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise RoboVLMsImportError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
    state = ckpt.get("state_dict", ckpt.get("module", ckpt)) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RoboVLMsImportError(f"{path} holds no state_dict of tensors")
    return _strip_prefix(state)


def _load_backbone(family: str, backbone_path: str, tensors: dict, rep: ImportReport):
    """The HF model from ``backbone_path``'s config with RoboVLMs' backbone tensors, loaded by transformers
    itself so that its renaming of older checkpoint keys applies (RoboVLMs saved them with 4.37 / 4.44)."""
    from transformers import AutoConfig
    from safetensors.torch import save_file

    spec = family_spec(family)
    tmp = tempfile.mkdtemp(prefix="robovlms_backbone_")
    try:
        shutil.copy(os.path.join(backbone_path, "config.json"), tmp)
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(tmp, "model.safetensors"))
        cfg = AutoConfig.from_pretrained(tmp, local_files_only=True)
        if cfg.model_type != spec.model_type:
            _refuse(f"--backbone-path holds a {cfg.model_type!r} model; the run config's policy is {family}")
        spec.fix_config(cfg)
        hf, info = _hf_class(spec).from_pretrained(tmp, config=cfg, local_files_only=True, dtype=torch.float32,
                                                   output_loading_info=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    missing = list(info["missing_keys"])
    tied = set()
    if getattr(hf.config, "tie_word_embeddings", False) or getattr(getattr(hf.config, "text_config", None),
                                                                   "tie_word_embeddings", False):
        tied = {k for k in missing if "lm_head" in k}
    missing = sorted(set(missing) - tied)
    if missing:
        _refuse(f"the checkpoint leaves {len(missing)} backbone tensors unset: {', '.join(missing[:6])}")
    rep.unmapped_tensors += [f"backbone.{k}" for k in info["unexpected_keys"]]
    rep.tensors["backbone"] = len(tensors) - len(info["unexpected_keys"])
    return hf


def oxe_action_bounds(run: dict, stats_path: str, unnorm_key: str | None, rep: ImportReport) -> dict:
    """Raw-unit bounds [7] of the arm for an Open-X policy: RoboVLMs' SimplerEnv evaluation
    (eval/simpler/model_wrapper.py) unnormalises the policy's output with norm_min / norm_max and then with
    the dataset's q01 / q99 (OpenVLA's statistics file, per dataset ``unnorm_key``): two affine maps, so one
    pair of bounds per dimension, lo = q01 + (norm_min + 1) / 2 * (q99 - q01), hi likewise with norm_max
    (dimensions the file's mask leaves out: norm_min / norm_max). Stored as quantile statistics."""
    try:
        with open(stats_path) as f:
            stats = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        _refuse(f"--action-stats {stats_path}: not a readable JSON statistics file ({e})")
    if "action" in stats and unnorm_key is not None:
        _refuse(f"--action-stats {stats_path} holds one dataset's statistics: --unnorm-key {unnorm_key} does not apply")
    if "action" not in stats:
        if unnorm_key is None or unnorm_key not in stats:
            _refuse(f"--action-stats {stats_path} holds statistics for {sorted(stats)}: name one with --unnorm-key")
        stats = stats[unnorm_key]
    act = stats.get("action") or {}
    if not all(len(act.get(k) or []) >= 6 for k in ("q01", "q99")):
        _refuse(f"--action-stats {stats_path}: action q01 / q99 for the 6 arm dimensions are missing")
    lo_n, hi_n = (float(run["norm_min"]), float(run["norm_max"])) if run.get("norm_action") else (-1.0, 1.0)
    mask = act.get("mask") or [True] * len(act["q01"])
    lo, hi = [], []
    for i in range(7):
        q01, q99 = (float(act["q01"][i]), float(act["q99"][i])) if i < len(act["q01"]) else (-1.0, 1.0)
        use = bool(mask[i]) if i < len(mask) else False
        lo.append(q01 + (lo_n + 1) / 2 * (q99 - q01) if use else lo_n)
        hi.append(q01 + (hi_n + 1) / 2 * (q99 - q01) if use else hi_n)
    rep.mapped["--action-stats"] = (f"quantile bounds from {os.path.basename(stats_path)}"
                                    f"{'' if unnorm_key is None else ' [' + unnorm_key + ']'} composed with "
                                    f"norm_min / norm_max {lo_n} / {hi_n}")
    return {"action": {"q01": lo, "q99": hi}}


def import_robovlms(run_path: str, ckpt_path: str, backbone_path: str, out_dir: str,
                    discrete_history: str = "post", action_stats: str | None = None,
                    unnorm_key: str | None = None) -> ImportReport:
    """Write a robovlm_ros checkpoint directory from a RoboVLMs run config and checkpoint.
    ``action_stats``: an Open-X policy's dataset statistics (see oxe_action_bounds)."""
    from .backbones import Backbone
    from .robovlm import RoboVLM
    from .text_tokenizer import load_tokenizer

    with open(run_path) as f:
        run = json.load(f)
    if not os.path.isdir(backbone_path):
        raise RoboVLMsImportError(f"--backbone-path {backbone_path!r} is not a directory")
    tokenizer = load_tokenizer(backbone_path)
    fields, rep = config_from_robovlms(run, backbone_path, tokenizer, discrete_history)
    normalizer = None
    if action_stats is not None:
        from .normalization import Normalizer

        fields.update(norm_mode="quantile", clip_low=None)
        normalizer = Normalizer(mode="quantile", stats=oxe_action_bounds(run, action_stats, unnorm_key, rep))
    # the policy is float32: a bfloat16 or float16 checkpoint is widened first, so that mapping arithmetic
    # (the PaliGemma action token's scale) is float32 too
    state = {k: v.float() if v.is_floating_point() else v for k, v in read_checkpoint(ckpt_path).items()}
    backbone_tensors = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    family = fields["backbone"]
    hf = _load_backbone(family, backbone_path, backbone_tensors, rep)
    config = PolicyConfig(**{**fields, "backbone_path": None, "backbone_config": {}})
    model = RoboVLM(config, tokenizer=tokenizer, normalizer=normalizer, backbone=Backbone(config.backbone, hf))
    _check_prompt(model, tokenizer, config)
    ours = model.state_dict()
    new = {}
    skipped_buffers = 0
    # transformers 5 scales Gemma's token embeddings inside the embedding layer (its embed_scale,
    # sqrt(hidden)); 4.44 scaled every input embedding in the decoder, RoboVLMs' learned action token
    # included. The token is stored pre-scaled so the decoder sees the same vector.
    scale = getattr(model.backbone.embed_tokens, "embed_scale", None)
    scale = 1.0 if scale is None else float(scale)
    if scale != 1.0 and "action_token" in state:
        rep.departures.append(f"action token stored multiplied by {scale:.6g}: transformers 5 scales {family} "
                              "token embeddings in the embedding layer, not in the decoder")
    for k, v in state.items():
        if k.startswith("backbone."):
            continue
        if k == "action_token":  # RoboVLMs: one token [D], repeated latent times
            new["action_tokens"] = (v * scale).unsqueeze(0).expand(config.latent_num, -1).clone()
        elif k.startswith("vision_resampler."):  # the same module names as RoboVLMs' resampler
            new["resampler." + k[len("vision_resampler."):]] = v
        elif k.startswith("act_head."):
            target = "head." + k[len("act_head."):]
            if target in ours:
                new[target] = v
            elif k.endswith((".attn.bias", ".attn.masked_bias")):  # GPT-2's causal-mask buffers, no values
                skipped_buffers += 1
            else:
                rep.unmapped_tensors.append(k)
        else:
            rep.unmapped_tensors.append(k)
    head_keys = {k for k in ours if not k.startswith("backbone.")}
    missing = sorted(head_keys - set(new))
    if missing:
        _refuse(f"the checkpoint leaves {len(missing)} policy tensors unset: {', '.join(missing[:6])}")
    shapes = [f"{k}: {tuple(v.shape)} vs {tuple(ours[k].shape)}" for k, v in new.items() if v.shape != ours[k].shape]
    if shapes:
        _refuse(f"tensor shapes differ from the run config's policy: {'; '.join(shapes[:4])}")
    model.load_state_dict(new, strict=False)
    rep.tensors.update(policy=len(new), buffers_skipped=skipped_buffers, unmapped=len(rep.unmapped_tensors))
    model.save_pretrained(out_dir)
    return rep


def _check_prompt(model, tokenizer, config: PolicyConfig) -> None:
    """The tokens the trim removes from the front of RoboVLMs' prompt must be the sequence start the
    model puts there itself."""
    text = config.prompt.format(instruction="x")
    ids = tokenizer(text, add_special_tokens=config.prompt_special_tokens)["input_ids"]
    first = config.prompt_trim[0]
    if first and ids[:first] != [model.bos_id]:
        _refuse(f"RoboVLMs' prompt {config.prompt!r} starts with token {ids[:first]} with this tokenizer, not the "
                f"sequence start {model.bos_id}: the backbone directory's tokenizer differs from the run's")
