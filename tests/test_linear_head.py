"""Linear segmentation head (DINOv2 "lin." / DINOv3) and the DINOv2 depth-bins head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tips_eval.decoders import DepthBinsHead, LinearHead
from tips_eval.errors import DataError


def layer(batch=2, h=3, w=4, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=g), torch.randn(batch, h, w, dim, generator=g)


def test_linear_head_shapes_and_resize():
    head = LinearHead(8, 5)
    assert head(layer()).shape == (2, 5, 3, 4)  # one (cls, patch) pair without a list
    assert head([layer()], image_size=(42, 56)).shape == (2, 5, 42, 56)


def test_linear_head_init_and_parts():
    head = LinearHead(64, 150)
    assert isinstance(head.bn, torch.nn.BatchNorm2d) and head.conv.kernel_size == (1, 1)
    assert torch.all(head.conv.bias == 0)
    assert 0.008 < head.conv.weight.std().item() < 0.012 and abs(head.conv.weight.mean().item()) < 1e-3
    assert isinstance(LinearHead(8, 2, batchnorm=False).bn, torch.nn.Identity)
    assert isinstance(LinearHead(8, 2, dropout=0.1).dropout, torch.nn.Dropout2d)


def test_use_cls_doubles_the_input_and_uses_the_token():
    plain, with_cls = LinearHead(8, 3), LinearHead(8, 3, use_cls=True)
    assert plain.conv.in_channels == 8 and with_cls.conv.in_channels == 16 and with_cls.bn.num_features == 16
    cls, patch = layer()
    feats = with_cls.features([(cls, patch)])
    # patch channels first, then the broadcast CLS (DINOv2/v3 order)
    torch.testing.assert_close(feats[:, :8], patch.permute(0, 3, 1, 2))
    torch.testing.assert_close(feats[:, 8:], cls[:, :, None, None].expand(-1, -1, 3, 4))
    with_cls.eval(), plain.eval()
    with torch.no_grad():
        assert (with_cls([(cls, patch)]) - with_cls([(cls + 1, patch)])).abs().max() > 1e-4
        torch.testing.assert_close(plain([(cls, patch)]), plain([(cls + 1, patch)]))


def test_multi_layer_concatenation_and_resize():
    head = LinearHead(8, 4, use_cls=True, n_layers=2)
    assert head.conv.in_channels == 32
    a, b = layer(seed=1), layer(h=6, w=8, seed=2)  # second layer on a finer grid: resized to the first
    feats = head.features([a, b])
    assert feats.shape == (2, 32, 3, 4)
    expected_b = F.interpolate(b[1].permute(0, 3, 1, 2), size=(3, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(feats[:, 16:24], expected_b)
    with pytest.raises(DataError, match="built for 2 layer"):
        head([a])


def test_bad_inputs_are_named():
    head = LinearHead(8, 2, use_cls=True)
    cls, patch = layer()
    with pytest.raises(DataError, match=r"\(2, 8, 3, 4\); expected \(B, h, w, 8\)"):
        head([(cls, patch.permute(0, 3, 1, 2))])  # channels-first by mistake
    with pytest.raises(DataError, match="CLS token of shape None"):
        head([(None, patch)])


def test_linear_head_gradients_flow():
    head = LinearHead(8, 3, use_cls=True, dropout=0.1)
    cls, patch = layer()
    patch.requires_grad_(True)
    logits = head([(cls, patch)], image_size=(12, 16))
    F.cross_entropy(logits, torch.randint(0, 3, (2, 12, 16))).backward()
    for p in (head.conv.weight, head.conv.bias, head.bn.weight, head.bn.bias):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert patch.grad.abs().sum() > 0


def test_depth_head_shapes_and_channels():
    head = DepthBinsHead(8)
    assert head.conv.in_channels == 16 and head.conv.out_channels == 256  # CLS concatenated by default
    assert DepthBinsHead(8, use_cls=False).conv.in_channels == 8
    assert DepthBinsHead(8, n_layers=4).conv.in_channels == 64
    assert isinstance(head.bn, torch.nn.Identity)
    assert isinstance(DepthBinsHead(8, batchnorm=True).bn, torch.nn.BatchNorm2d)
    out = head(layer())
    assert out.shape == (2, 1, 12, 16)  # x4 upsampled patch grid
    assert head(layer(), image_size=(30, 40)).shape == (2, 1, 30, 40)
    assert "bin_centers" not in head.state_dict()


def test_depth_head_is_dinov2_linear_bins():
    """relu(logits) + 0.1, normalised, expectation over linspace bins; features upsampled x4 first."""
    head = DepthBinsHead(8, n_bins=4, min_depth=1.0, max_depth=4.0, upsample=2)
    cls, patch = layer()
    x = torch.cat([patch.permute(0, 3, 1, 2), cls[:, :, None, None].expand(-1, -1, 3, 4)], 1)
    x = F.interpolate(x, size=(6, 8), mode="bilinear", align_corners=False)
    scores = torch.relu(head.conv(x)) + 0.1
    manual = (scores * torch.tensor([1.0, 2.0, 3.0, 4.0])[None, :, None, None]).sum(1, True) / scores.sum(1, True)
    torch.testing.assert_close(head([(cls, patch)]), manual)
    with torch.no_grad():  # one dominant bin: depth = (0.1 * sum(bins) + 100 * bin_2) / (0.1 * 4 + 100)
        head.conv.weight.zero_()
        head.conv.bias.copy_(torch.tensor([-5.0, -5.0, 100.0, -5.0]))  # score 100.1
        depth = head([(cls, patch)])
    torch.testing.assert_close(depth, torch.full_like(depth, (0.1 * 10 + 100 * 3.0) / 100.4))


def test_depth_stays_in_range_and_trains():
    head = DepthBinsHead(8, n_bins=16, min_depth=0.5, max_depth=3.0)
    with torch.no_grad():
        head.conv.weight.normal_(0, 50.0)  # extreme logits
    cls, patch = layer(h=5, w=5)
    depth = head([(cls * 10, patch * 10)], image_size=(37, 41))
    assert depth.min() >= 0.5 and depth.max() <= 3.0 and torch.isfinite(depth).all()
    head = DepthBinsHead(8, n_bins=16, min_depth=0.5, max_depth=3.0)
    loss = (head(layer()) - 2.0).abs().mean()
    loss.backward()
    assert head.conv.weight.grad.abs().sum() > 0 and head.conv.bias.grad.abs().sum() > 0


def test_depth_head_validates_arguments():
    with pytest.raises(ValueError, match="min_depth"):
        DepthBinsHead(8, min_depth=2.0, max_depth=1.0)
    with pytest.raises(ValueError, match="upsample"):
        DepthBinsHead(8, upsample=0)


def test_depth_head_float32_under_autocast():
    head = DepthBinsHead(8, n_bins=16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert head(layer(), image_size=(7, 9)).dtype == torch.float32


def test_depth_head_fast_path_equals_upsampling_the_features_first():
    """Conv at the token grid then upsample == upsample the features then conv (DINOv2's order)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    for batchnorm in (False, True):
        head = DepthBinsHead(24, n_bins=16, min_depth=0.5, max_depth=4.0, use_cls=True, upsample=4,
                             batchnorm=batchnorm)
        with torch.no_grad():
            head.conv.weight.normal_(0, 0.3)
            head.conv.bias.normal_(0, 0.3)
        head.eval()
        layers = [(torch.randn(2, 24), torch.randn(2, 3, 5, 24))]
        fast = head(layers, image_size=(30, 44))
        logits = head.conv(head.bn(head.features(layers)))  # the reference order
        probs = (F.relu(logits) + 0.1) / (F.relu(logits) + 0.1).sum(1, keepdim=True)
        ref = torch.einsum("bkhw,k->bhw", probs, head.bin_centers)[:, None]
        ref = F.interpolate(ref, size=(30, 44), mode="bilinear", align_corners=False).clamp(0.5, 4.0)
        assert torch.allclose(fast, ref, atol=1e-5)
