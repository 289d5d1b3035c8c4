"""DPT checkpoints in the released Scenic/Flax layout: conversion both ways, loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tips_eval.decoders import DPTDecoder, load_tips_dpt, save_tips_dpt, scenic_to_torch, torch_to_scenic
from tips_eval.errors import CheckpointError

RESIZED = (56, 70)


def official_scenic_layout(sd: dict[str, np.ndarray], head: str, prefix: str = "decoder/") -> dict:
    """Flax arrays written with the official converter's formulas, independently of tips_eval.

    conv (out, in, H, W) -> kernel (H, W, in, out); transposed conv (in, out, H, W) ->
    kernel (H, W, in, out) flipped 180 degrees; dense (out, in) -> (in, out).
    """
    out = {}
    for key, v in sd.items():
        parts = key.split(".")
        leaf = "kernel" if parts[-1] == "weight" else "bias"
        if key.startswith("head."):
            path = f"{head}/{leaf}"
        elif key == "bin_centers":
            continue
        elif parts[1] == "reassemble":
            name = {"out_projections": "out_projection", "readout_projects": "readout_projects",
                    "resize_layers": "resize_layers"}[parts[2]]
            path = f"dpt/reassemble_blocks/{name}_{parts[3]}/{leaf}"
        elif parts[1] == "convs":
            path = f"dpt/convs_{parts[2]}/{leaf}"
        elif parts[1] == "fusion_blocks":
            i = int(parts[2])
            if parts[3] == "out_conv":
                path = f"dpt/fusion_blocks_{i}/Conv_0/{leaf}"
            else:
                idx = 0 if (i == 0 or parts[3] == "residual_unit") else 1
                path = f"dpt/fusion_blocks_{i}/PreActResidualConvUnit_{idx}/{parts[4]}/{leaf}"
        else:
            path = f"dpt/project/{leaf}"
        if leaf == "kernel":
            if v.ndim == 2:
                v = v.T
            elif key.startswith("dpt.reassemble.resize_layers.") and parts[3] in ("0", "1"):
                v = v.transpose(2, 3, 0, 1)[::-1, ::-1]
            else:
                v = v.transpose(2, 3, 1, 0)
        out[prefix + path] = np.ascontiguousarray(v)
    return out


@pytest.fixture(scope="module")
def expected(parity_dir):
    return dict(np.load(parity_dir / "dpt_shared_expected.npz"))


@pytest.fixture(scope="module")
def features(expected):
    return [(torch.from_numpy(expected[f"cls_{k}"]), torch.from_numpy(expected[f"patch_{k}"])) for k in range(4)]


def _close(actual: torch.Tensor, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual.detach().numpy(), expected, rtol=1e-5,
                               atol=1e-5 * float(np.abs(expected).max()))


@pytest.mark.parametrize("task,head", [("segmentation", "pixel_segmentation"), ("depth", "pixel_depth_classif"),
                                       ("normals", "pixel_normals")])
def test_scenic_npz_matches_official_outputs(task, head, parity_dir, expected, features, tmp_path):
    torch_arrays = dict(np.load(parity_dir / f"dpt_{task}_shared.npz"))
    path = tmp_path / f"{task}_dpt.npz"
    np.savez(path, **official_scenic_layout(torch_arrays, head))
    model = load_tips_dpt(path, task)
    with torch.no_grad():
        _close(model(features), expected[f"{task}_native"])
        _close(model(features, image_size=RESIZED), expected[f"{task}_resized"])


def test_scenic_variants_without_prefix_and_aliases(parity_dir, expected, features, tmp_path):
    """No ``decoder/`` or ``dpt/`` level, ``out_conv`` for ``Conv_0``, head ``segmentation_head``; a .zip name."""
    arrays = official_scenic_layout(dict(np.load(parity_dir / "dpt_segmentation_shared.npz")),
                                    "segmentation_head", prefix="")
    arrays = {k.replace("Conv_0", "out_conv").removeprefix("dpt/"): v for k, v in arrays.items()}
    path = tmp_path / "seg_dpt.zip"  # the released heads are zips of .npy arrays
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with torch.no_grad():
        _close(load_tips_dpt(path, "segmentation")(features), expected["segmentation_native"])


def test_torch_scenic_round_trip_is_exact(parity_dir):
    sd = {k: torch.from_numpy(v) for k, v in np.load(parity_dir / "dpt_depth_shared.npz").items()}
    flat = torch_to_scenic(sd, task="depth")
    assert "decoder/pixel_depth_classif/kernel" in flat and "decoder/bin_centers" in flat
    assert flat["decoder/dpt/convs_1/kernel"].shape == (3, 3, 16, 32)  # HWIO
    assert flat["decoder/dpt/reassemble_blocks/readout_projects_0/kernel"].shape == (128, 64)
    # transposed conv: torch (in, out, H, W) -> flax (H, W, in, out), flipped
    w = sd["dpt.reassemble.resize_layers.0.weight"].numpy()
    np.testing.assert_array_equal(flat["decoder/dpt/reassemble_blocks/resize_layers_0/kernel"],
                                  w.transpose(2, 3, 0, 1)[::-1, ::-1])
    back = scenic_to_torch(flat)
    assert set(back) == set(sd)
    for k in sd:
        torch.testing.assert_close(back[k], sd[k], rtol=0, atol=0)


def test_torch_to_scenic_matches_the_official_layout(parity_dir):
    arrays = dict(np.load(parity_dir / "dpt_normals_shared.npz"))
    ours = torch_to_scenic(arrays)  # head name inferred: 3 outputs -> normals
    theirs = official_scenic_layout(arrays, "pixel_normals")
    assert set(ours) == set(theirs)
    for k in theirs:
        np.testing.assert_array_equal(ours[k], theirs[k])


@pytest.mark.parametrize("task,kwargs", [("segmentation", dict(num_classes=7)),
                                         ("depth", dict(num_bins=12, min_depth=0.5, max_depth=3.0))])
def test_scenic_saved_model_computes_the_same(task, kwargs, tmp_path):
    g = torch.Generator().manual_seed(3)
    model = DPTDecoder(task, 48, 16, (4, 8, 16, 32), **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    path = save_tips_dpt(model, tmp_path / "m.npz", layout="scenic")
    assert all("/" in k for k in np.load(path).files)
    loaded = load_tips_dpt(path, task)
    assert loaded.config() == model.config()
    feats = [(torch.randn(1, 48, generator=g), torch.randn(1, 48, 3, 4, generator=g)) for _ in range(4)]
    with torch.no_grad():
        torch.testing.assert_close(loaded(feats, image_size=(40, 50)), model(feats, image_size=(40, 50)))


def test_scenic_without_bin_centers_uses_default_range(parity_dir, tmp_path):
    arrays = official_scenic_layout(dict(np.load(parity_dir / "dpt_depth_shared.npz")), "pixel_depth_classif")
    assert not any("bin_centers" in k for k in arrays)
    np.savez(tmp_path / "d.npz", **arrays)
    cfg = load_tips_dpt(tmp_path / "d.npz", "depth").config()
    assert (cfg["num_bins"], cfg["min_depth"], cfg["max_depth"]) == (16, 0.001, 10.0)


def test_scenic_errors(parity_dir):
    arrays = official_scenic_layout(dict(np.load(parity_dir / "dpt_segmentation_shared.npz")), "pixel_segmentation")
    with pytest.raises(CheckpointError, match="decoder/optimizer/step"):
        scenic_to_torch({**arrays, "decoder/optimizer/step": np.zeros(1)})
    with pytest.raises(CheckpointError, match="2 task heads"):
        scenic_to_torch({**arrays, "decoder/pixel_normals/kernel": np.zeros((32, 3), np.float32)})
    bad = dict(arrays)
    bad["decoder/dpt/convs_0/kernel"] = bad["decoder/dpt/convs_0/kernel"][0]
    with pytest.raises(CheckpointError, match=r"convs_0/kernel has shape \(3, 8, 32\)"):
        scenic_to_torch(bad)
    with pytest.raises(CheckpointError, match="cannot convert"):
        torch_to_scenic({"encoder.weight": np.zeros(2)})
