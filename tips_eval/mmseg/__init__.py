"""Optional mmsegmentation / mmengine integration (``pip install "tips-eval[mmseg]"``).

Nothing here imports mmseg, mmcv or mmengine until a function is called, so
``import tips_eval`` (and ``import tips_eval.mmseg``) stay free of them.

>>> from tips_eval.mmseg import import_mmseg
>>> mmseg = import_mmseg()          # mmcv-ops stand-in if needed, registers TipsEvalBackbone
>>> from mmseg.registry import MODELS
>>> model = MODELS.build(dict(type="EncoderDecoder", backbone=dict(type="TipsEvalBackbone",
...                           model="tips-v2-b14", output="dpt"), decode_head=...))
>>> ckpt = load_mmengine_checkpoint("work_dirs/iter_8000.pth")   # weights_only, explicit allow-list

In an mmseg config used with mmseg's ``tools/train.py``, add
``custom_imports = dict(imports=["tips_eval.mmseg.register"], allow_failed_imports=False)``.
"""

from __future__ import annotations

from typing import Any

from tips_eval.errors import TipsEvalError

from .checkpoint import load_mmengine_checkpoint, mmengine_safe_globals
from .mmcv_ops_shim import (
    MissingCompiledOpError,
    compiled_ops_available,
    install_mmcv_ops_shim,
    shim_installed,
)

INSTALL_HINT = ('pip install "tips-eval[mmseg]" '
                '(mmsegmentation 1.2.2, mmengine 0.10.x, mmcv-lite <2.2: no compiler needed)')

#: SegDataPreProcessor settings for TIPS: pixels in [0, 1] (mean 0, std 1 on
#: [0, 255] -> [0, 1]); mmseg loads images with OpenCV, hence bgr_to_rgb.
TIPS_DATA_PREPROCESSOR = dict(
    type="SegDataPreProcessor", mean=[0.0, 0.0, 0.0], std=[255.0, 255.0, 255.0], bgr_to_rgb=True,
    pad_val=0, seg_pad_val=255,
)


class MMSegNotInstalledError(TipsEvalError, ImportError):
    """The optional ``[mmseg]`` extra (mmsegmentation, mmengine, mmcv-lite) is not installed."""


def import_mmseg(init_default_scope: bool = True) -> Any:
    """Import mmseg and register ``TipsEvalBackbone`` in ``mmseg.registry.MODELS``; returns the ``mmseg`` module.

    Installs the ``mmcv._ext`` stand-in first when only mmcv-lite is present
    (see :mod:`tips_eval.mmseg.mmcv_ops_shim`). ``init_default_scope`` is passed
    to ``mmseg.utils.register_all_modules`` (the mmseg default scope lets
    mmengine's root registries find mmseg's data preprocessors and metrics).
    Idempotent.
    """
    try:
        import mmcv  # noqa: F401
        import mmengine  # noqa: F401
    except ImportError as e:
        raise MMSegNotInstalledError(f"the mmseg integration needs {e.name}, which is not installed",
                                     hint=INSTALL_HINT) from None
    install_mmcv_ops_shim()
    try:
        import mmseg
    except ImportError as e:
        raise MMSegNotInstalledError(f"mmsegmentation is not importable ({e})", hint=INSTALL_HINT) from None
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=init_default_scope)
    from .backbone import register_backbone

    register_backbone()
    return mmseg


def __getattr__(name: str) -> Any:
    if name == "TipsEvalBackbone":  # lazily: the class derives from mmengine's BaseModule
        import_mmseg(init_default_scope=False)
        from .backbone import TipsEvalBackbone

        return TipsEvalBackbone
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "INSTALL_HINT",
    "TIPS_DATA_PREPROCESSOR",
    "MMSegNotInstalledError",
    "MissingCompiledOpError",
    "TipsEvalBackbone",
    "compiled_ops_available",
    "import_mmseg",
    "install_mmcv_ops_shim",
    "load_mmengine_checkpoint",
    "mmengine_safe_globals",
    "shim_installed",
]
