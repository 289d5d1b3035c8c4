"""DPT decoder: parity with the official TIPS outputs, shape inference, training use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tips_eval.decoders import TASKS, DPTDecoder, load_tips_dpt, save_tips_dpt, to_dpt_inputs

RESIZED = (56, 70)  # the fixtures' image_size


def assert_rel_close(actual: torch.Tensor, expected: np.ndarray, rel: float = 1e-5) -> None:
    """Agreement to ``rel`` of the output's scale (random-weight outputs reach 1e5, some cross 0)."""
    actual = actual.detach().numpy()
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rel, atol=rel * float(np.abs(expected).max()))


@pytest.fixture(scope="module")
def expected(parity_dir):
    return dict(np.load(parity_dir / "dpt_shared_expected.npz"))


@pytest.fixture(scope="module")
def fixture_features(expected):
    return [(torch.from_numpy(expected[f"cls_{k}"]), torch.from_numpy(expected[f"patch_{k}"])) for k in range(4)]


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight and bias random and non-zero, so a misplaced or mis-laid array shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def random_features(embed_dim: int, h: int, w: int, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, embed_dim, generator=g), torch.randn(batch, embed_dim, h, w, generator=g))
            for _ in range(4)]


@pytest.mark.parametrize("task", TASKS)
def test_official_fixture_parity(task, parity_dir, expected, fixture_features):
    model = load_tips_dpt(parity_dir / f"dpt_{task}_shared.npz", task)
    with torch.no_grad():
        native = model(fixture_features)
        resized = model(fixture_features, image_size=RESIZED)
    assert_rel_close(native, expected[f"{task}_native"])
    assert_rel_close(resized, expected[f"{task}_resized"])
    channels = {"segmentation": 5, "depth": 1, "normals": 3}[task]
    assert native.shape == (2, channels, 32, 48) and resized.shape == (2, channels, *RESIZED)


def test_inferred_config_of_fixture(parity_dir):
    cfg = load_tips_dpt(parity_dir / "dpt_depth_shared.npz", "depth").config()
    assert cfg["embed_dim"] == 64 and cfg["channels"] == 32
    assert cfg["post_process_channels"] == [8, 16, 32, 64] and cfg["readout"] == "project"
    assert cfg["num_bins"] == 16 and cfg["min_depth"] == 0.001 and cfg["max_depth"] == 10.0
    assert load_tips_dpt(parity_dir / "dpt_segmentation_shared.npz", "segmentation").config()["num_classes"] == 5


def test_official_layout_is_not_flipped(parity_dir, expected, fixture_features):
    """The official loader flips ConvTranspose kernels of PyTorch files; the fixtures say not to."""
    model = load_tips_dpt(parity_dir / "dpt_segmentation_shared.npz", "segmentation")
    with torch.no_grad():
        for i in (0, 1):
            w = model.dpt.reassemble.resize_layers[i].weight
            w.copy_(w.flip([2, 3]))
        flipped = model(fixture_features).numpy()
    ref = expected["segmentation_native"]
    assert np.abs(flipped - ref).max() > 1e-3 * np.abs(ref).max()


@pytest.mark.parametrize("task,kwargs", [
    ("segmentation", dict(num_classes=7)),
    ("depth", dict(num_bins=12, min_depth=0.5, max_depth=3.0)),
    ("normals", {}),
])
def test_other_widths_round_trip_through_official_npz(task, kwargs, tmp_path):
    """A decoder of unseen sizes, saved as a plain state-dict npz, loads with every width inferred."""
    model = randomize_(DPTDecoder(task, embed_dim=48, channels=16, post_process_channels=(4, 8, 16, 32), **kwargs))
    path = tmp_path / f"{task}.npz"
    np.savez(path, **{k: v.numpy() for k, v in model.state_dict().items()})  # the official layout
    loaded = load_tips_dpt(path, task)
    cfg = loaded.config()
    assert (cfg["embed_dim"], cfg["channels"], cfg["post_process_channels"]) == (48, 16, [4, 8, 16, 32])
    if task == "depth":
        assert (cfg["num_bins"], cfg["min_depth"], cfg["max_depth"]) == (12, 0.5, 3.0)
    feats = random_features(48, h=3, w=5)  # odd grid: exercises the skip-resize path
    with torch.no_grad():
        for size in (None, (45, 75)):
            ref, out = model(feats, image_size=size), loaded(feats, image_size=size)
            torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    assert out.shape[1] == {"segmentation": 7, "depth": 1, "normals": 3}[task]


def test_save_tips_dpt_writes_loadable_npz(tmp_path):
    model = randomize_(DPTDecoder("segmentation", 24, 8, (4, 4, 8, 8), num_classes=3))
    path = save_tips_dpt(model, tmp_path / "sub" / "seg.npz")
    assert sorted(np.load(path).files) == sorted(model.state_dict())
    feats = random_features(24, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(load_tips_dpt(path, "segmentation")(feats), model(feats))
    assert [p.name for p in path.parent.iterdir()] == ["seg.npz"]  # no temp file left


def test_native_output_size_and_readout_ignore():
    """Native output: 16 * ceil(grid / 2); readout 'ignore' drops the CLS token and its weights."""
    model = DPTDecoder("normals", 16, 8, (4, 4, 8, 8), readout="ignore")
    assert not any("readout_projects" in k for k in model.state_dict())
    feats = random_features(16, h=5, w=6)
    out = model(feats)
    assert out.shape == (2, 3, 48, 48)
    other_cls = [(torch.zeros_like(c), p) for c, p in feats]
    torch.testing.assert_close(model(other_cls), out)


def test_cls_token_matters_with_project_readout():
    model = randomize_(DPTDecoder("segmentation", 16, 8, (4, 4, 8, 8), num_classes=2))
    feats = random_features(16, 2, 3)
    with torch.no_grad():
        a = model(feats)
        b = model([(c + 1.0, p) for c, p in feats])
    assert (a - b).abs().max() > 1e-3


def test_depth_is_expectation_over_bins():
    """Depth = sum(bins * (relu(l) + min) / sum(relu(l) + min)); inside the bin range."""
    model = randomize_(DPTDecoder("depth", 16, 8, (4, 4, 8, 8), num_bins=5, min_depth=0.2, max_depth=4.0))
    feats = random_features(16, 2, 2)
    with torch.no_grad():
        logits = model.logits(feats)
        scores = torch.relu(logits) + 0.2
        manual = (scores * torch.linspace(0.2, 4.0, 5)[None, :, None, None]).sum(1, keepdim=True) / scores.sum(1, True)
        depth = model(feats)
    torch.testing.assert_close(depth, manual)
    assert depth.min() >= 0.2 - 1e-6 and depth.max() <= 4.0 + 1e-6
    # resizing happens after the expectation
    resized = model(feats, image_size=(20, 30))
    torch.testing.assert_close(resized, torch.nn.functional.interpolate(depth, size=(20, 30), mode="bilinear"))


def test_trains_on_encoder_layers():
    """A training step from channels-last encoder layers: gradients reach every parameter."""
    model = DPTDecoder("segmentation", 16, 8, (4, 4, 8, 8), num_classes=4)
    layers = [(torch.randn(2, 16), torch.randn(2, 3, 4, 16)) for _ in range(4)]  # Features.layers layout
    inputs = to_dpt_inputs(layers)
    assert inputs[0][1].shape == (2, 16, 3, 4)
    logits = model(inputs, image_size=(42, 56))
    loss = torch.nn.functional.cross_entropy(logits, torch.randint(0, 4, (2, 42, 56)))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_constructor_validates_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        DPTDecoder("segmentation", 16)
    with pytest.raises(ValueError, match="min_depth"):
        DPTDecoder("depth", 16, min_depth=5.0, max_depth=1.0)
    with pytest.raises(ValueError, match="readout"):
        DPTDecoder("normals", 16, readout="add")
    with pytest.raises(ValueError, match="4 layers"):
        DPTDecoder("normals", 16, 8, (4, 4, 8, 8))(random_features(16, 2, 2)[:3])


def test_bin_centers_come_from_the_file(tmp_path):
    """Non-uniform saved bin centres are used as saved (the official loader loads the buffer)."""
    model = randomize_(DPTDecoder("depth", 16, 8, (4, 4, 8, 8), num_bins=6, min_depth=0.1, max_depth=8.0))
    with torch.no_grad():
        model.bin_centers.copy_(torch.from_numpy(np.geomspace(0.1, 8.0, 6).astype(np.float32)))
    np.savez(tmp_path / "d.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
    loaded = load_tips_dpt(tmp_path / "d.npz", "depth")
    torch.testing.assert_close(loaded.bin_centers, model.bin_centers, rtol=0, atol=0)
    feats = random_features(16, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(feats), model(feats))


def test_depth_stays_float32_under_autocast():
    model = DPTDecoder("depth", 16, 8, (4, 4, 8, 8), num_bins=8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(random_features(16, 2, 3), image_size=(20, 30)).dtype == torch.float32
        assert DPTDecoder("normals", 16, 8, (4, 4, 8, 8))(random_features(16, 2, 3)).dtype == torch.bfloat16
