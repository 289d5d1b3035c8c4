"""Dense engine parts in isolation: windows and stitching, crops, flips, resizes, augmentation,
losses, schedules and schedule planning -- each against a hand-computed answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from tips_eval.errors import DataError
from tips_eval.tasks._dense import REFERENCE, DenseConfig, plan_schedule
from tips_eval.tasks._dense_data import (augment, flip_target, object_box, resize_target, short_side_size,
                                         slide_windows, target_tensor)
from tips_eval.tasks._dense_eval import iter_outputs
from tips_eval.tasks._dense_heads import angular_loss, gradient_loss, lr_factor, sig_loss


# ------------------------------------------------------------------ windows / stitching
@pytest.mark.parametrize("h,w,win,stride", [(56, 100, 56, 37), (333, 500, 112, 75), (56, 56, 56, 37), (60, 57, 56, 37)])
def test_slide_windows_cover_every_pixel_and_clamp(h, w, win, stride):
    starts = slide_windows(h, w, win, stride)
    count = np.zeros((h, w), int)
    for y, x in starts:
        assert 0 <= y <= max(0, h - win) and 0 <= x <= max(0, w - win)
        count[y:y + win, x:x + win] += 1
    assert count.min() >= 1
    assert max(x for _, x in starts) == max(0, w - win) and max(y for y, _ in starts) == max(0, h - win)
    xs = sorted({x for _, x in starts})
    assert all(b - a <= stride for a, b in zip(xs, xs[1:]))


class _CoordFS:
    """A fake feature cache whose CLS of window k holds its (top, left) offset."""

    def __init__(self, offsets):
        cls = np.array(offsets, np.float32)
        self.layers = [(cls, np.zeros((len(offsets), 1, 1, 2), np.float32))]
        self.good_mask = np.ones(len(offsets), bool)


class _CoordHead(torch.nn.Module):
    """Outputs the absolute (row, col) of every pixel of a window: overlapping windows agree exactly."""

    def forward(self, layers, size):
        cls = layers[0][0]
        rows = torch.arange(size[0], dtype=torch.float32)[:, None].expand(size)
        cols = torch.arange(size[1], dtype=torch.float32)[None, :].expand(size)
        return torch.stack([cls[:, 0, None, None] + rows, cls[:, 1, None, None] + cols], 1)


def test_slide_stitching_averages_windows_into_the_resized_image():
    from types import SimpleNamespace

    win, stride, (rh, rw) = 14, 9, (14, 40)
    starts = slide_windows(rh, rw, win, stride)
    view = SimpleNamespace(window=win, resized=[(rh, rw)], windows=[(0, y, x) for y, x in starts])
    fs = _CoordFS(starts)
    [(i, out)] = list(iter_outputs(_CoordHead(), fs, [0], (win, win), "cpu", 2, np.ones(1, bool), slide=(view, fs)))
    assert i == 0 and out.shape == (1, 2, rh, rw)
    assert torch.equal(out[0, 0], torch.arange(rh, dtype=torch.float32)[:, None].expand(rh, rw))
    assert torch.equal(out[0, 1], torch.arange(rw, dtype=torch.float32)[None, :].expand(rh, rw))


def test_short_side_size_keeps_aspect():
    assert short_side_size(640, 480, 56) == (56, 75)
    assert short_side_size(480, 640, 56) == (75, 56)


# ------------------------------------------------------------------ crops / flips / resize
def test_object_box_square_centred_or_shifted_inside():
    valid = np.zeros((100, 100), bool)
    valid[40:50, 30:70] = True  # 10 x 40 -> a 39-pixel square centred on it (Probe3D uses max - min)
    t, l, b, r = object_box(valid)
    assert (b - t, r - l) == (39, 39) and l == 30 and t == 40 - (39 - 9) // 2
    valid[:] = False
    valid[0:5, 80:100] = True  # at the top-right corner: shifted inside the image
    t, l, b, r = object_box(valid)
    assert b - t == r - l == 19 and t >= 0 and r <= 100 and l <= 80 and t == 0


def test_flip_negates_normal_x_and_is_an_involution():
    n = torch.tensor([0.6, 0.0, -0.8]).view(3, 1, 1).expand(3, 2, 3).clone()
    n[:, :, 0] = torch.tensor([0.0, 0.6, -0.8]).view(3, 1)
    valid = torch.zeros(1, 2, 3, dtype=torch.bool)
    valid[..., 0] = True
    f, fv = flip_target(n, valid, "normals")
    assert torch.allclose(f[0, :, 2], -n[0, :, 0]) and torch.allclose(f[1:, :, 2], n[1:, :, 0])
    assert fv[..., 2].all() and not fv[..., 0].any()
    back, bv = flip_target(f, fv, "normals")
    assert torch.equal(back, n) and torch.equal(bv, valid)
    m, _ = flip_target(torch.tensor([[[1, 2, 3]]]), valid[:, :1], "segmentation")
    assert m.tolist() == [[[3, 2, 1]]]


def test_resize_target_is_nearest_and_keeps_invalid_zero():
    mask = np.array([[0, 0, 7, 7], [0, 0, 7, 7], [255, 255, 3, 3], [255, 255, 3, 3]])
    v, m = resize_target(*target_tensor(mask, mask != 255, "segmentation"), (7, 9), "segmentation")
    assert set(v.unique().tolist()) == {0, 3, 7, 255} and torch.equal(m, v != 255)
    depth = np.array([[0.0, 2.0], [3.0, 0.0]], np.float32)
    d, dm = resize_target(*target_tensor(depth, depth > 0, "depth"), (4, 4), "depth")
    assert torch.equal(dm, d > 0) and set(d.unique().tolist()) == {0.0, 2.0, 3.0}


def _class_image(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat((mask * 40).astype(np.uint8)[..., None], 3, -1), "RGB")


def test_augment_moves_image_and_target_together():
    torch.manual_seed(0)
    mask = np.zeros((60, 90), np.int64)
    mask[10:40, 20:70], mask[45:, :30] = 3, 5
    for _ in range(10):
        img, v, valid = augment(_class_image(mask), *target_tensor(mask, np.ones_like(mask, bool), "segmentation"),
                                "segmentation", 28, (0.5, 2.0), True, None)
        assert img.size == (28, 28) and v.shape == (1, 28, 28)
        grey = np.asarray(img)[..., 0].astype(int)
        labelled = v[0].numpy() != 255
        assert torch.equal(valid[0], torch.from_numpy(labelled))
        assert (grey[~labelled] == 0).all()  # padding is black and ignored
        lab = v[0].numpy()
        win = np.lib.stride_tricks.sliding_window_view(np.pad(lab, 2, constant_values=-1), (5, 5))
        inner = (win.min(axis=(-1, -2)) == win.max(axis=(-1, -2))) & labelled  # 2+ px from class borders / edges
        assert inner.sum() > 20
        assert (np.abs(grey - lab * 40) <= 2)[inner].all()  # there the colour names the class exactly


def test_augment_flip_negates_normals_x():
    torch.manual_seed(1)
    n = np.zeros((20, 20, 3), np.float32)
    n[:, :10] = (1.0, 0.0, 0.0)  # left half points right
    n[:, 10:] = (0.0, 0.0, -1.0)
    img = Image.fromarray(np.where(np.arange(20)[None, :, None] < 10, 255, 0).repeat(20, 0).astype(np.uint8)
                          .repeat(3, -1), "RGB")
    for _ in range(8):
        out, v, _ = augment(img, *target_tensor(n, np.ones((20, 20), bool), "normals"), "normals", 20,
                            (1.0, 1.0), True, None)
        bright = np.asarray(out)[0, :, 0] > 128
        x = v[0, 0].numpy()
        assert (x[bright] != 0).all() and (x[~bright] == 0).all()
        assert len(set(np.sign(x[bright]).tolist())) == 1  # +1 unflipped, -1 flipped: never mixed


# ------------------------------------------------------------------ losses
def test_sig_loss_and_gradient_loss():
    t = torch.rand(2, 1, 16, 16) * 5 + 0.5
    valid = torch.ones_like(t, dtype=torch.bool)
    valid[0, 0, :3] = False
    assert sig_loss(t, t, valid) < 1e-4
    noisy = t * torch.exp(0.3 * torch.randn_like(t))
    assert sig_loss(noisy, t, valid) > 0.1
    g = torch.log(noisy[valid] + 1e-3) - torch.log(t[valid] + 1e-3)
    assert torch.isclose(sig_loss(noisy, t, valid), torch.sqrt((g ** 2).mean() - 0.85 * g.mean() ** 2))
    assert gradient_loss(t * 2.0, t, valid) < 5e-3  # a global scale has no log-gradient
    assert gradient_loss(noisy, t, valid) > 0.1


def test_angular_losses():
    t = torch.nn.functional.normalize(torch.randn(2, 3, 5, 5), dim=1)
    valid = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    assert angular_loss(t, t, valid, False) < 0.02
    ortho = torch.stack([t[:, 1], -t[:, 0], torch.zeros_like(t[:, 0])], 1)  # not unit-length: cos is scale-free
    only_xy = t.clone()
    only_xy[:, 2] = 0
    assert torch.isclose(angular_loss(ortho, only_xy, valid, False), torch.tensor(math.pi / 2), atol=1e-3)
    kappa_raw = torch.full((2, 1, 5, 5), 2.0)
    pred = torch.cat([t, kappa_raw], 1)
    kappa = 3.01  # ELU(2) + 1.01
    ang = math.acos(1 - 1e-4)
    expected = math.log1p(math.exp(-kappa * math.pi)) - math.log1p(kappa ** 2) + kappa * ang
    assert abs(float(angular_loss(pred, t, valid, True)) - expected) < 1e-4
    valid[:, :, :2] = False
    flipped = t.clone()
    flipped[:, :, :2] = -flipped[:, :, :2]  # errors only where invalid: ignored
    assert angular_loss(flipped, t, valid, False) < 0.02


# ------------------------------------------------------------------ schedules
def test_lr_factor_poly_and_cosine():
    f = [lr_factor(s, 100, 10, "poly", 1e-6, 0.0) for s in range(101)]
    assert f[0] == pytest.approx(1e-6) and f[100] == 0.0
    assert f[10] == pytest.approx(0.9) and f[55] == pytest.approx(0.45)
    c = [lr_factor(s, 100, 10, "cosine", 0.01, 0.01) for s in range(101)]
    assert c[0] == pytest.approx(0.01) and c[5] == pytest.approx(0.505) and c[10] == pytest.approx(1.0)
    assert c[55] == pytest.approx(0.505) and c[100] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(c[10:], c[11:]))
    with pytest.raises(DataError, match="schedule"):
        lr_factor(0, 10, 0, "step", 0, 0)


def test_plan_schedule_reference_epochs_quick_and_overrides():
    ref = REFERENCE[("normals", "dpt")]
    plan, info = plan_schedule(DenseConfig(head="dpt"), ref, n_train=100, quick=False)
    assert (plan.steps, plan.batch_size, plan.warmup_steps) == (10 * 13, 8, math.ceil(1.5 * 13))
    assert (plan.lr, plan.weight_decay, plan.schedule) == (5e-4, 0.01, "cosine") and not info["quick"]
    seg, _ = plan_schedule(DenseConfig(), REFERENCE[("segmentation", "linear")], n_train=5, quick=False)
    assert (seg.steps, seg.batch_size, seg.lr, seg.warmup_steps, seg.schedule) == (40000, 16, 1e-3, 1500, "poly")
    quick, qinfo = plan_schedule(DenseConfig(), REFERENCE[("segmentation", "linear")], n_train=5, quick=True)
    assert quick.steps == 30 and quick.warmup_steps == 1 and qinfo["reference_steps"] == 40000 and qinfo["quick"]
    own, oinfo = plan_schedule(DenseConfig(steps=7, lr=0.1, batch_size=2, warmup_steps=3), ref, 100, quick=True)
    assert (own.steps, own.lr, own.batch_size, own.warmup_steps) == (7, 0.1, 2, 3)
    assert oinfo["steps_basis"] == "steps (config)"
