"""Load mmengine / mmseg checkpoints with ``torch.load(weights_only=True)`` and an explicit allow-list.

An mmengine ``Runner`` checkpoint (``work_dirs/*/iter_N.pth``) holds, besides
tensors: ``message_hub.log_scalars`` as ``mmengine.logging.HistoryBuffer``
objects, whose state carries numpy arrays (``numpy._core.multiarray._reconstruct``,
``numpy.ndarray``, ``numpy.dtype``), numpy scalars (``..multiarray.scalar``) and
a dict of the buffer's statistics methods pickled as
``builtins.getattr(HistoryBuffer, "mean")``. torch >= 2.6 loads with
``weights_only=True`` by default and refuses all of these, so mmengine's own
``load_checkpoint`` / ``Runner.resume`` fail on its own files.

We never turn ``weights_only`` off. :func:`mmengine_safe_globals` allowlists
exactly those classes for the duration of a ``with`` block
(``torch.serialization.safe_globals``), and ``builtins.getattr`` is bound to a
restricted function that only resolves HistoryBuffer's statistics methods;
any other global (``os.system``, ``builtins.eval``, ``getattr(x, "__init__")``
...) is still refused by torch's weights-only unpickler.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
from collections.abc import Iterator
from typing import Any

from tips_eval.errors import CheckpointError, CheckpointNotFoundError

#: HistoryBuffer's built-in statistics (mmengine 0.10: min, max, current, mean).
_HISTORY_STATISTICS = ("min", "max", "current", "mean")


def _history_buffer():
    try:
        from mmengine.logging.history_buffer import HistoryBuffer
    except ImportError:
        from tips_eval.mmseg import INSTALL_HINT, MMSegNotInstalledError

        raise MMSegNotInstalledError("loading mmengine checkpoints needs mmengine, which is not installed",
                                     hint=INSTALL_HINT) from None
    return HistoryBuffer


def _restricted_getattr(obj: Any, name: str) -> Any:
    """``builtins.getattr`` as seen by the unpickler: HistoryBuffer statistics methods only."""
    hb = _history_buffer()
    allowed = set(_HISTORY_STATISTICS) | set(getattr(hb, "_statistics_methods", {}))
    if obj is hb and isinstance(name, str) and name in allowed and not name.startswith("_"):
        return getattr(hb, name)
    owner = getattr(obj, "__name__", type(obj).__name__)
    raise pickle.UnpicklingError(f"Unsupported global: GLOBAL getattr({owner},{name!r}) (only HistoryBuffer "
                                 "statistics methods are resolved)")


def allowed_globals() -> list:
    """The explicit allow-list: classes and ``(object, "pickled.name")`` pairs for ``safe_globals``."""
    import numpy as np

    hb = _history_buffer()
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtypes = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
              np.float16, np.float32, np.float64, np.complex64, np.complex128]
    out: list = [hb, np.ndarray, np.dtype, (_restricted_getattr, "builtins.getattr")]
    out += list(dict.fromkeys(type(np.dtype(t)) for t in dtypes))  # numpy.dtypes.Float64DType, ...
    for prefix in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x and 2.x pickles
        out += [(multiarray._reconstruct, f"{prefix}._reconstruct"), (multiarray.scalar, f"{prefix}.scalar")]
    return out


@contextlib.contextmanager
def mmengine_safe_globals() -> Iterator[None]:
    """Allow mmengine checkpoints' objects in ``torch.load(weights_only=True)`` inside the block only.

    Wrap mmengine's own loading with it, e.g. ``with mmengine_safe_globals(): runner.resume(path)``.
    """
    import torch

    with torch.serialization.safe_globals(allowed_globals()):
        yield


def load_mmengine_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """The checkpoint dict (``meta``, ``state_dict``, ``message_hub``, ``optimizer``...) of an mmengine/mmseg file.

    Raises :class:`CheckpointNotFoundError` for a missing file and
    :class:`CheckpointError` naming the refused global for anything outside
    the allow-list, or for a file that is not a torch checkpoint.
    """
    import torch

    p = os.fspath(path)
    if not os.path.isfile(p):
        raise CheckpointNotFoundError(f"mmengine checkpoint {p} does not exist")
    try:
        with mmengine_safe_globals():
            ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found is None:
            detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
            raise CheckpointError(f"{p} is not a readable torch checkpoint: "
                                  f"{detail.group(1).strip() if detail else 'unpickling failed'}") from None
        raise CheckpointError(f"{p}: refused to unpickle {found.group(1)}: not on the mmengine checkpoint allow-list",
                              hint="only tensors, containers, numpy arrays and mmengine HistoryBuffers load; "
                              "a file that needs other objects is refused on purpose (it could run code)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{p} is not a readable torch checkpoint: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{p} holds a {type(ckpt).__name__}, expected an mmengine checkpoint dict")
    return ckpt
