"""An independent, loop-level re-statement of the official TIPS math for tests.

Written from the official code's description (DINOv2 blocks, CLS position kept,
bilinear-antialias grid resize; text: scaled embeddings, sinusoids, masked
ReLU MLP, mean pooling), with plain torch ops and none of the project's
modules, so a conversion or wiring error in the zoo shows up as a mismatch.
Also writes random checkpoints in the official key layout.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def random_vision_checkpoint(rng, width=48, depth=2, patch=8, grid=4, registers=1, swiglu=False, hidden=None):
    hidden = hidden or 4 * width
    r = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    sd = {"cls_token": r(1, 1, width), "pos_embed": r(1, 1 + grid * grid, width), "mask_token": r(1, width),
          "patch_embed.proj.weight": r(width, 3, patch, patch), "patch_embed.proj.bias": r(width),
          "norm.weight": 1 + r(width), "norm.bias": r(width)}
    if registers:
        sd["register_tokens"] = r(1, registers, width)
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + r(width), b + "norm1.bias": r(width),
                   b + "attn.qkv.weight": r(3 * width, width), b + "attn.qkv.bias": r(3 * width),
                   b + "attn.proj.weight": r(width, width), b + "attn.proj.bias": r(width),
                   b + "ls1.gamma": r(width), b + "norm2.weight": 1 + r(width), b + "norm2.bias": r(width),
                   b + "ls2.gamma": r(width)})
        if swiglu:
            sd.update({b + "mlp.w12.weight": r(2 * hidden, width), b + "mlp.w12.bias": r(2 * hidden),
                       b + "mlp.w3.weight": r(width, hidden), b + "mlp.w3.bias": r(width)})
        else:
            sd.update({b + "mlp.fc1.weight": r(hidden, width), b + "mlp.fc1.bias": r(hidden),
                       b + "mlp.fc2.weight": r(width, hidden), b + "mlp.fc2.bias": r(width)})
    return sd


def reference_vision(sd, pixels, heads, layers=()):
    """(cls1 (B,D), other prefix tokens (B,R,D), patches (B,N,D), {layer: patches}) like the official model."""
    t = {k: torch.from_numpy(v) for k, v in sd.items()}
    width = t["cls_token"].shape[-1]
    patch = t["patch_embed.proj.weight"].shape[-1]
    b, _, h, w = pixels.shape
    x = F.conv2d(pixels, t["patch_embed.proj.weight"], t["patch_embed.proj.bias"], stride=patch)
    gh, gw = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    pos = t["pos_embed"]
    n0 = int(math.isqrt(pos.shape[1] - 1))
    patch_pos = pos[:, 1:]
    if (gh, gw) != (n0, n0):
        grid = patch_pos.reshape(1, n0, n0, width).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bilinear", antialias=True, align_corners=False)
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, width)
    x = torch.cat([t["cls_token"].expand(b, -1, -1), x], 1) + torch.cat([pos[:, :1], patch_pos], 1)
    regs = t.get("register_tokens")
    n_reg = 0 if regs is None else regs.shape[1]
    if n_reg:
        x = torch.cat([x[:, :1], regs.expand(b, -1, -1), x[:, 1:]], 1)
    ln = lambda y, p: F.layer_norm(y, (width,), t[p + ".weight"], t[p + ".bias"], eps=1e-6)  # noqa: E731
    depth = 1 + max(int(k.split(".")[1]) for k in t if k.startswith("blocks."))
    taken = {}
    for i in range(depth):
        p = f"blocks.{i}."
        y = ln(x, p + "norm1")
        qkv = y @ t[p + "attn.qkv.weight"].T + t[p + "attn.qkv.bias"]
        q, k, v = qkv.reshape(b, -1, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        att = ((q * (width // heads) ** -0.5) @ k.transpose(-1, -2)).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, -1, width)
        x = x + (y @ t[p + "attn.proj.weight"].T + t[p + "attn.proj.bias"]) * t[p + "ls1.gamma"]
        y = ln(x, p + "norm2")
        if p + "mlp.w12.weight" in t:
            y12 = y @ t[p + "mlp.w12.weight"].T + t[p + "mlp.w12.bias"]
            a, g = y12.chunk(2, dim=-1)
            y = (F.silu(a) * g) @ t[p + "mlp.w3.weight"].T + t[p + "mlp.w3.bias"]
        else:
            y = F.gelu(y @ t[p + "mlp.fc1.weight"].T + t[p + "mlp.fc1.bias"])
            y = y @ t[p + "mlp.fc2.weight"].T + t[p + "mlp.fc2.bias"]
        x = x + y * t[p + "ls2.gamma"]
        if i in layers:
            taken[i] = ln(x, "norm")[:, 1 + n_reg:]
    xn = ln(x, "norm")
    return xn[:, 0], xn[:, 1:1 + n_reg], xn[:, 1 + n_reg:], taken


def random_text_checkpoint(rng, vocab=40, width=32, layers=2, mlp=64):
    r = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    sd = {"token_embedding.weight": r(vocab, width), "ln_final.weight": 1 + r(width), "ln_final.bias": r(width),
          "temperature": np.float32(0.01)}
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        sd.update({p + "attn.in_proj_weight": r(3 * width, width), p + "attn.in_proj_bias": r(3 * width),
                   p + "attn.out_proj.weight": r(width, width), p + "attn.out_proj.bias": r(width),
                   p + "ln_1.weight": 1 + r(width), p + "ln_1.bias": r(width),
                   p + "mlp.c_fc.weight": r(mlp, width), p + "mlp.c_fc.bias": r(mlp),
                   p + "mlp.c_proj.weight": r(width, mlp), p + "mlp.c_proj.bias": r(width),
                   p + "ln_2.weight": 1 + r(width), p + "ln_2.bias": r(width)})
    return sd


def reference_text(sd, ids, paddings, heads):
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items() if k != "temperature"}
    width = t["token_embedding.weight"].shape[1]
    b, n = ids.shape
    x = t["token_embedding.weight"][ids] * width ** 0.5
    half = width // 2
    inv = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / max(half - 1, 1)))
    ang = torch.arange(n, dtype=torch.float32)[:, None] * inv[None]
    x = x + torch.cat([ang.sin(), ang.cos()], 1)[None]
    keep = (paddings == 0).float()
    bias = torch.where(paddings.bool(), float("-inf"), 0.0)[:, None, None, :]
    layers = 1 + max(int(k.split(".")[2]) for k in t if k.startswith("transformer.resblocks."))
    ln = lambda y, p: F.layer_norm(y, (width,), t[p + ".weight"], t[p + ".bias"])  # noqa: E731
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        y = ln(x, p + "ln_1")
        qkv = y @ t[p + "attn.in_proj_weight"].T + t[p + "attn.in_proj_bias"]
        q, k, v = qkv.reshape(b, n, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        att = ((q @ k.transpose(-1, -2)) / math.sqrt(width // heads) + bias).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, n, width)
        x = x + y @ t[p + "attn.out_proj.weight"].T + t[p + "attn.out_proj.bias"]
        y = ln(x, p + "ln_2")
        y = torch.relu(y @ t[p + "mlp.c_fc.weight"].T + t[p + "mlp.c_fc.bias"]) * keep[..., None]
        x = x + (y @ t[p + "mlp.c_proj.weight"].T + t[p + "mlp.c_proj.bias"]) * keep[..., None]
    x = ln(x, "ln_final") * keep[..., None]
    return x.sum(1) / (keep.sum(1, keepdim=True) + 1e-8)
