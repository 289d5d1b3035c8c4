"""The core never imports mmseg/mmcv/mmengine; the mmcv._ext stand-in is used only when no compiled ops exist."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.mmseg

OPENMMLAB = ("mmseg", "mmcv", "mmengine")


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_core_imports_never_load_openmmlab():
    """Runs with and without the extra: with it installed, this is the check that matters."""
    out = _run(f"""
        import importlib, json, sys
        seen = {{}}
        for name in ["tips_eval", "tips_eval.metrics", "tips_eval.decoders", "tips_eval.runner",
                     "tips_eval.model_zoo", "tips_eval.mmseg"]:
            importlib.import_module(name)
            seen[name] = sorted(m for m in sys.modules if m.split(".")[0] in {OPENMMLAB!r})
        print(json.dumps(seen))
        """)
    seen = json.loads(out)
    assert list(seen) == ["tips_eval", "tips_eval.metrics", "tips_eval.decoders", "tips_eval.runner",
                          "tips_eval.model_zoo", "tips_eval.mmseg"]
    assert all(mods == [] for mods in seen.values()), seen


def test_import_mmseg_without_the_extra_says_how_to_install():
    out = _run("""
        import json, sys
        sys.modules["mmcv"] = None  # as if mmcv(-lite) were not installed
        from tips_eval.mmseg import MMSegNotInstalledError, import_mmseg
        try:
            import_mmseg()
        except MMSegNotInstalledError as e:
            print(json.dumps([str(e), isinstance(e, ImportError)]))
        """)
    message, is_import_error = json.loads(out)
    assert is_import_error and "needs mmcv" in message and 'pip install "tips-eval[mmseg]"' in message


@pytest.fixture(scope="module")
def mmseg():
    pytest.importorskip("mmseg", reason="needs the optional [mmseg] extra: pip install -e '.[mmseg]'")
    from tips_eval.mmseg import import_mmseg

    return import_mmseg()


def test_import_mmseg_registers_backbone(mmseg):
    from mmseg.registry import MODELS

    import tips_eval.mmseg as tm

    assert MODELS.get("TipsEvalBackbone") is tm.TipsEvalBackbone
    assert mmseg.__version__ == "1.2.2"
    assert tm.import_mmseg() is mmseg  # idempotent


def test_compiled_op_raises_clear_error(mmseg):
    import torch

    from tips_eval.errors import TipsEvalError
    from tips_eval.mmseg import (
        MissingCompiledOpError,
        compiled_ops_available,
        shim_installed,
    )

    if compiled_ops_available():
        pytest.skip("a compiled mmcv._ext is installed: no stand-in is used")
    import mmcv.ops
    from mmcv.utils.ext_loader import check_ops_exist

    assert shim_installed() and not check_ops_exist()
    with pytest.raises(MissingCompiledOpError, match="mmcv op 'nms' needs mmcv's compiled extension") as info:
        mmcv.ops.nms(torch.rand(3, 4), torch.rand(3), 0.5)
    assert isinstance(info.value, TipsEvalError) and isinstance(info.value, NotImplementedError)
    with pytest.raises(MissingCompiledOpError, match="sigmoid_focal_loss_forward"):
        mmcv.ops.sigmoid_focal_loss(torch.rand(4, 3), torch.tensor([0, 1, 2, 0]), 2.0, 0.25)


def test_pure_python_ops_still_work(mmseg):
    """mmcv.ops.point_sample (mmseg's point/mask heads) is plain grid_sample: no stand-in involved."""
    import torch
    import torch.nn.functional as F
    from mmcv.ops import point_sample

    x, pts = torch.rand(2, 3, 5, 7), torch.rand(2, 11, 2)
    ref = F.grid_sample(x, 2.0 * pts[:, :, None] - 1.0, align_corners=False)[..., 0]
    torch.testing.assert_close(point_sample(x, pts, align_corners=False), ref)


def test_real_compiled_ops_are_used_when_present():
    """A findable mmcv._ext (simulated by a meta-path finder) means no stand-in and the real functions."""
    pytest.importorskip("mmcv", reason="needs the optional [mmseg] extra: pip install -e '.[mmseg]'")
    out = _run("""
        import importlib.abc, importlib.machinery, json, sys, types

        class FakeExt(types.ModuleType):
            def __getattr__(self, name):
                if name.startswith("__"):
                    raise AttributeError(name)
                def op(*args, **kwargs):
                    raise RuntimeError(f"compiled {name} called")
                return op

        class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            def find_spec(self, fullname, path=None, target=None):
                return importlib.machinery.ModuleSpec(fullname, self) if fullname == "mmcv._ext" else None
            def create_module(self, spec):
                return FakeExt(spec.name)
            def exec_module(self, module):
                pass

        sys.meta_path.insert(0, Finder())
        import torch
        from tips_eval.mmseg import import_mmseg, install_mmcv_ops_shim, shim_installed
        import_mmseg()
        import mmcv.ops
        try:
            mmcv.ops.nms(torch.rand(3, 4), torch.rand(3), 0.5)
        except Exception as e:
            msg = f"{type(e).__name__}: {e}"
        print(json.dumps([install_mmcv_ops_shim(), shim_installed(), type(sys.modules["mmcv._ext"]).__name__, msg]))
        """)
    installed, shim, ext_type, msg = json.loads(out)
    assert (installed, shim, ext_type) == (False, False, "FakeExt")
    assert msg == "RuntimeError: compiled nms called"
