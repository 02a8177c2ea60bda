"""Action heads: VLM action-token features -> a chunk of future actions per frame.

Input  ``features``        [B, W, latent_num, D]  hidden states at the learnable action tokens
Output ``arm``             [B, W, chunk, arm_dim]  in (-1, 1), matching the normalised targets (tanh)
       ``gripper_logits``  [B, W, chunk]           open/close logits for BCE-with-logits

The three kinds differ only in how (and whether) they mix frames across the window:
  * ``mlp``  no mixing: frame t sees frame t only
  * ``lstm`` recurrent over W, causal by construction
  * ``gpt``  small causal transformer over W with learned time positions
"""
from __future__ import annotations

import torch
from torch import nn

HEAD_KINDS = ("mlp", "lstm", "gpt")


def pack_rnn(rnn: nn.RNNBase) -> None:
    """Put an RNN's weights on CUDA into cuDNN's one contiguous buffer (``flatten_parameters``), bf16 too.
    torch packs after ``.to()`` only dtypes its Python gate (``torch.backends.cudnn.is_acceptable``) lists,
    not bf16, while its C++ runs a bf16 RNN through cuDNN: unpacked, every call copies the weights into one
    buffer and warns ("not part of single contiguous chunk of memory", at every step of the H200 bench).
    The same packing as torch's, without that gate; where cuDNN refuses it the weights stay as they were."""
    rnn.flatten_parameters()
    weights = rnn._flat_weights
    if not weights or not all(isinstance(w, torch.Tensor) and w.is_cuda and w.dtype == torch.bfloat16
                              for w in weights):
        return
    if len({w.data_ptr() for w in weights}) != len(weights) or not torch._use_cudnn_rnn_flatten_weight():
        return  # aliased weights: torch's own copying path
    from torch.backends.cudnn import rnn as cudnn_rnn

    try:
        with torch.cuda.device_of(weights[0]), torch.no_grad():
            torch._cudnn_rnn_flatten_weight(weights, (4 if rnn.bias else 2) + (rnn.proj_size > 0), rnn.input_size,
                                            cudnn_rnn.get_cudnn_mode(rnn.mode), rnn.hidden_size, rnn.proj_size,
                                            rnn.num_layers, rnn.batch_first, bool(rnn.bidirectional))
    except RuntimeError:
        pass  # a torch / cuDNN without bf16 RNNs: it runs them unpacked, as before


def pool_latents(features: torch.Tensor) -> torch.Tensor:
    """[B, W, latent_num, D] -> [B, W, D]: max over the action tokens, as RoboVLMs does."""
    return features.max(dim=2).values


def _mlp(in_dim: int, hidden: int, layers: int, dropout: float) -> nn.Sequential:
    """``layers`` x (Linear, ReLU, Dropout); output width ``hidden``."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*mods)


class ActionOutput(nn.Module):
    """The one output layer every head ends with: [B, W, H] -> (arm, gripper_logits)."""

    def __init__(self, in_dim: int, chunk: int, arm_dim: int):
        super().__init__()
        self.chunk, self.arm_dim = chunk, arm_dim
        self.arm = nn.Linear(in_dim, chunk * arm_dim)
        self.gripper = nn.Linear(in_dim, chunk)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, W, _ = h.shape
        arm = torch.tanh(self.arm(h)).view(B, W, self.chunk, self.arm_dim)  # [B, W, chunk, arm_dim]
        gripper = self.gripper(h).view(B, W, self.chunk)  # [B, W, chunk]
        return arm, gripper


class MLPHead(nn.Module):
    """Per-frame MLP: no information crosses frames, so a frame's action ignores its history."""

    def __init__(self, hidden_size, chunk, arm_dim, head_hidden, head_layers, dropout):
        super().__init__()
        self.mlp = _mlp(hidden_size, head_hidden, head_layers, dropout)
        self.out = ActionOutput(head_hidden, chunk, arm_dim)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.out(self.mlp(pool_latents(features)))  # [B, W, D] -> [B, W, H] -> outputs


class LSTMHead(nn.Module):
    """LSTM over the window: frame t sees frames <= t, so it can use motion history."""

    def __init__(self, hidden_size, chunk, arm_dim, head_hidden, head_layers, dropout):
        super().__init__()
        self.lstm = nn.LSTM(hidden_size, head_hidden, head_layers, batch_first=True,
                            dropout=dropout if head_layers > 1 else 0.0)
        self.mlp = _mlp(head_hidden, head_hidden, 1, dropout)
        self.out = ActionOutput(head_hidden, chunk, arm_dim)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, _ = self.lstm(pool_latents(features))  # [B, W, D] -> [B, W, H]
        return self.out(self.mlp(h))


class GPTHead(nn.Module):
    """Causal transformer over the window with learned time positions (frame t attends to <= t).

    Accepts a partly filled window (W <= window_size): positions are taken from the start, so the
    output for the first W frames does not depend on how many frames follow.
    """

    def __init__(self, hidden_size, window_size, chunk, arm_dim, head_hidden, head_layers, dropout):
        super().__init__()
        self.window_size = window_size
        self.proj = nn.Linear(hidden_size, head_hidden)
        self.pos = nn.Parameter(torch.randn(window_size, head_hidden) * 0.02)  # [window_size, H]
        layer = nn.TransformerEncoderLayer(head_hidden, nhead=4, dim_feedforward=4 * head_hidden,
                                           dropout=dropout, batch_first=True, norm_first=True)
        # norm_first layers leave the residual stream un-normalised: one final LayerNorm.
        self.blocks = nn.TransformerEncoder(layer, head_layers, norm=nn.LayerNorm(head_hidden),
                                            enable_nested_tensor=False)
        self.out = ActionOutput(head_hidden, chunk, arm_dim)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        W = features.shape[1]
        if W > self.window_size:
            raise ValueError(f"GPT head got a window of {W} frames, but window_size is {self.window_size}")
        h = self.proj(pool_latents(features)) + self.pos[:W]  # [B, W, H]
        mask = nn.Transformer.generate_square_subsequent_mask(W, device=h.device, dtype=h.dtype)
        h = self.blocks(h, mask=mask, is_causal=True)  # [B, W, H]
        return self.out(h)


# ---------------------------------------------------------------------------------------------------
# RoboVLMs' heads (robovlms/model/policy_head/base_policy.py), for policies imported from RoboVLMs and
# for training new ones the same way: the latent action tokens are concatenated (RoboVLMs' "pooling"
# down-sampling is an AdaptiveMaxPool1d to as many outputs as there are tokens, which keeps each one),
# and the arm and the gripper each get a fixed-width MLP (1024-512-256; tanh on the arm). Module names
# follow RoboVLMs' so an imported checkpoint maps tensor for tensor (model/robovlms_import.py).
# ---------------------------------------------------------------------------------------------------
ROBOVLMS_MLP_WIDTHS = (1024, 512, 256)


class RoboVLMsMLP(nn.Module):
    """RoboVLMs' MLPTanhHead (``tanh=True``) / MLPSigmoidHead (logits: its sigmoid is commented out)."""

    def __init__(self, in_dim: int, out_dim: int, tanh: bool):
        super().__init__()
        mods: list[nn.Module] = []
        for width in ROBOVLMS_MLP_WIDTHS:
            mods += [nn.Linear(in_dim, width), nn.ReLU()]
            in_dim = width
        mods.append(nn.Linear(in_dim, out_dim))
        if tanh:
            mods.append(nn.Tanh())
        self.mlp = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class RoboVLMsOutput(nn.Module):
    """[B, W, H] -> arm [B, W, chunk, arm_dim] in (-1, 1), gripper logits [B, W, chunk]."""

    def __init__(self, in_dim: int, chunk: int, arm_dim: int):
        super().__init__()
        self.chunk, self.arm_dim = chunk, arm_dim
        self.actions = RoboVLMsMLP(in_dim, chunk * arm_dim, tanh=True)
        self.gripper = RoboVLMsMLP(in_dim, chunk, tanh=False)

    def outputs(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, W, _ = h.shape
        return self.actions(h).view(B, W, self.chunk, self.arm_dim), self.gripper(h).view(B, W, self.chunk)


def concat_latents(features: torch.Tensor) -> torch.Tensor:
    """[B, W, latent_num, D] -> [B, W, latent_num * D], token-major as RoboVLMs' "(n d)"."""
    return features.flatten(2)


class RoboVLMsLSTMHead(RoboVLMsOutput):
    """RoboVLMs' LSTMDecoder: LSTM(latent*D -> latent*H, layers) over the window, then the two MLPs."""

    def __init__(self, hidden_size, latent_num, chunk, arm_dim, head_hidden, head_layers, dropout):
        super().__init__(head_hidden * latent_num, chunk, arm_dim)
        self.rnn = nn.LSTM(hidden_size * latent_num, head_hidden * latent_num, head_layers, batch_first=True,
                           dropout=dropout)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, _ = self.rnn(concat_latents(features))  # [B, W, latent*H]
        return self.outputs(h)


class RoboVLMsFCHead(RoboVLMsOutput):
    """RoboVLMs' FCDecoder: per frame, Linear(n, n/2) ReLU Linear(n/2, latent*H) with n = latent*D."""

    def __init__(self, hidden_size, latent_num, chunk, arm_dim, head_hidden):
        super().__init__(head_hidden * latent_num, chunk, arm_dim)
        n = hidden_size * latent_num
        self.mlp = nn.Sequential(nn.Linear(n, n // 2), nn.ReLU(), nn.Linear(n // 2, head_hidden * latent_num))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.outputs(self.mlp(concat_latents(features)))


class RoboVLMsGPTHead(RoboVLMsOutput):
    """RoboVLMs' GPTDecoder: Linear(D, H) (identity when equal), a GPT-2 of 8 layers and 8 heads with
    learned positions over the window (transformers' GPT2Model: the blocks of RoboVLMs'
    trajectory_gpt2.py, which is GPT-2 without token embeddings), then the two MLPs."""

    def __init__(self, hidden_size, latent_num, window_size, chunk, arm_dim, head_hidden):
        from transformers import GPT2Config, GPT2Model

        super().__init__(head_hidden * latent_num, chunk, arm_dim)
        if latent_num > 1 and hidden_size != head_hidden:
            raise ValueError("RoboVLMs' GPT head takes several latent tokens only when head_hidden equals the "
                             "backbone's hidden size (its input projection is hidden -> head_hidden)")
        self.window_size = window_size
        self.fc = nn.Linear(hidden_size, head_hidden) if hidden_size != head_hidden else nn.Identity()
        width = head_hidden * latent_num
        self.gpt = GPT2Model(GPT2Config(n_layer=8, n_head=8, n_embd=width, n_positions=window_size, vocab_size=1,
                                        bos_token_id=None, eos_token_id=None))
        del self.gpt.wte  # features come in as embeddings; GPT-2's token table is never used

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        W = features.shape[1]
        if W > self.window_size:
            raise ValueError(f"GPT head got a window of {W} frames, but window_size is {self.window_size}")
        h = self.gpt(inputs_embeds=self.fc(concat_latents(features))).last_hidden_state  # [B, W, latent*H]
        return self.outputs(h)


def build_head(kind: str, hidden_size: int, latent_num: int, window_size: int, chunk: int,
               arm_dim: int = 6, head_hidden: int = 256, head_layers: int = 2,
               dropout: float = 0.0, style: str = "robovlm_ros") -> nn.Module:
    """Build an action head; every head maps [B, W, latent_num, D] -> (arm, gripper_logits).

    ``style`` robovlm_ros: the latent tokens are pooled (max) and a single linear layer gives the outputs;
    robovlms: RoboVLMs' own heads (above).
    """
    if style == "robovlms":
        if kind == "lstm":
            return RoboVLMsLSTMHead(hidden_size, latent_num, chunk, arm_dim, head_hidden, head_layers, dropout)
        if kind == "mlp":
            return RoboVLMsFCHead(hidden_size, latent_num, chunk, arm_dim, head_hidden)
        if kind == "gpt":
            return RoboVLMsGPTHead(hidden_size, latent_num, window_size, chunk, arm_dim, head_hidden)
    if kind == "mlp":
        return MLPHead(hidden_size, chunk, arm_dim, head_hidden, head_layers, dropout)
    if kind == "lstm":
        return LSTMHead(hidden_size, chunk, arm_dim, head_hidden, head_layers, dropout)
    if kind == "gpt":
        return GPTHead(hidden_size, window_size, chunk, arm_dim, head_hidden, head_layers, dropout)
    raise ValueError(f"unknown action head kind {kind!r}; choose one of {', '.join(HEAD_KINDS)}")
