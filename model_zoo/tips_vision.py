"""TIPS image tower on timm's VisionTransformer, loaded from the official ``.npz``.

The architecture is read off the checkpoint's shapes (width, depth, patch,
FFN type and hidden size, register count, positional grid, biases, layer
scale); only the head count is not in the weights (``num_heads``).
Positional embeddings are resized the official way: only the patch grid,
bilinear with antialias and no offset (timm's default bicubic would differ).
"""

from __future__ import annotations

import math
import re
from functools import partial

import torch
from timm.layers import GluMlp, Mlp
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from tips_eval.errors import CheckpointError

from .vit_common import interpolate_grid

#: head counts of the released widths (image and text alike)
RELEASED_HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16, 1536: 24}


def default_heads(width: int, what: str, arg: str) -> int:
    if width in RELEASED_HEADS:
        return RELEASED_HEADS[width]
    if width % 64 == 0:
        return width // 64
    raise CheckpointError(
        f"{what} width {width} is not a released TIPS width and not a multiple of 64",
        hint=f"pass {arg}= to load_encoder",
    )


def _exact_mlp(hidden: int, swiglu: bool):
    """An mlp_layer for timm's Block that ignores mlp_ratio rounding."""

    def build(in_features, hidden_features=None, act_layer=None, norm_layer=None, bias=True, drop=0.0, **kw):
        if swiglu:
            return GluMlp(in_features, 2 * hidden, act_layer=nn.SiLU, gate_last=False, bias=bias, drop=drop, **kw)
        return Mlp(in_features, hidden, act_layer=nn.GELU, bias=bias, drop=drop, **kw)

    return build


class TipsVisionTower(VisionTransformer):
    """timm ViT with TIPS's positional-embedding resize; prefix = [CLS, registers]."""

    def __init__(self, *, embed_dim: int, depth: int, num_heads: int, patch_size: int, grid: int,
                 reg_tokens: int, mlp_hidden: int, swiglu: bool, layer_scale: bool, qkv_bias: bool,
                 pos_interpolation: str = "bilinear", pos_antialias: bool = True):
        if embed_dim % num_heads:
            raise CheckpointError(f"image width {embed_dim} is not divisible by num_heads={num_heads}")
        super().__init__(
            img_size=grid * patch_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, qkv_bias=qkv_bias, init_values=1.0 if layer_scale else None,
            class_token=True, no_embed_class=True, reg_tokens=reg_tokens, dynamic_img_size=True,
            num_classes=0, global_pool="token", mlp_layer=_exact_mlp(mlp_hidden, swiglu),
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
        )
        self.grid = (grid, grid)
        self.pos_interpolation = pos_interpolation
        self.pos_antialias = pos_antialias

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        pos = interpolate_grid(self.pos_embed, self.grid, (h, w), self.pos_interpolation, self.pos_antialias)
        x = x.reshape(b, h * w, c) + pos
        prefix = [self.cls_token.expand(b, -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(b, -1, -1))
        return torch.cat(prefix + [x], dim=1)


# --------------------------------------------------------------- checkpoint
_REQUIRED = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "norm.weight")


def infer_vision_arch(sd: dict) -> dict:
    """Architecture dict from official TIPS vision checkpoint shapes."""
    missing = [k for k in _REQUIRED if k not in sd]
    if missing:
        hint = "this looks like a TIPS text checkpoint" if "token_embedding.weight" in sd else (
            "expected the official TIPS PyTorch layout (cls_token, pos_embed, blocks.N.*)")
        raise CheckpointError(f"vision checkpoint is missing {', '.join(missing)}", hint=hint)
    width = int(sd["cls_token"].shape[-1])
    patch = sd["patch_embed.proj.weight"].shape
    if patch[-1] != patch[-2]:
        raise CheckpointError(f"patch_embed.proj.weight has non-square patches {tuple(patch)}")
    n_pos = int(sd["pos_embed"].shape[1]) - 1
    grid = int(round(math.sqrt(n_pos)))
    if grid * grid != n_pos:
        raise CheckpointError(f"pos_embed has {n_pos} patch positions, not a square grid (shape {tuple(sd['pos_embed'].shape)})")
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    swiglu = "blocks.0.mlp.w12.weight" in sd
    if swiglu:
        hidden = int(sd["blocks.0.mlp.w12.weight"].shape[0]) // 2
    elif "blocks.0.mlp.fc1.weight" in sd:
        hidden = int(sd["blocks.0.mlp.fc1.weight"].shape[0])
    else:
        raise CheckpointError("vision checkpoint has neither blocks.0.mlp.fc1.weight nor blocks.0.mlp.w12.weight")
    return dict(
        embed_dim=width, depth=depth, patch_size=int(patch[-1]), grid=grid,
        reg_tokens=int(sd["register_tokens"].shape[1]) if "register_tokens" in sd else 0,
        mlp_hidden=hidden, swiglu=swiglu, layer_scale="blocks.0.ls1.gamma" in sd,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
    )


def official_shapes(model: TipsVisionTower, swiglu: bool) -> dict[str, tuple]:
    """The official key -> shape map this tower expects (for checking a checkpoint)."""
    out = {}
    for k, v in model.state_dict().items():
        shape = tuple(v.shape)
        if k == "reg_token":
            k = "register_tokens"
        elif k == "pos_embed":
            shape = (1, shape[1] + 1, shape[2])
        elif swiglu:
            k = k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
        out[k] = shape
    return out


def check_keys(sd: dict, expected: dict[str, tuple], what: str, optional: tuple[str, ...] = ()) -> None:
    """Raise one CheckpointError listing missing, unexpected and mis-shaped keys."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected and k not in optional]
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {expected[k]})" for k in expected
             if k in sd and tuple(sd[k].shape) != tuple(expected[k])]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            shown = ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")
            parts.append(f"{label}: {shown}")
    if parts:
        raise CheckpointError(f"{what}: " + "; ".join(parts), hint="nothing was loaded")


def to_timm_state_dict(sd: dict) -> dict:
    """Official TIPS keys -> timm keys (CLS position folded into the CLS token)."""
    out = {}
    for k, v in sd.items():
        if k == "mask_token":
            continue
        if k == "register_tokens":
            out["reg_token"] = v
        elif k == "pos_embed":
            out["pos_embed"] = v[:, 1:]
        elif k == "cls_token":
            out["cls_token"] = v + sd["pos_embed"][:, :1]
        else:
            out[k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")] = v
    return out


def build_vision_tower(sd: dict | None, arch: dict | None = None, num_heads: int | None = None,
                       what: str = "vision checkpoint") -> TipsVisionTower:
    """Build (and load, when ``sd`` is given) a TIPS image tower."""
    arch = dict(arch or infer_vision_arch(sd))
    heads = num_heads or arch.pop("num_heads", None) or default_heads(arch["embed_dim"], "image", "num_heads")
    arch.pop("num_heads", None)
    model = TipsVisionTower(num_heads=heads, **arch)
    if sd is not None:
        sd = {k: torch.as_tensor(v).float() for k, v in sd.items()}
        check_keys(sd, official_shapes(model, arch["swiglu"]), what, optional=("mask_token",))
        model.load_state_dict(to_timm_state_dict(sd), strict=True)
    model.eval()
    return model
