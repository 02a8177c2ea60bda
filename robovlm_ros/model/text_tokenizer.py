"""Tokenizers: the tiny byte-level one for tiny backbones, and loading a real one from disk.

A tiny random-weight backbone still needs a real ``PreTrainedTokenizerFast`` so that the
checkpoint directory has the same shape as one made from real weights (tokenizer files travel
with the model). Bytes as tokens need no training data and no download, and cover any text.
"""
from __future__ import annotations

import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]  # ids 0..3, matching the tiny configs' pad/bos/eos
# after the bytes (ids 260..263): the image start / end tokens of the families that have them
# (backbones.FamilySpec.image_markers finds them by name, as in the real tokenizers)
IMAGE_MARKERS = ["<image>", "</image>", "<fake_token_around_image>", "<global-img>"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: 4 special tokens, 256 byte tokens, 4 image marker tokens (vocabulary 264)."""
    byte_tokens = list(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(byte_tokens))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        padding_side="left",
    )
    fast.add_special_tokens({"additional_special_tokens": IMAGE_MARKERS})
    return fast


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The tokenizer saved beside a backbone or checkpoint (never downloaded)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no tokenizer directory at {path!r}")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok
