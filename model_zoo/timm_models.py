"""Image-only ViTs from timm (DINOv2 with and without registers).

Each zoo entry names a timm model and pretrained tag; preprocessing comes from
that tag's pretrained config (mean/std, interpolation, crop_pct, resolution).
Positional embeddings are resampled by timm (``dynamic_img_size=True``).
"""

from __future__ import annotations

import timm
import torch

from tips_eval.encoder import Encoder, Features
from tips_eval.errors import CheckpointNotFoundError
from tips_eval.preprocess import Preprocess

from .registry import ModelCard, register_model
from .vit_common import features_from_tokens, timm_vit_features


def preprocess_from_timm_cfg(cfg: dict, image_size: int | None = None) -> Preprocess:
    size = image_size or cfg["input_size"][-1]
    crop_pct = cfg.get("crop_pct", 1.0) or 1.0
    return Preprocess(image_size=(size, size), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                      resize="shortest", interpolation=cfg.get("interpolation", "bicubic"), crop_pct=crop_pct)


def create_timm(model_name: str, pretrained: bool, checkpoint_path: str | None = None, device=None, **kw):
    """timm.create_model with a clear offline error and local-file support."""
    overlay = dict(file=str(checkpoint_path)) if checkpoint_path else None
    try:
        with torch.device(device or "cpu"):
            return timm.create_model(model_name, pretrained=pretrained or bool(checkpoint_path),
                                     pretrained_cfg_overlay=overlay, **kw)
    except (OSError, RuntimeError, ValueError) as e:
        if not pretrained:
            raise
        raise CheckpointNotFoundError(
            f"could not load pretrained weights for timm model {model_name} ({type(e).__name__})",
            hint="offline? download them once with network access (Hugging Face cache), "
                 "or pass checkpoint_path=/path/to/weights",
        ) from None


class TimmViTEncoder(Encoder):
    """A timm VisionTransformer; global tokens = CLS (registers are not global tokens)."""

    def __init__(self, model, *, name: str, preprocess: Preprocess, weights_note: str = ""):
        super().__init__()
        self.model = model.eval()
        self.name = name
        self.patch_size = model.patch_embed.patch_size[0]
        self.embed_dim = self.global_dim = model.embed_dim
        self.num_layers = len(model.blocks)
        self.num_prefix = model.num_prefix_tokens
        self.global_token_names = ("cls",)
        self.preprocess = preprocess
        self.weights_note = weights_note

    def _encode_image(self, pixels, layers, kinds) -> Features:
        grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        pixels = pixels.to(self.device, next(self.model.parameters()).dtype)
        final, taken, value = timm_vit_features(self.model, pixels, layers, "value" in kinds)
        return features_from_tokens(final, taken, value, self.num_prefix, grid, lambda prefix: prefix[:, :1],
                                    self.global_token_names)


_DINOV2 = {  # size: timm stem, width, depth
    "s14": ("vit_small_patch14", 384, 12),
    "b14": ("vit_base_patch14", 768, 12),
    "l14": ("vit_large_patch14", 1024, 24),
    "g14": ("vit_giant_patch14", 1536, 40),
}


def _register_dinov2(size: str, registers: bool):
    stem, width, depth = _DINOV2[size]
    timm_name = f"{stem}_{'reg4_' if registers else ''}dinov2"
    tag = "lvd142m"
    zoo_name = f"dinov2-{size}{'-reg' if registers else ''}"
    cfg = timm.models.get_pretrained_cfg(f"{timm_name}.{tag}").to_dict()
    letter = size[0].upper() if size != "g14" else "g"
    card = ModelCard(
        name=zoo_name, family="timm", image_size=cfg["input_size"][-1], patch_size=14, embed_dim=width,
        has_text=False, description=f"DINOv2 {letter}/14{' with 4 registers' if registers else ''} (timm {timm_name})",
        weights=f"timm {timm_name}.{tag} (Hugging Face hub {cfg.get('hf_hub_id', 'timm/')})",
        paper_names=() if registers else (f"DINOv2-{letter}/14", f"DINOv2 {letter}/14"),
        config=dict(timm_name=f"{timm_name}.{tag}", depth=depth),
    )

    @register_model(card)
    def build(pretrained=True, device=None, image_size=None, checkpoint_path=None, **kw):
        model = create_timm(f"{timm_name}.{tag}", pretrained, checkpoint_path, device=device,
                            num_classes=0, dynamic_img_size=True, **kw)
        note = f"timm {timm_name}.{tag}" if pretrained or checkpoint_path else "random weights (untrained)"
        return TimmViTEncoder(model, name=zoo_name, preprocess=preprocess_from_timm_cfg(cfg, image_size),
                              weights_note=note)

    return build


for _size in _DINOV2:
    for _reg in (False, True):
        _register_dinov2(_size, _reg)
