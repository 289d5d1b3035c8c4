"""TIPS towers equal the official implementation's outputs (the parity fixtures),
and load checkpoints of other shapes (widths, depths, SwiGLU, registers, grids,
patch sizes, vocabularies) with the same function as an independent reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tips_eval
from reference_tips import random_text_checkpoint, random_vision_checkpoint, reference_text, reference_vision


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module")
def tiny(parity_dir):
    return tips_eval.load_encoder(
        "tips", vision_checkpoint=parity_dir / "tiny_mlp_vision.npz", text_checkpoint=parity_dir / "tiny_text.npz",
        tokenizer=parity_dir / "tokenizer.model", num_heads=4, text_num_heads=4)


@pytest.mark.parametrize("i", [0, 1], ids=["56x56-native-grid", "112x84-interpolated"])
def test_image_tower_matches_official(tiny, parity_dir, i):
    exp = np.load(parity_dir / "tiny_mlp_vision_expected.npz")
    x = torch.from_numpy(exp[f"input_{i}"])
    f = tiny.encode_image(x, layers=[0, 1, 2])
    b, h, w = x.shape[0], x.shape[2] // 14, x.shape[3] // 14
    assert f.global_tokens.shape == (b, 2, 64) and f.global_names == ("cls1", "cls2")
    assert f.patch_tokens.shape == (b, h, w, 64)
    assert rel_err(f.global_tokens[:, 0], exp[f"cls1_{i}"]) < 1e-5
    assert rel_err(f.global_tokens[:, 1], exp[f"cls2_{i}"]) < 1e-5
    assert rel_err(f.patch_tokens.reshape(b, -1, 64), exp[f"patch_{i}"]) < 1e-5
    layers = torch.stack([p.reshape(b, -1, 64) for _, p in f.layers])
    assert rel_err(layers, exp[f"layers_{i}"]) < 1e-5
    # each layer's cls is the first CLS of that block through the final norm; the last equals cls1
    assert rel_err(f.layers[-1][0], exp[f"cls1_{i}"]) < 1e-5


def test_text_tower_and_tokenizer_match_official(tiny, parity_dir):
    exp = np.load(parity_dir / "tiny_text_expected.npz")
    sentences = [str(s) for s in exp["sentences"]]
    ids, pads = tiny.tokenize(sentences)
    assert ids.dtype == torch.int64 and pads.dtype == torch.int64 and ids.shape == (3, 64)
    np.testing.assert_array_equal(ids.numpy(), exp["ids"])
    np.testing.assert_array_equal(pads.numpy(), exp["paddings"])
    emb = tiny.encode_text(sentences)
    assert emb.shape == (3, 64)
    assert rel_err(emb, exp["embeddings"]) < 1e-5
    assert tiny.temperature == pytest.approx(0.01)


def test_padding_is_marked_per_text_when_one_text_is_cut(tiny):
    long = " ".join(["cat"] * 100)
    ids, pads = tiny.tokenize([long, "a dog"])
    assert pads[0].sum() == 0  # cut at 64 tokens: no padding
    n = int((pads[1] == 0).sum())
    assert 0 < n < 64 and pads[1, n:].all() and not pads[1, :n].any()


def test_empty_text_gives_zero_embedding_and_leaves_batch_intact(tiny):
    both = tiny.encode_text(["", "a photo of a cat."])
    alone = tiny.encode_text(["a photo of a cat."])
    assert torch.all(both[0] == 0)
    assert rel_err(both[1], alone[0]) < 1e-5


@pytest.mark.parametrize("cfg", [
    dict(width=48, depth=2, patch=8, grid=4, registers=1, swiglu=False, heads=3),
    dict(width=96, depth=3, patch=14, grid=3, registers=1, swiglu=True, hidden=64, heads=4),
    dict(width=32, depth=1, patch=16, grid=5, registers=0, swiglu=False, heads=2),
    dict(width=40, depth=2, patch=6, grid=2, registers=4, swiglu=False, hidden=50, heads=5),
], ids=["mlp-reg1", "swiglu", "no-registers", "four-registers"])
def test_unseen_vision_shapes_match_reference(tmp_path, cfg):
    rng = np.random.default_rng(0)
    heads = cfg.pop("heads")
    sd = random_vision_checkpoint(rng, **cfg)
    path = tmp_path / "v.npz"
    np.savez(path, **sd)
    enc = tips_eval.load_encoder("tips", vision_checkpoint=str(path), num_heads=heads)
    p = cfg["patch"]
    assert enc.patch_size == p and enc.embed_dim == cfg["width"] and enc.num_layers == cfg["depth"]
    assert len(enc.global_token_names) == 1 + cfg["registers"]
    for hw in [(p * cfg["grid"], p * cfg["grid"]), (p * 5, p * 3)]:
        x = torch.rand(2, 3, *hw)
        f = enc.encode_image(x, layers=[0, -1])
        cls, regs, patches, taken = reference_vision(sd, x, heads, layers=(0, cfg["depth"] - 1))
        assert rel_err(f.global_tokens[:, 0], cls) < 1e-5
        if cfg["registers"]:
            assert rel_err(f.global_tokens[:, 1:], regs) < 1e-5
        assert rel_err(f.patch_tokens.reshape(2, -1, cfg["width"]), patches) < 1e-5
        assert rel_err(f.layers[0][1].reshape(2, -1, cfg["width"]), taken[0]) < 1e-5
        assert rel_err(f.layers[1][1].reshape(2, -1, cfg["width"]), taken[cfg["depth"] - 1]) < 1e-5


def _train_tokenizer(tmp_path, vocab):
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    words = ["red", "green", "blue", "cube", "sphere", "a", "photo", "of", "the", "cat", "dog", "on", "grass"]
    rng = np.random.default_rng(1)
    corpus.write_text("\n".join(" ".join(rng.choice(words, 6)) for _ in range(300)))
    prefix = tmp_path / "tok"
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(prefix), vocab_size=vocab, pad_id=0,
                                   eos_id=1, unk_id=2, bos_id=-1, model_type="unigram", minloglevel=2)
    return prefix.with_suffix(".model")


def test_unseen_text_shapes_and_vocabulary_match_reference(tmp_path):
    rng = np.random.default_rng(2)
    tok = _train_tokenizer(tmp_path, vocab=30)
    vsd = random_vision_checkpoint(rng, width=32, depth=1, patch=8, grid=2)
    tsd = random_text_checkpoint(rng, vocab=45, width=32, layers=3, mlp=80)
    np.savez(tmp_path / "v.npz", **vsd)
    np.savez(tmp_path / "t.npz", **tsd)
    enc = tips_eval.load_encoder("tips", vision_checkpoint=str(tmp_path / "v.npz"),
                                 text_checkpoint=str(tmp_path / "t.npz"), tokenizer=str(tok),
                                 num_heads=2, text_num_heads=4)
    texts = ["A Red cube on the grass", "two dogs", "blue"]
    ids, pads = enc.tokenize(texts)
    assert int(ids.max()) < 45
    ref = reference_text(tsd, ids, pads, heads=4)
    assert rel_err(enc.encode_text(texts), ref) < 1e-5
