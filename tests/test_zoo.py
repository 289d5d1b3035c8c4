"""Every zoo entry, built with random weights (no downloads): output shapes,
patch size, preprocessing values and text side, as its card says."""

from __future__ import annotations

import pytest
import torch

import tips_eval
from tips_eval.model_zoo import get_card, list_models

ALL = list_models()
# small enough to run for real on 2 CPU cores (everything else runs on the meta device)
REAL = ["tips-v2-b14", "tips-v1-s14-hr", "dinov2-s14", "dinov2-s14-reg", "clip-b16", "siglip-b16", "raw-pixels"]


class FakeTokenizer:
    """Stands in for tokenizers fetched from the Hugging Face hub (SigLIP)."""

    pad_id = 0

    def __init__(self, context_length=64, vocab=1000):
        self.context_length, self.vocab = context_length, vocab

    def __call__(self, texts):
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, t in enumerate(texts):
            toks = [1 + (ord(c) % (self.vocab - 1)) for c in t][: self.context_length]
            out[i, : len(toks)] = torch.tensor(toks)
        return out


def build(name, device):
    card = get_card(name)
    kwargs = {}
    if card.family == "open_clip":
        import open_clip

        text_cfg = open_clip.get_model_config(card.config["open_clip_name"])["text_cfg"]
        if text_cfg.get("hf_tokenizer_name"):  # would be fetched from the hub
            kwargs["tokenizer"] = FakeTokenizer(context_length=text_cfg.get("context_length", 77),
                                                vocab=text_cfg.get("vocab_size", 1000))
    return tips_eval.load_encoder(name, pretrained=False, device=device, **kwargs)


def expected_mean(card):
    if card.family == "tips":
        return (0.0, 0.0, 0.0)
    if card.family == "timm" or card.family == "pixels":
        return (0.485, 0.456, 0.406)
    oc = card.config["open_clip_name"]
    return (0.5, 0.5, 0.5) if ("SigLIP" in oc or "PE-Core" in oc) else (0.48145466, 0.4578275, 0.40821073)


def check_outputs(enc, card, device, batch=2):
    size = enc.image_size
    x = torch.rand(batch, 3, *size, device=device) if device != "meta" else torch.empty(batch, 3, *size, device="meta")
    layers = [0, enc.num_layers - 1]
    f = enc.encode_image(x, layers=layers)
    h, w = size[0] // enc.patch_size, size[1] // enc.patch_size
    g = len(enc.global_token_names)
    assert tuple(f.global_tokens.shape) == (batch, g, enc.global_dim)
    assert tuple(f.patch_tokens.shape) == (batch, h, w, enc.embed_dim)
    assert len(f.layers) == 2
    for cls, patch in f.layers:
        assert tuple(cls.shape) == (batch, enc.embed_dim) and tuple(patch.shape) == (batch, h, w, enc.embed_dim)
    if enc.has_text:
        t = enc.encode_text(["a photo of a cat", "a red cube"])
        assert tuple(t.shape) == (2, enc.global_dim)
    return f


@pytest.mark.parametrize("name", ALL)
def test_zoo_entry_matches_its_card_on_meta_device(name):
    card = get_card(name)
    enc = build(name, "meta")
    assert enc.name == name
    assert enc.patch_size == card.patch_size
    assert enc.has_text == card.has_text
    assert enc.image_size == (card.image_size, card.image_size)
    assert enc.preprocess.mean == pytest.approx(expected_mean(card))
    if card.family == "tips":
        assert enc.preprocess.resize == "squash" and enc.preprocess.std == (1.0, 1.0, 1.0)
        assert enc.global_token_names == ("cls1", "cls2")
        assert enc.embed_dim == card.embed_dim
        assert len(enc.dpt_layers) == 4 and enc.dpt_layers[-1] == enc.num_layers - 1
    check_outputs(enc, card, "meta")
    if not enc.has_text:
        with pytest.raises(NotImplementedError, match="image-only"):
            enc.encode_text(["x"])


@pytest.mark.parametrize("name", REAL)
def test_small_zoo_entries_run_for_real(name):
    card = get_card(name)
    enc = build(name, None)
    if card.family == "tips":  # keep CPU time small: the interface works at any multiple of 14
        enc.preprocess = enc.preprocess.replace(image_size=(112, 84))
    f = check_outputs(enc, card, "cpu")
    assert torch.isfinite(f.global_tokens).all() and torch.isfinite(f.patch_tokens).all()
    assert len(enc.fingerprint()) == 20 and enc.fingerprint() == enc.fingerprint()


def test_tips_dpt_layers_follow_the_released_heads():
    # DESIGN.md section 3: B 2,5,8,11; L 5,11,17,23; So 6,13,20,26; g 9,19,29,39
    expected = {"tips-v2-b14": (2, 5, 8, 11), "tips-v2-l14": (5, 11, 17, 23),
                "tips-v2-so400m14": (6, 13, 20, 26), "tips-v2-g14": (9, 19, 29, 39)}
    for name, layers in expected.items():
        assert build(name, "meta").dpt_layers == layers


def test_random_weights_are_labelled_and_seeded():
    a = tips_eval.load_encoder("tips-v1-s14-hr", pretrained=False, seed=3)
    b = tips_eval.load_encoder("tips-v1-s14-hr", pretrained=False, seed=3)
    c = tips_eval.load_encoder("tips-v1-s14-hr", pretrained=False, seed=4)
    assert "random weights" in a.weights_note
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    x = torch.rand(1, 3, 28, 28)
    assert torch.equal(a.encode_image(x).global_tokens, b.encode_image(x).global_tokens)
