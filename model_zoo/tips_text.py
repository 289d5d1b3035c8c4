"""TIPS text tower and SentencePiece tokenizer (PyTorch, no TensorFlow).

Function-identical to the official ``pytorch/text_encoder.py``: token
embedding scaled by sqrt(width), sinusoidal positions, pre-norm transformer
blocks (ReLU MLP, padded positions masked out of attention keys and MLP
outputs), final LayerNorm, mean pooling over non-padding tokens.
One deliberate difference: padding is marked per text even when the batch's
longest text is cut at 64 tokens (the official tokenizer then marks none).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from tips_eval.errors import CheckpointError, TokenizerError

MAX_LEN = 64
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(1, length, dim) sin/cos signal, timescales 1..10,000 (official PositionalEmbedding)."""
    num = dim // 2
    inc = math.log(10_000.0) / max(num - 1, 1)
    inv = torch.exp(torch.arange(num, dtype=torch.float32) * -inc)
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    sig = torch.cat([torch.sin(t), torch.cos(t)], dim=1)
    if dim % 2:
        sig = nn.functional.pad(sig, (0, 1))
    return sig[None]


class _MaskedMlp(nn.Module):
    def __init__(self, width: int, mlp_dim: int):
        super().__init__()
        self.c_fc = nn.Linear(width, mlp_dim)
        self.c_proj = nn.Linear(mlp_dim, width)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c_fc(x)) * keep
        return self.c_proj(x) * keep


class _TextBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_dim: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = _MaskedMlp(width, mlp_dim)
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, pad: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x), keep)


class _Resblocks(nn.Module):  # keeps the official key names: transformer.resblocks.N.*
    def __init__(self, width: int, layers: int, heads: int, mlp_dim: int):
        super().__init__()
        self.resblocks = nn.ModuleList(_TextBlock(width, heads, mlp_dim) for _ in range(layers))


class TipsTextTower(nn.Module):
    """The text transformer; ``forward(ids, paddings) -> (B, width)``, not normalised."""

    def __init__(self, vocab_size: int, width: int, layers: int, heads: int, mlp_dim: int):
        super().__init__()
        if width % heads:
            raise CheckpointError(f"text width {width} is not divisible by text_num_heads={heads}")
        self.width, self.heads = width, heads
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.transformer = _Resblocks(width, layers, heads, mlp_dim)
        self.ln_final = nn.LayerNorm(width)

    def forward(self, ids: torch.Tensor, paddings: torch.Tensor) -> torch.Tensor:
        pad = paddings.to(torch.bool)
        keep = (~pad).to(self.ln_final.weight.dtype)[..., None]
        x = self.token_embedding(ids) * math.sqrt(self.width)
        x = x + sinusoidal_positions(ids.shape[1], self.width).to(x.device, x.dtype)
        # A text with no tokens at all would make every attention row -inf
        # (NaN); the official pooling then returns zeros. Unmask it here and
        # zero it below, so the rest of the batch is unaffected either way.
        empty = pad.all(dim=1)
        attn_pad = pad.clone()
        attn_pad[empty] = False
        for blk in self.transformer.resblocks:
            x = blk(x, attn_pad, keep)
        x = self.ln_final(x)
        x = torch.where(pad[..., None], torch.zeros_like(x), x)
        valid = (1.0 - paddings.to(x.dtype)).sum(dim=1, keepdim=True) + 1e-8
        return x.sum(dim=1) / valid

    @staticmethod
    def config_from_state_dict(sd: dict) -> dict:
        """vocab, width, layers, mlp_dim from the official text checkpoint shapes."""
        need = ["token_embedding.weight", "ln_final.weight", "transformer.resblocks.0.mlp.c_fc.weight"]
        missing = [k for k in need if k not in sd]
        if missing:
            hint = "this looks like a TIPS image checkpoint" if "cls_token" in sd else None
            raise CheckpointError(f"text checkpoint is missing {', '.join(missing)}", hint=hint)
        vocab, width = sd["token_embedding.weight"].shape
        layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks."))
        mlp_dim = sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        return dict(vocab_size=int(vocab), width=int(width), layers=layers, mlp_dim=int(mlp_dim))


class TipsTokenizer:
    """SentencePiece tokenizer: ASCII lower-casing (as tf.strings.lower), no BOS/EOS,
    cut at ``max_len``, padded with id 0; returns (ids, paddings) int64, 1 = padding."""

    def __init__(self, path: str | os.PathLike, max_len: int = MAX_LEN):
        import sentencepiece as spm

        p = Path(path)
        if not p.is_file():
            raise TokenizerError(f"tokenizer file not found: {p}", hint="TIPS uses tokenizer.model (SentencePiece)")
        self.path = p
        self.max_len = max_len
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.load(str(p))
        except (RuntimeError, OSError) as e:
            raise TokenizerError(f"{p} is not a SentencePiece model ({str(e).splitlines()[0][:120]})",
                                 hint="pass the tokenizer.model released with TIPS") from None
        self.vocab_size = self.sp.get_piece_size()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode([str(t).translate(_ASCII_LOWER) for t in texts])

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        ids = np.zeros((len(texts), self.max_len), dtype=np.int64)
        pads = np.ones((len(texts), self.max_len), dtype=np.int64)
        for i, toks in enumerate(self.encode(texts)):
            toks = toks[: self.max_len]
            ids[i, : len(toks)] = toks
            pads[i, : len(toks)] = 0
        return torch.from_numpy(ids), torch.from_numpy(pads)


class ByteTokenizer:
    """Fallback for random-weight TIPS towers with no tokenizer file: UTF-8 bytes + 3.

    Same output format as :class:`TipsTokenizer`; only meant for offline demos
    and tests, and labelled so in records.
    """

    vocab_size = 259
    path = None

    def __init__(self, max_len: int = MAX_LEN):
        self.max_len = max_len

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        ids = np.zeros((len(texts), self.max_len), dtype=np.int64)
        pads = np.ones((len(texts), self.max_len), dtype=np.int64)
        for i, t in enumerate(texts):
            toks = [b + 3 for b in str(t).translate(_ASCII_LOWER).encode("utf-8")][: self.max_len]
            ids[i, : len(toks)] = toks
            pads[i, : len(toks)] = 0
        return torch.from_numpy(ids), torch.from_numpy(pads)
