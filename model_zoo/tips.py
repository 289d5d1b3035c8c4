"""TIPS v1 / v2 encoders (image + text) and their zoo entries.

``load_tips`` builds an encoder from official ``.npz`` files of any size;
the zoo entries (``tips-v1-*``, ``tips-v2-*``) add the released files' names,
URLs and native resolutions. Preprocessing is TIPS's own: squash-resize to
the model resolution, bilinear, pixels in [0, 1] (mean 0, std 1).
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from tips_eval.encoder import Encoder, Features
from tips_eval.errors import CheckpointError
from tips_eval.preprocess import Preprocess
from tips_eval.weights import file_sha256, load_npz, resolve_weights

from .registry import ModelCard, register_model
from .tips_text import ByteTokenizer, TipsTextTower, TipsTokenizer
from .tips_vision import build_vision_tower, check_keys, default_heads, infer_vision_arch
from .vit_common import features_from_tokens, timm_vit_features

TOKENIZER_URL = "https://storage.googleapis.com/tips_data/v1_0/checkpoints/tokenizer.model"
_TEXT_EXTRA_KEYS = ("temperature", "temperature_contrastive")


def tips_preprocess(size: int) -> Preprocess:
    return Preprocess(image_size=(size, size), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                      resize="squash", interpolation="bilinear")


class TipsEncoder(Encoder):
    """TIPS image tower (+ text tower and tokenizer when given)."""

    def __init__(self, vision, text=None, tokenizer=None, *, name="tips", image_size=None,
                 temperature=None, digests=(), weights_note=""):
        super().__init__()
        self.vision = vision
        self.text = text
        self.tokenizer = tokenizer
        self.name = name
        self.patch_size = vision.patch_embed.patch_size[0]
        self.embed_dim = self.global_dim = vision.embed_dim
        self.num_layers = len(vision.blocks)
        self.num_prefix = vision.num_prefix_tokens
        self.global_token_names = tuple(f"cls{i + 1}" for i in range(self.num_prefix))
        self.has_text = text is not None
        self.temperature = temperature
        self.preprocess = tips_preprocess(image_size or vision.grid[0] * self.patch_size)
        self._digests = tuple(digests)
        self.weights_note = weights_note

    def weights_digest(self) -> str:
        return "+".join(self._digests) if self._digests else super().weights_digest()

    def config_for_fingerprint(self) -> dict:
        return {"heads": self.vision.blocks[0].attn.num_heads,
                "text_heads": self.text.heads if self.text is not None else None}

    def _encode_image(self, pixels, layers, kinds) -> Features:
        grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        pixels = pixels.to(self.device, next(self.vision.parameters()).dtype)
        final, taken, value = timm_vit_features(self.vision, pixels, layers, "value" in kinds)
        return features_from_tokens(final, taken, value, self.num_prefix, grid, lambda prefix: prefix,
                                    self.global_token_names)

    def tokenize(self, texts: Sequence[str]):
        if self.tokenizer is None:
            return super().tokenize(texts)
        return self.tokenizer(texts)

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        if self.text is None:
            return super().encode_text(texts)
        ids, pads = self.tokenize(texts)
        return self.text(ids.to(self.device), pads.to(self.device))


def _build_text(sd: dict, text_num_heads: int | None, vision_width: int, path: str) -> TipsTextTower:
    cfg = TipsTextTower.config_from_state_dict(sd)
    if cfg["width"] != vision_width:
        raise CheckpointError(
            f"text checkpoint {path} has width {cfg['width']} but the image tower has width {vision_width}",
            hint="pair the text .npz released with the same model size",
        )
    heads = text_num_heads or default_heads(cfg["width"], "text", "text_num_heads")
    tower = TipsTextTower(cfg["vocab_size"], cfg["width"], cfg["layers"], heads, cfg["mlp_dim"])
    weights = {k: torch.as_tensor(v).float() for k, v in sd.items() if k not in _TEXT_EXTRA_KEYS}
    expected = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    check_keys(weights, expected, f"text checkpoint {path}")
    tower.load_state_dict(weights, strict=True)
    return tower.eval()


def load_tips(vision_checkpoint, text_checkpoint=None, tokenizer=None, *, num_heads=None,
              text_num_heads=None, image_size=None, name="tips", expect: dict | None = None) -> TipsEncoder:
    """Build a TIPS encoder from official ``.npz`` files of any size.

    ``expect`` (from a zoo card) names the architecture the files must have,
    so a checkpoint for the wrong model is refused with both shapes named.
    """
    vpath = str(vision_checkpoint)
    vsd = load_npz(vpath, "vision checkpoint")
    arch = infer_vision_arch(vsd)
    if expect:
        got = {k: arch[k] for k in expect if k in arch}
        if got != {k: expect[k] for k in got}:
            raise CheckpointError(f"{vpath} is a ViT with {got}, but {name} expects {expect}",
                                  hint="check which model the checkpoint belongs to")
    vision = build_vision_tower(vsd, arch, num_heads=num_heads, what=f"vision checkpoint {vpath}")
    digests = [file_sha256(vpath)[:16]]
    text = tok = temperature = None
    if text_checkpoint is not None:
        tpath = str(text_checkpoint)
        tsd = load_npz(tpath, "text checkpoint")
        if "temperature" in tsd:
            temperature = float(tsd["temperature"])
        text = _build_text(tsd, text_num_heads, vision.embed_dim, tpath)
        digests.append(file_sha256(tpath)[:16])
        if tokenizer is None:
            raise CheckpointError(f"a text checkpoint ({tpath}) was given without a tokenizer",
                                  hint="pass tokenizer=path/to/tokenizer.model")
        tok = TipsTokenizer(tokenizer)
        if tok.vocab_size > text.token_embedding.num_embeddings:
            raise CheckpointError(
                f"tokenizer {tokenizer} has {tok.vocab_size} pieces but {tpath} embeds only "
                f"{text.token_embedding.num_embeddings}", hint="pair the tokenizer released with the model")
        digests.append(file_sha256(tokenizer)[:16])
    return TipsEncoder(vision, text, tok, name=name, image_size=image_size, temperature=temperature,
                       digests=digests, weights_note=f"TIPS checkpoint {os.path.basename(vpath)}")


def random_tips(arch: dict, text_cfg: dict | None, *, name: str, image_size: int, seed: int = 0,
                tokenizer=None, device=None) -> TipsEncoder:
    """TIPS architecture with random (seeded) weights; labelled as such in records."""
    from .tips_vision import TipsVisionTower

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.device(device or "cpu"):
            heads = arch.get("num_heads") or default_heads(arch["embed_dim"], "image", "num_heads")
            vision = TipsVisionTower(num_heads=heads, **{k: v for k, v in arch.items() if k != "num_heads"}).eval()
            text = None
            if text_cfg:
                text = TipsTextTower(**text_cfg).eval()
    finally:
        torch.random.set_rng_state(gen_state)
    tok = TipsTokenizer(tokenizer) if tokenizer else (ByteTokenizer() if text is not None else None)
    note = f"random weights (seed {seed}): an untrained TIPS architecture, chance level on text tasks"
    return TipsEncoder(vision, text, tok, name=name, image_size=image_size,
                       digests=(f"random-seed{seed}",), weights_note=note)


# ------------------------------------------------------------------ the zoo
_V1 = "https://storage.googleapis.com/tips_data/v1_0/checkpoints/pytorch/"
_V2 = "https://storage.googleapis.com/tips_data/v2_0/checkpoints/pytorch/"
_SIZES = {  # width, depth, ffn hidden, swiglu, text layers, text mlp
    "s14": (384, 12, 1536, False, 12, 1536),
    "b14": (768, 12, 3072, False, 12, 3072),
    "l14": (1024, 24, 4096, False, 12, 4096),
    "so400m14": (1152, 27, 4304, False, 27, 4304),
    "g14": (1536, 40, 4096, True, 12, 6144),
}
_LETTER = {"s14": "S", "b14": "B", "l14": "L", "so400m14": "SO400M", "g14": "g"}
_RELEASES = [  # zoo name, size, file stem, url base, pos grid, resolution, names in ../shared/paper CSVs
    ("tips-v1-s14-hr", "s14", "tips_oss_s14_highres_distilled", _V1, 16, 448,
     ("TIPSv1 S/14-HR (tips_oss_s14_highres_distilled)",)),
    ("tips-v1-b14-hr", "b14", "tips_oss_b14_highres_distilled", _V1, 16, 448,
     ("TIPSv1 B/14-HR (tips_oss_b14_highres_distilled)",)),
    ("tips-v1-l14-hr", "l14", "tips_oss_l14_highres_distilled", _V1, 16, 448,
     ("TIPSv1 L/14-HR (tips_oss_l14_highres_distilled)", "TIPS L/14")),
    ("tips-v1-so400m14-hr", "so400m14", "tips_oss_so400m14_highres_largetext_distilled", _V1, 16, 448,
     ("TIPSv1 SO/14-HR (tips_oss_so400m14_highres_largetext_distilled)",)),
    ("tips-v1-g14-hr", "g14", "tips_oss_g14_highres", _V1, 16, 448,
     ("[rel] TIPS-g/14 HR (released tips_oss_g14_highres)", "TIPSv1 g/14-HR (tips_oss_g14_highres)", "TIPS g/14")),
    ("tips-v1-g14-lr", "g14", "tips_oss_g14_lowres", _V1, 16, 224,
     ("[rel] TIPS-g/14 LR (released tips_oss_g14_lowres)", "TIPSv1 g/14-LR (tips_oss_g14_lowres)")),
    ("tips-v2-b14", "b14", "tips_v2_oss_b14", _V2, 32, 448, ("TIPSv2 B/14 (tips_v2_oss_b14)",)),
    ("tips-v2-l14", "l14", "tips_v2_oss_l14", _V2, 32, 448, ("TIPSv2 L/14 (tips_v2_oss_l14)", "TIPSv2 L/14")),
    ("tips-v2-so400m14", "so400m14", "tips_v2_oss_so14", _V2, 32, 448, ("TIPSv2 SO/14 (tips_v2_oss_so14)",)),
    ("tips-v2-g14", "g14", "tips_v2_oss_g14", _V2, 32, 448, ("TIPSv2 g/14 (tips_v2_oss_g14)", "TIPSv2 g/14")),
]


def _register(zoo_name, size, stem, base, grid, res, paper_names):
    width, depth, hidden, swiglu, t_layers, t_mlp = _SIZES[size]
    arch = dict(embed_dim=width, depth=depth, patch_size=14, grid=grid, reg_tokens=1, mlp_hidden=hidden,
                swiglu=swiglu, layer_scale=True, qkv_bias=True)
    text_cfg = dict(vocab_size=32000, width=width, layers=t_layers, heads=default_heads(width, "text", "-"),
                    mlp_dim=t_mlp)
    card = ModelCard(
        name=zoo_name, family="tips", image_size=res, patch_size=14, embed_dim=width, has_text=True,
        description=f"TIPS{'v2' if base == _V2 else 'v1'} {_LETTER[size]}/14{'' if base == _V2 else ('-LR' if res == 224 else '-HR')} ({stem}), {res}px",
        weights=f"{base}{stem}_{{vision,text}}.npz + tokenizer.model", paper_names=paper_names,
        config=dict(arch=arch, text=text_cfg),
    )

    @register_model(card)
    def build(pretrained=True, device=None, vision_checkpoint=None, text_checkpoint=None, tokenizer=None,
              image_size=None, seed=0, **kw):
        if not pretrained:
            return random_tips(arch, text_cfg, name=zoo_name, image_size=image_size or res, seed=seed,
                               tokenizer=tokenizer, device=device)
        v = resolve_weights(vision_checkpoint or f"{stem}_vision.npz", url=f"{base}{stem}_vision.npz",
                            what=f"{zoo_name} vision checkpoint")
        t = resolve_weights(text_checkpoint or f"{stem}_text.npz", url=f"{base}{stem}_text.npz",
                            what=f"{zoo_name} text checkpoint")
        tk = resolve_weights(tokenizer or "tokenizer.model", url=TOKENIZER_URL, what="TIPS tokenizer")
        expect = {k: arch[k] for k in ("embed_dim", "depth", "patch_size", "swiglu")}
        enc = load_tips(v, t, tk, image_size=image_size or res, name=zoo_name, expect=expect, **kw)
        return enc.to(device) if device else enc

    return build


for _release in _RELEASES:
    _register(*_release)
