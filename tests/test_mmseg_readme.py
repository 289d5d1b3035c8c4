"""The README's mmseg config snippet, loaded as a config file, builds and runs (forward, predict, one train step)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.mmseg

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module", autouse=True)
def mmseg():
    pytest.importorskip("mmseg", reason="needs the optional [mmseg] extra: pip install -e '.[mmseg]'")
    from tips_eval.mmseg import import_mmseg

    return import_mmseg()


def readme_config_snippet() -> str:
    section = README.read_text().split("## mmsegmentation (optional)", 1)[1]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, re.DOTALL) if "TipsEvalBackbone" in b]
    assert len(blocks) == 1, "the README's mmseg section should hold one config block"
    return blocks[0]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """Config.fromfile on the snippet: custom_imports must register the backbone by itself."""
    from mmengine.config import Config

    path = tmp_path_factory.mktemp("cfg") / "tips_v2_b14_ade20k_dpt.py"
    path.write_text(readme_config_snippet())
    return Config.fromfile(str(path))


@pytest.fixture(scope="module")
def cached_random_encoders():
    """Build random tips-v2-b14 once (about 10 s on 2 cores) for both variants of the snippet."""
    import tips_eval.loading

    original = tips_eval.loading.load_encoder
    cached = functools.lru_cache(maxsize=2)(lambda name, pretrained: original(name, pretrained=pretrained))
    tips_eval.loading.load_encoder = lambda name, **kw: cached(name, **kw)
    yield
    tips_eval.loading.load_encoder = original


def _batch(h: int, w: int, n: int = 2, classes: int = 150, seed: int = 0) -> dict:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n):
        s = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, classes, (1, h, w), generator=g))
        samples.append(s)
    inputs = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for _ in range(n)]
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.parametrize("key, output, blocks", [("model", "dpt", (2, 5, 8, 11)), ("linear_model", "nchw", (11,))])
def test_readme_snippet_builds_and_runs(config, cached_random_encoders, key, output, blocks):
    from mmseg.registry import MODELS

    cfg = config[key].copy()
    assert cfg.backbone.model == "tips-v2-b14" and cfg.backbone.model_kwargs == {}
    cfg.backbone.model_kwargs = dict(pretrained=False)  # the only change: random weights instead of a download
    model = MODELS.build(cfg)
    assert model.backbone.output == output and model.backbone.out_indices == blocks
    assert model.backbone.encoder.embed_dim == 768

    model.eval()
    preds = model.test_step(_batch(50, 66))  # padded to 56x70 (size_divisor 14), one slide window
    assert [p.pred_sem_seg.data.shape for p in preds] == [(1, 50, 66)] * 2
    assert preds[0].seg_logits.data.shape == (150, 50, 66)
    assert 0 <= int(preds[0].pred_sem_seg.data.min()) and int(preds[0].pred_sem_seg.data.max()) < 150

    # one training step on a small input (the snippet's preprocessor pads training batches to 448 x 448)
    model.train()
    data = model.data_preprocessor(_batch(56, 56), training=False)
    losses = model(**data, mode="loss")
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.decode_head.conv_seg.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.encoder.parameters())
    assert not model.backbone.encoder.training


def test_config_file_registers_the_backbone_in_a_fresh_process(tmp_path):
    """As mmseg's tools/train.py does: import mmseg.registry, then Config.fromfile (custom_imports) -- no import_mmseg."""
    import subprocess
    import sys

    path = tmp_path / "cfg.py"
    path.write_text(readme_config_snippet())
    code = (
        "from mmengine.config import Config\n"
        "from mmseg.registry import MODELS\n"
        f"cfg = Config.fromfile({str(path)!r})\n"
        "from tips_eval.mmseg import shim_installed, compiled_ops_available\n"
        "import mmseg.models, mmcv.ops\n"
        "print(MODELS.get('TipsEvalBackbone').__name__, shim_installed() != compiled_ops_available())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["TipsEvalBackbone", "True"]
