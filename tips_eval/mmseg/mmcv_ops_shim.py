"""A stand-in for mmcv's compiled ops (``mmcv._ext``) so mmseg imports on mmcv-lite.

mmseg 1.2.2 imports ``mmcv.ops`` unconditionally (``mmseg.utils.mask_classification``,
``mmseg.models.losses.focal_loss``, ...), and every ``mmcv/ops/*.py`` module
calls ``mmcv.utils.ext_loader.load_ext("_ext", [names])`` at import time, which
does ``importlib.import_module("mmcv._ext")`` and asserts each name exists.
mmcv-lite (the PyPI wheel that needs no compiler) ships ``mmcv.ops`` without
``mmcv._ext``; the full ``mmcv`` wheel is source-only on PyPI (a 10-20 minute
CUDA/C++ build).

The shim puts one module object at ``sys.modules["mmcv._ext"]`` whose every
attribute is a function that raises :class:`MissingCompiledOpError` naming the
op. So ``import mmseg.models`` works, pure-PyTorch ops (``mmcv.ops.point_sample``,
used by mmseg's point/mask heads) keep working, and a compiled op
(``nms``, ``sigmoid_focal_loss``, ``deform_conv``, ``psamask``, CCAttention, ...)
fails with one clear line the moment it is called. ``mmcv.utils.ext_loader.check_ops_exist()``
still answers False (the stub has no loader). Nothing else in mmcv is touched.

When a compiled ``mmcv._ext`` is importable (a full mmcv install), no shim is
installed and the real ops are used.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

from tips_eval.errors import TipsEvalError

SHIM_MARK = "__tips_eval_mmcv_ops_shim__"


class MissingCompiledOpError(TipsEvalError, NotImplementedError):
    """A compiled mmcv op was called while only mmcv-lite (no ``mmcv._ext``) is installed."""


class _MissingOps(types.ModuleType):
    """``mmcv._ext`` stand-in: any op name resolves to a function that raises."""

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):  # keep introspection (copy, pickle, inspect) sane
            raise AttributeError(name)

        def missing_op(*args, **kwargs):
            raise MissingCompiledOpError(
                f"mmcv op '{name}' needs mmcv's compiled extension (mmcv._ext), which mmcv-lite does not ship",
                hint="use a model/loss without it, or install the full mmcv<2.2 (compiles from source: "
                "pip install 'mmcv>=2.0.0rc4,<2.2.0'); tips_eval then uses the real ops",
            )

        missing_op.__name__ = missing_op.__qualname__ = name
        return missing_op


def compiled_ops_available() -> bool:
    """True when a real compiled ``mmcv._ext`` can be imported (not our stand-in)."""
    current = sys.modules.get("mmcv._ext")
    if current is not None:
        return not getattr(current, SHIM_MARK, False)
    try:
        return importlib.util.find_spec("mmcv._ext") is not None
    except (ImportError, ValueError):
        return False


def shim_installed() -> bool:
    """True when ``mmcv._ext`` is this module's stand-in."""
    return bool(getattr(sys.modules.get("mmcv._ext"), SHIM_MARK, False))


def install_mmcv_ops_shim() -> bool:
    """Install the ``mmcv._ext`` stand-in unless real compiled ops exist; True if the shim is (now) in place.

    Idempotent. Must run before the first ``import mmcv.ops`` (``import_mmseg`` does it).
    """
    if shim_installed():
        return True
    if compiled_ops_available():
        return False
    import mmcv  # the parent package must exist (mmcv-lite or mmcv)

    stub = _MissingOps("mmcv._ext", "tips_eval stand-in for mmcv's compiled ops (mmcv-lite has none)")
    stub.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)  # no loader: check_ops_exist() stays False
    setattr(stub, SHIM_MARK, True)
    sys.modules["mmcv._ext"] = stub
    mmcv._ext = stub
    return True
