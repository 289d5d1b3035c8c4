"""Bad input to the loaders: each a clear one-line error naming the thing, never a partial load."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import tips_eval
from tips_eval.errors import (CheckpointError, CheckpointNotFoundError, ImageSizeError, TipsEvalError,
                              TokenizerError, UnknownNameError)
from reference_tips import random_text_checkpoint, random_vision_checkpoint


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.fixture
def ckpts(tmp_path, parity_dir):
    vsd = dict(np.load(parity_dir / "tiny_mlp_vision.npz"))
    return tmp_path, vsd


def save(path, sd):
    np.savez(path, **sd)
    return str(path)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(CheckpointNotFoundError) as e:
        tips_eval.load_encoder("tips", vision_checkpoint=str(tmp_path / "nope_vision.npz"))
    assert "nope_vision.npz" in one_line(e)


def test_missing_keys_are_listed_and_nothing_loads(ckpts):
    tmp, sd = ckpts
    del sd["blocks.1.norm2.weight"], sd["norm.bias"]
    with pytest.raises(CheckpointError) as e:
        tips_eval.load_encoder("tips", vision_checkpoint=save(tmp / "v.npz", sd), num_heads=4)
    msg = one_line(e)
    assert "missing" in msg and "blocks.1.norm2.weight" in msg and "norm.bias" in msg


def test_wrong_shape_names_key_and_both_shapes(ckpts):
    tmp, sd = ckpts
    sd["blocks.0.attn.proj.weight"] = np.zeros((64, 32), np.float32)
    with pytest.raises(CheckpointError) as e:
        tips_eval.load_encoder("tips", vision_checkpoint=save(tmp / "v.npz", sd), num_heads=4)
    msg = one_line(e)
    assert "blocks.0.attn.proj.weight (64, 32)" in msg and "(64, 64)" in msg


def test_unexpected_keys_are_listed(ckpts):
    tmp, sd = ckpts
    sd["head.weight"] = np.zeros((10, 64), np.float32)
    with pytest.raises(CheckpointError, match="unexpected: head.weight"):
        tips_eval.load_encoder("tips", vision_checkpoint=save(tmp / "v.npz", sd), num_heads=4)


def test_text_checkpoint_with_wrong_width(tmp_path, parity_dir):
    tsd = random_text_checkpoint(np.random.default_rng(0), vocab=71, width=32)
    with pytest.raises(CheckpointError) as e:
        tips_eval.load_encoder("tips", vision_checkpoint=parity_dir / "tiny_mlp_vision.npz", num_heads=4,
                               text_checkpoint=save(tmp_path / "t.npz", tsd), tokenizer=parity_dir / "tokenizer.model")
    msg = one_line(e)
    assert "width 32" in msg and "width 64" in msg


def test_text_checkpoint_given_as_vision_is_recognised(parity_dir):
    with pytest.raises(CheckpointError, match="looks like a TIPS text checkpoint"):
        tips_eval.load_encoder("tips", vision_checkpoint=parity_dir / "tiny_text.npz")


def test_tokenizer_that_is_not_sentencepiece(tmp_path, parity_dir):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"this is not a sentencepiece model" * 10)
    with pytest.raises(TokenizerError) as e:
        tips_eval.load_encoder("tips", vision_checkpoint=parity_dir / "tiny_mlp_vision.npz", num_heads=4,
                               text_checkpoint=parity_dir / "tiny_text.npz", text_num_heads=4, tokenizer=bad)
    assert "not a SentencePiece model" in one_line(e) and str(bad) in one_line(e)


def test_tokenizer_missing(tmp_path, parity_dir):
    with pytest.raises(TokenizerError, match="tokenizer file not found"):
        tips_eval.load_encoder("tips", vision_checkpoint=parity_dir / "tiny_mlp_vision.npz", num_heads=4,
                               text_checkpoint=parity_dir / "tiny_text.npz", text_num_heads=4,
                               tokenizer=tmp_path / "missing.model")
    with pytest.raises(CheckpointError, match="without a tokenizer"):
        tips_eval.load_encoder("tips", vision_checkpoint=parity_dir / "tiny_mlp_vision.npz", num_heads=4,
                               text_checkpoint=parity_dir / "tiny_text.npz", text_num_heads=4)


def test_tokenizer_larger_than_text_vocabulary(tmp_path, parity_dir):
    tsd = random_text_checkpoint(np.random.default_rng(0), vocab=20, width=64)
    with pytest.raises(CheckpointError, match="71 pieces"):
        tips_eval.load_encoder("tips", vision_checkpoint=parity_dir / "tiny_mlp_vision.npz", num_heads=4,
                               text_checkpoint=save(tmp_path / "t.npz", tsd), text_num_heads=4,
                               tokenizer=parity_dir / "tokenizer.model")


def test_image_side_not_multiple_of_patch_is_refused(parity_dir):
    enc = tips_eval.load_encoder("tips", vision_checkpoint=parity_dir / "tiny_mlp_vision.npz", num_heads=4)
    with pytest.raises(ImageSizeError) as e:
        enc.encode_image(torch.rand(1, 3, 60, 56))
    assert "60x56" in one_line(e) and "patch size 14" in one_line(e)
    with pytest.raises(ImageSizeError, match="expected \\(B, 3, H, W\\)"):
        enc.encode_image(torch.rand(3, 56, 56))


def test_pickled_npz_is_refused(tmp_path, parity_dir):
    sd = dict(np.load(parity_dir / "tiny_mlp_vision.npz"))
    sd["evil"] = np.array([{"code": "x"}], dtype=object)
    path = tmp_path / "v.npz"
    np.savez(path, **sd)
    with pytest.raises(CheckpointError, match="pickled objects; refused"):
        tips_eval.load_encoder("tips", vision_checkpoint=str(path), num_heads=4)


def test_malicious_torch_pickle_is_refused(tmp_path):
    from tips_eval.weights import load_state_dict_file

    class Boom:
        def __reduce__(self):
            return (exec, ("open('" + str(tmp_path / "pwned") + "', 'w').write('x')",))

    path = tmp_path / "weights.pt"
    with open(path, "wb") as f:
        pickle.dump({"w": Boom()}, f)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_state_dict_file(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_npz(tmp_path, parity_dir):
    data = (parity_dir / "tiny_mlp_vision.npz").read_bytes()
    path = tmp_path / "v.npz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a valid .npz"):
        tips_eval.load_encoder("tips", vision_checkpoint=str(path), num_heads=4)


def test_wrong_checkpoint_for_named_model(parity_dir, tmp_path):
    with pytest.raises(CheckpointError) as e:
        tips_eval.load_encoder("tips-v2-b14", vision_checkpoint=str(parity_dir / "tiny_mlp_vision.npz"),
                               text_checkpoint=str(parity_dir / "tiny_text.npz"),
                               tokenizer=str(parity_dir / "tokenizer.model"))
    msg = one_line(e)
    assert "tips-v2-b14 expects" in msg and "'embed_dim': 64" in msg and "'embed_dim': 768" in msg


def test_offline_download_says_where_to_put_the_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointNotFoundError) as e:
        tips_eval.load_encoder("tips-v2-b14")
    msg = one_line(e)
    assert "tips_v2_oss_b14_vision.npz" in msg and "put it at" in msg and "storage.googleapis.com" in msg


def test_head_count_that_does_not_divide_the_width(tmp_path):
    sd = random_vision_checkpoint(np.random.default_rng(0), width=48, depth=1, patch=8, grid=2)
    with pytest.raises(CheckpointError, match="not divisible by num_heads=5"):
        tips_eval.load_encoder("tips", vision_checkpoint=save(tmp_path / "v.npz", sd), num_heads=5)
    sd = random_vision_checkpoint(np.random.default_rng(0), width=40, depth=1, patch=8, grid=2)
    with pytest.raises(CheckpointError, match="pass num_heads="):
        tips_eval.load_encoder("tips", vision_checkpoint=save(tmp_path / "w.npz", sd))


def test_unknown_model_name_suggests_close_ones():
    with pytest.raises(UnknownNameError) as e:
        tips_eval.load_encoder("tips-v2-b16")
    assert "tips-v2-b14" in str(e.value)
    assert isinstance(e.value, TipsEvalError)
