"""Image-text encoders from open_clip: CLIP, OpenCLIP, EVA-CLIP, SigLIP/SigLIP2, PE-Core.

SigLIP/SigLIP2, EVA and PE towers are timm trunks inside open_clip (timm
builds them; open_clip adds the text side). Global token = the projected image
embedding (named ``embed``), the one its text embeddings are aligned with;
patch tokens = the final-normed trunk tokens. ``value`` tokens of CLIP-style
ViTs are MaskCLIP's: the last block's value path, ``ln_post`` and the image
projection, so they live in the text space (zero-shot segmentation). The preprocessing is the
pretrained tag's (open_clip's ``get_pretrained_cfg``).
"""

from __future__ import annotations

from typing import Sequence

import open_clip
import torch
from torch import nn

from tips_eval.encoder import Encoder, Features
from tips_eval.errors import CheckpointNotFoundError, TokenizerError
from tips_eval.preprocess import Preprocess

from .registry import ModelCard, register_model
from .vit_common import features_from_tokens, interpolate_grid, timm_vit_features


def openclip_preprocess(model, name: str, tag: str, image_size: int | None) -> Preprocess:
    cfg = dict(model.visual.preprocess_cfg)
    cfg.update({k: v for k, v in open_clip.get_pretrained_cfg(name, tag).items()
                if k in ("mean", "std", "interpolation", "resize_mode")})
    size = image_size or cfg["size"][0]
    return Preprocess(image_size=(size, size), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                      resize=cfg.get("resize_mode", "shortest"), interpolation=cfg.get("interpolation", "bicubic"))


class OpenClipEncoder(Encoder):
    def __init__(self, model, *, name: str, oc_name: str, preprocess: Preprocess, tokenizer=None,
                 weights_note: str = ""):
        super().__init__()
        self.model = model.eval()
        self.name, self.oc_name = name, oc_name
        self.preprocess = preprocess
        self.weights_note = weights_note
        self._tokenizer = tokenizer
        v = model.visual
        self.trunk = getattr(v, "trunk", None)
        if self.trunk is not None:
            self.patch_size = self.trunk.patch_embed.patch_size[0]
            self.embed_dim = self.trunk.embed_dim
            self.num_layers = len(self.trunk.blocks)
            self.num_prefix = self.trunk.num_prefix_tokens
        else:
            self.patch_size = v.patch_size[0] if isinstance(v.patch_size, tuple) else v.patch_size
            self.embed_dim = v.conv1.out_channels
            self.num_layers = len(v.transformer.resblocks)
            self.num_prefix = 1
        self.global_dim = int(open_clip.get_model_config(oc_name)["embed_dim"])
        self.global_token_names = ("embed",)
        self.has_text = True

    # --------------------------------------------------------------- image
    def _native_vit(self, pixels, layers, want_value):
        v = self.model.visual
        x = v.conv1(pixels)
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        pos = v.positional_embedding
        old = v.grid_size if isinstance(v.grid_size, tuple) else (v.grid_size, v.grid_size)
        patch_pos = interpolate_grid(pos[None, 1:], old, (h, w), "bicubic", antialias=False)
        x = torch.cat([v.class_embedding.view(1, 1, c).expand(b, 1, c).to(x.dtype), x], dim=1)
        x = x + torch.cat([pos[None, :1], patch_pos], dim=1).to(x.dtype)
        x = v.ln_pre(v.patch_dropout(x))
        batch_first = getattr(v.transformer, "batch_first", True)
        blocks = v.transformer.resblocks
        taken, value = {}, None
        for i, blk in enumerate(blocks):
            if want_value and i == len(blocks) - 1:  # MaskCLIP: value path, ln_post, then the projection
                value = v.ln_post(_openclip_value_forward(blk, x, batch_first))
                value = value @ v.proj if v.proj is not None else value
            x = blk(x) if batch_first else blk(x.transpose(0, 1)).transpose(0, 1)
            if i in layers:
                taken[i] = v.ln_post(x)
        pooled, _ = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
        return pooled, v.ln_post(x), [taken[i] for i in layers], value

    def _timm_trunk(self, pixels, layers, want_value):
        t = self.trunk
        if hasattr(t, "norm_pre") and hasattr(t, "_pos_embed") and t.__class__.__name__ == "VisionTransformer":
            final, taken, value = timm_vit_features(t, pixels, layers, want_value)
        else:
            if want_value:
                raise NotImplementedError(f"{self.name}: value features are not available for {type(t).__name__}")
            idx = layers or [self.num_layers - 1]
            with_prefix = self.num_prefix > 0  # timm's Eva fails on return_prefix_tokens without prefix
            final, inter = t.forward_intermediates(pixels, indices=idx, norm=True, output_fmt="NLC",
                                                   return_prefix_tokens=with_prefix)
            taken = [torch.cat(list(y[::-1]), dim=1) if with_prefix else y for y in inter][: len(layers)]
            value = None
        pooled = self.model.visual.head(t.forward_head(final))
        return pooled, final, taken, value

    def _encode_image(self, pixels, layers, kinds) -> Features:
        grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        pixels = pixels.to(self.device, next(self.model.parameters()).dtype)
        run = self._timm_trunk if self.trunk is not None else self._native_vit
        pooled, final, taken, value = run(pixels, layers, "value" in kinds)
        return features_from_tokens(final, taken, value, self.num_prefix, grid, pooled[:, None],
                                    self.global_token_names)

    # ---------------------------------------------------------------- text
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            try:
                self._tokenizer = open_clip.get_tokenizer(self.oc_name)
            except Exception as e:  # HF hub download / missing transformers
                raise TokenizerError(f"{self.name}: could not load the {self.oc_name} tokenizer ({type(e).__name__})",
                                     hint="SigLIP tokenizers come from the Hugging Face hub; run once online") from None
        return self._tokenizer

    def tokenize(self, texts: Sequence[str]):
        ids = self.tokenizer(list(texts))
        pad_id = getattr(self.tokenizer, "pad_id", None) or 0
        last = torch.where(ids != pad_id, torch.arange(ids.shape[1]), -1).amax(dim=1, keepdim=True)
        return ids.long(), (torch.arange(ids.shape[1])[None] > last).long()

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(ids)


def _openclip_value_forward(blk, x, batch_first: bool):
    """open_clip ResidualAttentionBlock with attention replaced by its value path."""
    attn = blk.attn
    w = attn.in_proj_weight.shape[1]
    h = blk.ln_1(x)
    v = nn.functional.linear(h, attn.in_proj_weight[2 * w:], attn.in_proj_bias[2 * w:] if attn.in_proj_bias is not None else None)
    v = attn.out_proj(v)
    x = x + blk.ls_1(v)
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


_ENTRIES = [  # zoo name, open_clip name, tag, description, paper names
    ("clip-b16", "ViT-B-16", "openai", "OpenAI CLIP ViT-B/16", ()),
    ("clip-l14", "ViT-L-14", "openai", "OpenAI CLIP ViT-L/14", ("CLIP-L/14", "CLIP L/14", "CLIP-L")),
    ("clip-l14-336", "ViT-L-14-336", "openai", "OpenAI CLIP ViT-L/14 at 336px", ()),
    ("openclip-g14", "ViT-bigG-14", "laion2b_s39b_b160k", "OpenCLIP ViT-bigG/14 (LAION-2B)",
     ("OpenCLIP-G/14", "OpenCLIP G/14")),
    ("eva-clip-g14", "EVA01-g-14", "laion400m_s11b_b41k", "EVA01-CLIP g/14 (LAION-400M)", ("EVA-CLIP-g/14",)),
    ("siglip-b16", "ViT-B-16-SigLIP", "webli", "SigLIP B/16 224px (WebLI)", ()),
    ("siglip-so400m14", "ViT-SO400M-14-SigLIP", "webli", "SigLIP SO400M/14 224px (WebLI)", ("SigLIP-SO/14",)),
    ("siglip2-b16", "ViT-B-16-SigLIP2", "webli", "SigLIP2 B/16 224px (WebLI)", ()),
    ("siglip2-so400m14", "ViT-SO400M-14-SigLIP2", "webli", "SigLIP2 SO400M/14 224px (WebLI)", ("SigLIP2 SO/14",)),
    ("siglip2-g16", "ViT-gopt-16-SigLIP2-256", "webli", "SigLIP2 g-opt/16 256px (WebLI)", ("SigLIP2 g/16",)),
    ("pe-core-g14", "PE-Core-bigG-14-448", "meta", "Perception Encoder Core bigG/14 448px", ("PE-core G/14",)),
]


def _register(zoo_name, oc_name, tag, description, paper_names):
    cfg = open_clip.get_model_config(oc_name)
    vcfg = cfg["vision_cfg"]
    size = vcfg.get("image_size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else size
    patch = vcfg.get("patch_size") or int(vcfg.get("timm_model_name", "p14").split("patch")[-1][:2])
    card = ModelCard(
        name=zoo_name, family="open_clip", image_size=size, patch_size=patch,
        embed_dim=vcfg.get("width", 0), has_text=True, description=description,
        weights=f"open_clip {oc_name} pretrained={tag!r} ({open_clip.get_pretrained_cfg(oc_name, tag).get('hf_hub', 'url')})",
        paper_names=paper_names, config=dict(open_clip_name=oc_name, tag=tag),
    )

    @register_model(card)
    def build(pretrained=True, device=None, image_size=None, checkpoint_path=None, tokenizer=None, **kw):
        pcfg = open_clip.get_pretrained_cfg(oc_name, tag)
        source = str(checkpoint_path) if checkpoint_path else (tag if pretrained else None)
        try:
            with torch.device(device or "cpu"):
                model = open_clip.create_model(oc_name, pretrained=source, device=device or "cpu",
                                               force_quick_gelu=bool(pcfg.get("quick_gelu", False)), **kw)
        except (OSError, RuntimeError) as e:
            if source is None:
                raise
            raise CheckpointNotFoundError(
                f"could not load {zoo_name} weights (open_clip {oc_name}, {source}): {type(e).__name__}",
                hint="offline? fetch them once online (Hugging Face cache) or pass checkpoint_path=",
            ) from None
        note = f"open_clip {oc_name} {source}" if source else "random weights (untrained)"
        return OpenClipEncoder(model, name=zoo_name, oc_name=oc_name, tokenizer=tokenizer,
                               preprocess=openclip_preprocess(model, oc_name, tag, image_size), weights_note=note)

    return build


for _entry in _ENTRIES:
    _register(*_entry)
