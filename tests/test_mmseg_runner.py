"""End to end in mmseg's own machinery: Runner trains a head on a frozen TIPS backbone over an on-disk dataset,
validates with IoUMetric (checked against ours), writes a checkpoint that loads strictly and safely."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.mmseg

TINY_NPZ = str(Path(__file__).resolve().parent / "fixtures" / "tips_parity" / "tiny_mlp_vision.npz")
CLASSES = ("sky", "road", "car")


@pytest.fixture(scope="module", autouse=True)
def mmseg():
    pytest.importorskip("mmseg", reason="needs the optional [mmseg] extra: pip install -e '.[mmseg]'")
    from tips_eval.mmseg import import_mmseg

    return import_mmseg()


def _write_dataset(root: Path, n: int = 4, size: int = 56) -> None:
    """mmseg's BaseSegDataset layout: img/*.png + ann/*.png (class ids, 255 = ignore)."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    for i in range(n):
        label = np.zeros((size, size), np.uint8)
        label[size // 2:] = 1
        label[size // 2:, : size // 3] = 2
        label[:3] = 255
        image = np.stack([label * 80 + rng.integers(0, 40, label.shape)] * 3, -1).astype(np.uint8)
        Image.fromarray(image).save(root / "img" / f"{i}.png")
        Image.fromarray(label).save(root / "ann" / f"{i}.png")


def _config(root: Path, work_dir: Path):
    from mmengine.config import Config

    dataset = dict(type="BaseSegDataset", data_root=str(root), data_prefix=dict(img_path="img", seg_map_path="ann"),
                   img_suffix=".png", seg_map_suffix=".png", metainfo=dict(classes=CLASSES),
                   pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")])
    return Config(dict(
        default_scope="mmseg", work_dir=str(work_dir), log_level="WARNING", randomness=dict(seed=0),
        model=dict(
            type="EncoderDecoder",
            data_preprocessor=dict(type="SegDataPreProcessor", mean=[0.0] * 3, std=[255.0] * 3, bgr_to_rgb=True,
                                   pad_val=0, seg_pad_val=255, size=(56, 56), test_cfg=dict(size_divisor=14)),
            backbone=dict(type="TipsEvalBackbone", model="tips", output="nchw", out_indices=[-1],
                          model_kwargs=dict(vision_checkpoint=TINY_NPZ, num_heads=4)),
            decode_head=dict(type="FCNHead", in_channels=64, channels=64, num_convs=0, concat_input=False,
                             dropout_ratio=0.0, num_classes=len(CLASSES), norm_cfg=dict(type="BN"), align_corners=False,
                             loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
            train_cfg=dict(), test_cfg=dict(mode="whole")),
        train_dataloader=dict(batch_size=2, num_workers=0, sampler=dict(type="InfiniteSampler", shuffle=False),
                              dataset=dataset),
        val_dataloader=dict(batch_size=1, num_workers=0, sampler=dict(type="DefaultSampler", shuffle=False),
                            dataset=dataset),
        val_evaluator=dict(type="IoUMetric", iou_metrics=["mIoU"]),
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=3, val_interval=3), val_cfg=dict(type="ValLoop"),
        optim_wrapper=dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.1, momentum=0.9)),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=3),
                           logger=dict(type="LoggerHook", interval=1)),
    ))


def test_runner_trains_validates_and_checkpoints(tmp_path):
    from mmengine.runner import Runner
    from mmseg.registry import MODELS

    from tips_eval.metrics import mean_iou, segmentation_confusion
    from tips_eval.mmseg import load_mmengine_checkpoint

    _write_dataset(tmp_path / "data")
    cfg = _config(tmp_path / "data", tmp_path / "work")
    runner = Runner.from_cfg(cfg)
    encoder = runner.model.backbone.encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    runner.train()
    assert all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())  # frozen through real training
    assert not encoder.training

    reported = runner.val_loop.run()  # IoUMetric through mmseg's ValLoop
    conf = 0
    runner.model.eval()
    for batch in runner.val_dataloader:
        for sample in runner.model.val_step(batch):
            conf = conf + segmentation_confusion(sample.pred_sem_seg.data[0], sample.gt_sem_seg.data[0], len(CLASSES))
    ours = mean_iou(conf)
    for key in ("mIoU", "aAcc", "mAcc"):
        assert float(reported[key]) == pytest.approx(round(ours[key], 2), rel=0, abs=1e-5), key

    ckpt = load_mmengine_checkpoint(tmp_path / "work" / "iter_3.pth")
    assert ckpt["meta"]["iter"] == 3 and ckpt["meta"]["dataset_meta"]["classes"] == CLASSES
    assert ckpt["state_dict"] and all(k.startswith(("decode_head.", "data_preprocessor.")) for k in ckpt["state_dict"])
    fresh = MODELS.build(cfg.model)
    fresh.load_state_dict(ckpt["state_dict"], strict=True)  # nothing missing: the encoder comes from the zoo
    fresh.eval()
    batch = next(iter(runner.val_dataloader))
    torch.testing.assert_close(fresh.val_step(batch)[0].seg_logits.data,
                               runner.model.val_step(batch)[0].seg_logits.data)
