"""Bad DPT checkpoints and arguments fail with one clear line, and nothing is half-loaded."""

from __future__ import annotations

import numpy as np
import pytest

from tips_eval.decoders import UnknownTaskError, load_tips_dpt
from tips_eval.errors import CheckpointError, CheckpointNotFoundError, TipsEvalError


@pytest.fixture()
def seg_arrays(parity_dir):
    return dict(np.load(parity_dir / "dpt_segmentation_shared.npz"))


def _load_error(tmp_path, arrays, task="segmentation", exc=CheckpointError) -> str:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(exc) as info:
        load_tips_dpt(path, task)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_key(tmp_path, seg_arrays):
    del seg_arrays["dpt.fusion_blocks.2.residual_unit.conv1.weight"]
    msg = _load_error(tmp_path, seg_arrays)
    assert "missing: dpt.fusion_blocks.2.residual_unit.conv1.weight" in msg


def test_missing_key_needed_for_inference(tmp_path, seg_arrays):
    del seg_arrays["head.weight"]
    assert "missing: head.weight" in _load_error(tmp_path, seg_arrays)


def test_wrong_shape(tmp_path, seg_arrays):
    seg_arrays["dpt.convs.2.weight"] = np.zeros((32, 32, 1, 1), np.float32)
    seg_arrays["head.bias"] = np.zeros(4, np.float32)
    msg = _load_error(tmp_path, seg_arrays)
    assert "dpt.convs.2.weight (32, 32, 1, 1) (expected (32, 32, 3, 3))" in msg
    assert "head.bias (4,) (expected (5,))" in msg


def test_wrong_rank_of_a_width_key(tmp_path, seg_arrays):
    seg_arrays["dpt.reassemble.out_projections.1.weight"] = np.zeros((16, 64), np.float32)
    assert "out_projections.1.weight (16, 64) (expected 4-D)" in _load_error(tmp_path, seg_arrays)


def test_unexpected_keys_listed_together_with_missing(tmp_path, seg_arrays):
    seg_arrays["dpt.extra.weight"] = np.zeros(3, np.float32)
    del seg_arrays["dpt.project.bias"]
    msg = _load_error(tmp_path, seg_arrays)
    assert "missing: dpt.project.bias" in msg and "unexpected: dpt.extra.weight" in msg


def test_depth_checkpoint_is_not_a_segmentation_one(tmp_path, parity_dir):
    arrays = dict(np.load(parity_dir / "dpt_depth_shared.npz"))
    assert "unexpected: bin_centers" in _load_error(tmp_path, arrays, task="segmentation")


def test_bin_centers_must_match_the_head(tmp_path, parity_dir):
    arrays = dict(np.load(parity_dir / "dpt_depth_shared.npz"))
    arrays["bin_centers"] = np.linspace(0.001, 10, 8).astype(np.float32)
    assert "bin_centers (8,) (expected (16,))" in _load_error(tmp_path, arrays, task="depth")


def test_integer_weights_refused(tmp_path, seg_arrays):
    seg_arrays["head.bias"] = np.zeros(5, np.int64)
    assert "not floating point: head.bias" in _load_error(tmp_path, seg_arrays)


def test_unknown_task_fails_before_reading(tmp_path):
    with pytest.raises(UnknownTaskError) as info:
        load_tips_dpt(tmp_path / "does-not-exist.npz", "segmantation")
    assert str(info.value) == "unknown DPT task 'segmantation'; expected one of segmentation, depth, normals"
    assert isinstance(info.value, (ValueError, KeyError, TipsEvalError))


def test_pickled_npz_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, **{"head.weight": np.array([{"code": 1}], dtype=object)})
    with pytest.raises(CheckpointError, match="pickled") as info:
        load_tips_dpt(path, "normals")
    assert "\n" not in str(info.value)


def test_not_an_npz(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("this is not a zip archive\n")
    with pytest.raises(CheckpointError, match="notes.npz"):
        load_tips_dpt(path, "depth")


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="nope.npz"):
        load_tips_dpt(tmp_path / "nope.npz", "depth")
