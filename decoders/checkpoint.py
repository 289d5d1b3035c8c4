"""Load and save DPT decoder checkpoints (official TIPS PyTorch or Scenic layout).

Every width is read from the arrays' shapes, so checkpoints of any size load:
input embed dim and post-process channels from ``out_projections.i.weight``,
fusion channels from ``project.weight``, classes / depth bins from
``head.weight``, the readout from whether ``readout_projects`` exist, and the
depth range from the ``bin_centers`` buffer (else the official default
[0.001, 10]).

Layout conventions (checked against ``shared/fixtures/tips_parity/dpt_*``):
PyTorch-layout arrays load as they are -- the fixtures were computed with the
state dict unflipped. (The official ``load_decoder_weights`` additionally
flips the two ConvTranspose kernels of PyTorch-layout files; that does not
reproduce the fixture outputs, which differ from it by ~3% -- see
``tests/test_dpt.py::test_official_layout_is_not_flipped``.) Scenic arrays
are converted as the official ``_convert_scenic_checkpoint`` does
(:mod:`.scenic`). Legacy flat keys (``reassemble.*``, ``pixel_*``) are
renamed as the official loader does.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from tips_eval.errors import CheckpointError
from tips_eval.weights import load_npz

from .dpt import DPTDecoder, check_task
from .scenic import scenic_to_torch, torch_to_scenic

DEFAULT_DEPTH_RANGE = (0.001, 10.0)  # official DepthDecoder defaults (min_depth, max_depth)
_LEGACY_PREFIXES = {
    "reassemble.": "dpt.reassemble.", "convs.": "dpt.convs.", "fusion_blocks.": "dpt.fusion_blocks.",
    "project.": "dpt.project.", "segmentation_head.": "head.", "pixel_segmentation.": "head.",
    "pixel_depth_classif.": "head.", "pixel_depth_regress.": "head.", "pixel_normals.": "head.",
}


def is_scenic_layout(keys) -> bool:
    """Scenic/Flax checkpoints name parameters with ``/`` (official rule)."""
    return any("/" in k for k in keys)


def to_torch_layout(arrays: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any supported layout -> state dict with the official PyTorch key names."""
    if is_scenic_layout(arrays):
        return scenic_to_torch(arrays)
    sd = {}
    for key, value in arrays.items():
        for old, new in _LEGACY_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        sd[key] = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
    return sd


def _shape_of(sd: dict, key: str, ndim: int, problems: list[str]) -> tuple[int, ...] | None:
    v = sd.get(key)
    if v is None:
        return None
    if v.ndim != ndim:
        problems.append(f"{key} {tuple(v.shape)} (expected {ndim}-D)")
        return None
    return tuple(v.shape)


def infer_dpt_config(sd: Mapping[str, torch.Tensor], task: str) -> tuple[dict | None, list[str]]:
    """DPTDecoder kwargs read from the shapes, and the problems that stopped it (if any)."""
    problems: list[str] = []
    proj = [_shape_of(sd, f"dpt.reassemble.out_projections.{i}.weight", 4, problems) for i in range(4)]
    project = _shape_of(sd, "dpt.project.weight", 4, problems)
    head = _shape_of(sd, "head.weight", 2, problems)
    if any(s is None for s in proj) or project is None or head is None:
        return None, problems
    cfg = dict(task=task, embed_dim=proj[0][1], channels=project[0],
               post_process_channels=tuple(s[0] for s in proj),
               readout="project" if any(k.startswith("dpt.reassemble.readout_projects.") for k in sd) else "ignore")
    if task == "depth":
        lo, hi = DEFAULT_DEPTH_RANGE
        centers = sd.get("bin_centers")
        if centers is not None and centers.ndim == 1 and centers.numel() >= 2:
            lo, hi = (float(f"{float(c):.7g}") for c in (centers[0], centers[-1]))  # float32 -> shortest
            if not 0 <= lo < hi:
                problems.append(f"bin_centers run from {lo} to {hi} (expected 0 <= first < last)")
                return None, problems
        cfg.update(num_bins=head[0], min_depth=lo, max_depth=hi)
    else:
        cfg["num_classes"] = head[0]
    return cfg, problems


def _key_problems(sd: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor] | None,
                  names: set[str], optional: set[str]) -> list[str]:
    missing = sorted(names - set(sd) - optional)
    unexpected = sorted(set(sd) - names - optional)
    wrong = []
    if expected is not None:
        wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
                 if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    not_float = [k for k, v in sd.items() if k in names and not torch.is_floating_point(v)]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong),
                        ("not floating point", not_float)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            parts.append(f"{label}: {shown}")
    return parts


def dpt_from_state_dict(arrays: Mapping[str, np.ndarray | torch.Tensor], task: str,
                        what: str = "DPT checkpoint", output_activation: bool = False) -> DPTDecoder:
    """Build a :class:`DPTDecoder` sized from ``arrays`` (any layout) and load them, strictly."""
    check_task(task)
    sd = to_torch_layout(arrays)
    readout = "project" if any(k.startswith("dpt.reassemble.readout_projects.") for k in sd) else "ignore"
    template = DPTDecoder(task, 2, 2, (1, 1, 1, 1), num_classes=1, num_bins=2, readout=readout)
    names = set(template.state_dict())
    optional = {"bin_centers"} if task == "depth" else set()
    cfg, problems = infer_dpt_config(sd, task)
    model = None
    if cfg is not None:
        model = DPTDecoder(**cfg, output_activation=output_activation)
    parts = _key_problems(sd, model.state_dict() if model is not None else None, names, optional)
    if problems:
        parts.append("cannot infer widths: " + ", ".join(problems))
    if parts:
        raise CheckpointError(f"{what} is not a {task} DPT decoder: " + "; ".join(parts),
                              hint="nothing was loaded")
    state = model.state_dict()
    state.update({k: v.to(state[k].dtype) for k, v in sd.items()})
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_tips_dpt(path: str | os.PathLike, task: str, *, output_activation: bool = False) -> DPTDecoder:
    """Load a TIPS DPT decoder ``.npz`` (PyTorch or Scenic layout) for ``task``.

    ``task``: "segmentation", "depth" or "normals". Returns the module in eval
    mode, called as ``m(features, image_size=None)``.
    """
    check_task(task)
    arrays = load_npz(path, what=f"DPT {task} checkpoint")
    return dpt_from_state_dict(arrays, task, what=f"DPT {task} checkpoint {path}",
                               output_activation=output_activation)


def save_tips_dpt(model: DPTDecoder, path: str | os.PathLike, layout: str = "torch") -> Path:
    """Write ``model`` as an ``.npz`` in the official PyTorch (``torch``) or ``scenic`` layout, atomically."""
    if layout not in ("torch", "scenic"):
        raise ValueError(f"layout {layout!r}: expected 'torch' or 'scenic'")
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    arrays = ({k: v.numpy() for k, v in sd.items()} if layout == "torch"
              else torch_to_scenic(sd, task=model.task))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
