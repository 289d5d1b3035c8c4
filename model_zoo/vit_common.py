"""Shared pieces for ViT adapters built on timm modules.

``timm_vit_features`` runs a timm ViT once and returns the final normed tokens,
the normed tokens of the requested blocks, and optionally the MaskCLIP-style
"value" tokens (the last block evaluated with attention replaced by its value
projection, as the official TIPS zero-shot segmentation code does).
"""

from __future__ import annotations

import torch
from torch import nn

from tips_eval.encoder import Features


def value_block_forward(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Evaluate a pre-norm ViT block with attention replaced by the value path.

    x + ls1(proj(v(norm1 x))), then the block's FFN residual, like TIPS's
    ``encode_image_value_attention``. Works for timm ``Block`` modules.
    """
    attn = blk.attn
    if not hasattr(attn, "qkv") or getattr(attn, "qkv", None) is None:
        raise NotImplementedError(f"value features need a fused qkv attention, got {type(attn).__name__}")
    xn = blk.norm1(x)
    b, n, c = xn.shape
    qkv = attn.qkv(xn).reshape(b, n, 3, c)
    v = qkv[:, :, 2]
    v = getattr(attn, "norm", nn.Identity())(v)
    v = attn.proj(v)
    x = x + blk.ls1(v)
    return x + blk.ls2(blk.mlp(blk.norm2(x)))


def timm_vit_features(model: nn.Module, pixels: torch.Tensor, layers: list[int], want_value: bool):
    """(final normed tokens, [normed tokens of each requested block], value tokens|None).

    Tokens keep the prefix (CLS/registers) in front: (B, prefix + h*w, D).
    """
    x = model.patch_embed(pixels)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    wanted = set(layers)
    taken: dict[int, torch.Tensor] = {}
    value = None
    last = len(model.blocks) - 1
    for i, blk in enumerate(model.blocks):
        if want_value and i == last:
            value = model.norm(value_block_forward(blk, x))
        x = blk(x)
        if i in wanted:
            taken[i] = model.norm(x)
    return model.norm(x), [taken[i] for i in layers], value


def interpolate_grid(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int], mode: str,
                     antialias: bool) -> torch.Tensor:
    """Resize a (1, gh*gw, D) positional grid to (1, nh*nw, D) (no prefix tokens)."""
    if tuple(old) == tuple(new):
        return pos
    d = pos.shape[-1]
    grid = pos.float().reshape(1, old[0], old[1], d).permute(0, 3, 1, 2)
    grid = nn.functional.interpolate(grid, size=tuple(new), mode=mode, antialias=antialias,
                                     align_corners=False if mode in ("bilinear", "bicubic") else None)
    return grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], d).to(pos.dtype)


def split_tokens(tokens: torch.Tensor, num_prefix: int, grid: tuple[int, int]):
    """(B, P + h*w, D) -> prefix (B, P, D), patches (B, h, w, D)."""
    b, _, d = tokens.shape
    return tokens[:, :num_prefix], tokens[:, num_prefix:].reshape(b, grid[0], grid[1], d)


def features_from_tokens(final: torch.Tensor, taken: list[torch.Tensor], value: torch.Tensor | None,
                         num_prefix: int, grid: tuple[int, int], global_tokens, names) -> Features:
    """Assemble :class:`Features` from normed token sequences (prefix first).

    ``global_tokens`` is a tensor (B, G, D) or a callable ``prefix -> (B, G, D)``; each
    layer's cls is its first prefix token (the mean patch when the model has no prefix).
    """
    prefix, patches = split_tokens(final, num_prefix, grid)
    layers = []
    for t in taken:
        pre, pat = split_tokens(t, num_prefix, grid)
        layers.append((pre[:, 0] if pre.shape[1] else pat.mean(dim=(1, 2)), pat))
    value_tokens = split_tokens(value, num_prefix, grid)[1] if value is not None else None
    glob = global_tokens(prefix) if callable(global_tokens) else global_tokens
    return Features(glob, patches, names, layers or None, value_tokens)
