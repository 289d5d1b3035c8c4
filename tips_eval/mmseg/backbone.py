"""``TipsEvalBackbone``: any tips-eval zoo encoder as a frozen mmseg backbone.

>>> backbone=dict(type="TipsEvalBackbone", model="tips-v2-b14", model_kwargs=dict(),
...               out_indices=None, output="dpt")

- ``model``: a zoo name (``tips-eval models``), ``"tips"`` / a TIPS ``.npz``
  path (checkpoints in ``model_kwargs``), or an :class:`~tips_eval.Encoder`
  instance (Python-built models); ``model_kwargs`` go to
  :func:`tips_eval.load_encoder` (e.g. ``pretrained=False`` for random weights).
- ``out_indices``: 0-based blocks (negative counts from the end); ``None`` ->
  the encoder's ``dpt_layers`` (TIPS B: 2, 5, 8, 11).
- ``output="nchw"``: a tuple of (B, D, h, w) maps, what mmseg's decode heads
  (FCNHead, UPerHead, ...) read. ``output="dpt"``: a tuple of
  ``[patch (B, D, h, w), cls (B, D)]`` lists, exactly what mmseg's ``VisionTransformer``
  returns with ``output_cls_token=True`` and what ``DPTHead``/``ReassembleBlocks``
  expect (``readout_type="project"`` concatenates the CLS token, as TIPS's DPT does).

Features come from ``encoder.encode_image(pixels, layers=out_indices)`` (the
frozen-feature interface): each block's tokens after the final norm, first
CLS token. Input normalisation is the data preprocessor's job; TIPS wants
pixels in [0, 1], i.e. ``mean=[0, 0, 0], std=[255, 255, 255]``
(:data:`tips_eval.mmseg.TIPS_DATA_PREPROCESSOR`); use the zoo card's mean/std
for CLIP/SigLIP/DINOv2 (``enc.preprocess``). H and W must be multiples of the
patch size (crop sizes such as 448, ``size_divisor=14`` at test time).

The encoder is frozen (``requires_grad=False``, eval mode kept through
``train()``) and deliberately *not* a registered child module: it stays out of
``state_dict()`` (mmseg checkpoints hold the head only; the encoder comes from
the zoo again), out of ``parameters()`` (optimizers, DDP), and out of
mmengine's ``init_weights()`` recursion, which would otherwise call a timm
model's own ``init_weights`` and wipe pretrained weights. ``.to()``/``.cuda()``/
``.half()`` still move it (``_apply``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.model import BaseModule

from tips_eval.encoder import Encoder
from tips_eval.errors import ImageSizeError, TipsEvalError

OUTPUTS = ("nchw", "dpt")


class TipsEvalBackbone(BaseModule):
    """Frozen tips-eval encoder -> tuple of multi-level features for mmseg heads (see module doc)."""

    def __init__(self, model: str | Encoder, model_kwargs: dict | None = None,
                 out_indices: Sequence[int] | int | None = None, output: str = "nchw",
                 init_cfg: dict | None = None) -> None:
        if init_cfg is not None:
            raise TipsEvalError(f"TipsEvalBackbone: init_cfg={init_cfg!r} is not used",
                                hint="the encoder's weights come from the zoo: pass checkpoints in model_kwargs")
        super().__init__(None)
        if output not in OUTPUTS:
            raise TipsEvalError(f"TipsEvalBackbone: output={output!r}; expected one of {OUTPUTS}",
                                hint="'nchw' for FCN/UPer-style heads, 'dpt' for DPTHead")
        if isinstance(model, Encoder):
            if model_kwargs:
                raise TipsEvalError("TipsEvalBackbone: model_kwargs only apply when model is a name or path")
            encoder = model
        else:
            from tips_eval.loading import load_encoder

            encoder = load_encoder(str(model), **dict(model_kwargs or {}))
        encoder.eval()
        encoder.requires_grad_(False)
        object.__setattr__(self, "_encoder", encoder)  # not a child module: see the module docstring
        if out_indices is None:
            out_indices = encoder.dpt_layers
        elif isinstance(out_indices, int):
            out_indices = (out_indices,)
        try:
            self.out_indices = tuple(encoder.normalize_layers(list(out_indices)))
        except ValueError as e:
            raise TipsEvalError(f"TipsEvalBackbone: {e}",
                                hint=f"{encoder.name} has blocks 0..{encoder.num_layers - 1}") from None
        if not self.out_indices:
            raise TipsEvalError("TipsEvalBackbone: out_indices is empty; name at least one block")
        self.output = output
        self.model_name = encoder.name
        self.embed_dims = encoder.embed_dim
        self.patch_size = encoder.patch_size
        self.out_channels = (encoder.embed_dim,) * len(self.out_indices)

    @property
    def encoder(self) -> Encoder:
        """The frozen tips-eval encoder (not part of ``state_dict``/``parameters``)."""
        return self._encoder

    def forward(self, inputs: torch.Tensor) -> tuple:
        """(B, 3, H, W) normalised pixels -> one feature entry per ``out_indices`` block."""
        try:
            feats = self._encoder.encode_image(inputs, layers=self.out_indices)
        except ImageSizeError as e:
            raise ImageSizeError(f"TipsEvalBackbone({self.model_name}): {e.message}",
                                 hint=f"crop/pad to multiples of {self.patch_size}: crop_size like "
                                 f"({32 * self.patch_size}, {32 * self.patch_size}) and "
                                 f"data_preprocessor test_cfg=dict(size_divisor={self.patch_size})") from None
        outs = []
        for cls, patch in feats.layers:
            # encode_image runs under inference_mode; a clone outside it is an ordinary tensor the head can train on
            fmap = patch.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)
            outs.append([fmap, cls.clone()] if self.output == "dpt" else fmap)
        return tuple(outs)

    def train(self, mode: bool = True) -> TipsEvalBackbone:
        super().train(mode)
        self._encoder.eval()  # frozen: dropout/drop-path stay off while the head trains
        return self

    def init_weights(self) -> None:
        """Nothing to initialise: the encoder's weights come from the zoo (never re-initialised)."""
        self._is_init = True

    def _apply(self, fn, recurse: bool = True):
        self._encoder._apply(fn)
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self._encoder.parameters())
        return (f"model={self.model_name!r}, out_indices={self.out_indices}, output={self.output!r}, "
                f"frozen encoder with {n:,} parameters (not in state_dict)")


def register_backbone() -> None:
    """Register ``TipsEvalBackbone`` in mmseg's MODELS registry (idempotent)."""
    from mmseg.registry import MODELS

    if MODELS.get("TipsEvalBackbone") is not TipsEvalBackbone:
        MODELS.register_module(name="TipsEvalBackbone", module=TipsEvalBackbone, force=True)
