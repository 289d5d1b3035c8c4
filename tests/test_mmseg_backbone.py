"""TipsEvalBackbone: mmseg's input formats, official TIPS features, frozen through mmseg's training machinery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tips_eval.errors import ImageSizeError, TipsEvalError

pytestmark = pytest.mark.mmseg

PARITY = Path(__file__).resolve().parent / "fixtures" / "tips_parity"
TINY_NPZ = str(PARITY / "tiny_mlp_vision.npz")  # official layout: embed 64, depth 3, patch 14


@pytest.fixture(scope="module", autouse=True)
def mmseg():
    pytest.importorskip("mmseg", reason="needs the optional [mmseg] extra: pip install -e '.[mmseg]'")
    from tips_eval.mmseg import import_mmseg

    return import_mmseg()


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(PARITY / "tiny_mlp_vision_expected.npz"))


def _snapshot(module: torch.nn.Module) -> dict:
    """In-memory weights (TIPS's weights_digest() is a file hash, blind to in-place changes)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _backbone(**kw):
    from mmseg.registry import MODELS

    cfg = dict(type="TipsEvalBackbone", model="tips", model_kwargs=dict(vision_checkpoint=TINY_NPZ, num_heads=4))
    cfg.update(kw)
    return MODELS.build(cfg)


def _segmentor(output="nchw", num_classes=3):
    from mmengine.config import ConfigDict
    from mmseg.registry import MODELS

    head = (dict(type="FCNHead", in_channels=64, channels=64, num_convs=0, concat_input=False, in_index=-1,
                 dropout_ratio=0.0, num_classes=num_classes, norm_cfg=dict(type="BN"), align_corners=False,
                 loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0))
            if output == "nchw" else
            dict(type="DPTHead", in_channels=(64,) * 4, channels=16, embed_dims=64,
                 post_process_channels=[8, 16, 32, 64], readout_type="project", patch_size=14,
                 num_classes=num_classes, input_transform="multiple_select", in_index=(0, 1, 2, 3),
                 norm_cfg=dict(type="BN"), align_corners=False,
                 loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)))
    return MODELS.build(ConfigDict(  # as from a config file: mmseg reads test_cfg.mode as an attribute
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=[0.0] * 3, std=[255.0] * 3, bgr_to_rgb=True,
                               pad_val=0, seg_pad_val=255, size=(56, 56), test_cfg=dict(size_divisor=14)),
        backbone=dict(type="TipsEvalBackbone", model="tips", model_kwargs=dict(vision_checkpoint=TINY_NPZ, num_heads=4),
                      output=output),
        decode_head=head, train_cfg=dict(), test_cfg=dict(mode="whole")))


@pytest.mark.parametrize("i", [0, 1])  # 56x56, and 112x84 (positional grid resized)
def test_nchw_maps_are_the_official_block_outputs(expected, i):
    pixels = torch.from_numpy(expected[f"input_{i}"])
    outs = _backbone(out_indices=[0, 1, 2])(pixels)
    h, w = pixels.shape[-2] // 14, pixels.shape[-1] // 14
    assert isinstance(outs, tuple) and len(outs) == 3
    for block, fmap in enumerate(outs):
        assert fmap.shape == (2, 64, h, w) and fmap.is_contiguous()
        ref = torch.from_numpy(expected[f"layers_{i}"][block]).reshape(2, h, w, 64).permute(0, 3, 1, 2)
        torch.testing.assert_close(fmap, ref, rtol=1e-4, atol=1e-5)


def test_dpt_output_is_mmseg_vit_format(expected):
    from mmseg.models.backbones import VisionTransformer

    pixels = torch.from_numpy(expected["input_0"])
    assert _backbone(output="dpt").out_indices == (0, 1, 2, 2)  # default: the encoder's dpt_layers
    ours = _backbone(output="dpt", out_indices=[0, 1, 2])(pixels)
    vit = VisionTransformer(img_size=56, patch_size=14, embed_dims=64, num_layers=3, num_heads=4, out_indices=(0, 1, 2),
                            output_cls_token=True, final_norm=True)
    vit.eval()  # mmseg's VisionTransformer.train() returns None
    theirs = vit(pixels)
    assert type(ours) is type(theirs) is tuple and len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs):
        assert type(a) is type(b) is list and len(a) == len(b) == 2
        assert a[0].shape == b[0].shape == (2, 64, 4, 4) and a[1].shape == b[1].shape == (2, 64)
    torch.testing.assert_close(ours[2][1], torch.from_numpy(expected["cls1_0"]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours[2][0].flatten(2).transpose(1, 2), torch.from_numpy(expected["patch_0"]),
                               rtol=1e-4, atol=1e-5)


def test_dpt_head_reads_patch_and_cls():
    model = _segmentor("dpt", num_classes=5).eval()
    x = torch.rand(2, 3, 56, 56)
    feats = model.extract_feat(x)
    logits = model.decode_head(feats)
    assert logits.shape[:2] == (2, 5) and torch.isfinite(logits).all()
    moved = tuple([p, c + 1.0] for p, c in feats)  # readout="project" uses the CLS token
    assert not torch.allclose(model.decode_head(moved), logits)


def _train_batch(n=2, size=56, classes=3):
    g = torch.Generator().manual_seed(0)
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    samples = []
    for _ in range(n):
        s = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, classes, (1, size, size), generator=g))
        samples.append(s)
    inputs = [torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8) for _ in range(n)]
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.parametrize("output", ["nchw", "dpt"])
def test_frozen_encoder_through_init_and_a_train_step(output):
    from mmengine.optim import OptimWrapper

    model = _segmentor(output)
    enc = model.backbone.encoder
    before = _snapshot(enc)
    model.init_weights()
    model.train()
    assert not enc.training and model.decode_head.training
    assert all(not p.requires_grad for p in enc.parameters())
    assert list(model.backbone.parameters()) == [] and not any(k.startswith("backbone.") for k in model.state_dict())
    head_before = {k: v.clone() for k, v in model.decode_head.state_dict().items()}
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.5))
    losses = model.train_step(_train_batch(), wrapper)
    assert torch.isfinite(losses["loss"]) and losses["loss"] > 0
    assert _same(_snapshot(enc), before)
    changed = [k for k, v in model.decode_head.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, head_before[k])]
    assert "conv_seg.weight" in changed
    preds = model.test_step(dict(inputs=_train_batch()["inputs"], data_samples=_train_batch()["data_samples"]))
    assert preds[0].pred_sem_seg.data.shape == (1, 56, 56)


def test_timm_encoder_survives_init_weights():
    """mmengine's init_weights recursion calls init_weights() on child modules; timm's re-draws every weight."""
    import copy

    from mmengine.config import ConfigDict
    from mmseg.registry import MODELS

    seg = MODELS.build(ConfigDict(
        type="EncoderDecoder",
        backbone=dict(type="TipsEvalBackbone", model="dinov2-s14", model_kwargs=dict(pretrained=False),
                      out_indices=[-1]),
        decode_head=dict(type="FCNHead", in_channels=384, channels=384, num_convs=0, concat_input=False,
                         num_classes=2)))
    enc = seg.backbone.encoder
    before = _snapshot(enc)
    seg.init_weights()
    assert seg.backbone.out_indices == (11,) and _same(_snapshot(enc), before)
    exposed = copy.deepcopy(enc)
    exposed.model.init_weights()  # what mmengine would have done to a registered child
    assert not _same(_snapshot(exposed), before)


def test_to_moves_the_hidden_encoder():
    bb = _backbone(out_indices=[-1]).to(torch.float64)
    assert next(bb.encoder.parameters()).dtype == torch.float64
    (fmap,) = bb(torch.rand(1, 3, 28, 42, dtype=torch.float64))
    assert fmap.dtype == torch.float64 and fmap.shape == (1, 64, 2, 3)


def test_encoder_instance_as_model():
    from tips_eval.model_zoo.tips import random_tips

    from tips_eval.mmseg import TipsEvalBackbone

    arch = dict(embed_dim=32, depth=2, num_heads=2, patch_size=14, grid=2, reg_tokens=1, mlp_hidden=64,
                swiglu=False, layer_scale=True, qkv_bias=True)
    enc = random_tips(arch, None, name="tiny-tips", image_size=28)
    bb = TipsEvalBackbone(enc)
    assert bb.encoder is enc and bb.out_channels == (32,) * 4 and "frozen encoder" in repr(bb)
    assert [o.shape for o in bb(torch.rand(1, 3, 28, 28))] == [(1, 32, 2, 2)] * 4


def test_bad_inputs_fail_clearly():
    bb = _backbone()
    message = r"TipsEvalBackbone\(tips\): .*50x50 is not a multiple of the patch size 14.*size_divisor=14"
    with pytest.raises(ImageSizeError, match=message):
        bb(torch.rand(1, 3, 50, 50))
    with pytest.raises(TipsEvalError, match="output='tokens'; expected one of"):
        _backbone(output="tokens")
    with pytest.raises(TipsEvalError, match="layer index 5 out of range.*blocks 0..2"):
        _backbone(out_indices=[1, 5])
    with pytest.raises(TipsEvalError, match="init_cfg=.* is not used"):
        _backbone(init_cfg=dict(type="Pretrained", checkpoint="x.pth"))
    with pytest.raises(TipsEvalError, match="model_kwargs only apply"):
        from tips_eval.mmseg import TipsEvalBackbone

        TipsEvalBackbone(bb.encoder, model_kwargs=dict(pretrained=False))
