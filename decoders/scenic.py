"""Scenic/Flax <-> PyTorch conversion of DPT decoder checkpoints.

The released TIPSv2 DPT heads ship as Flax parameter trees flattened with
``/`` (``decoder/dpt/reassemble_blocks/out_projection_0/kernel``). The naming
and the weight layouts follow the official converter
(google-deepmind/tips ``pytorch/decoders.py``, ``_convert_scenic_checkpoint``):

- conv kernels: Flax (H, W, in, out) <-> torch (out, in, H, W);
- transposed-conv kernels: Flax (H, W, in, out) flipped 180 degrees <->
  torch (in, out, H, W) (Flax's ``ConvTranspose`` does not flip its kernel,
  torch's does);
- dense kernels: Flax (in, out) <-> torch (out, in); biases as they are.

Fusion block 0 has one residual unit (``PreActResidualConvUnit_0`` = torch
``main_unit``); blocks 1-3 have two (``_0`` = ``residual_unit``, ``_1`` =
``main_unit``); the 1x1 out conv is ``Conv_0`` (``out_conv`` also read). The
task head is one of :data:`SCENIC_HEAD_NAMES`. The ``decoder/`` and ``dpt/``
levels are optional on reading. A depth ``bin_centers`` buffer, which the
Flax tree does not hold, is carried as ``decoder/bin_centers`` so that a
round trip is lossless; without it the loader uses linspace(0.001, 10).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from tips_eval.errors import CheckpointError

from .dpt import check_task

#: Scenic names of the task head, in the order the official converter tries them.
SCENIC_HEAD_NAMES = ("pixel_segmentation", "pixel_depth_classif", "pixel_depth_regress",
                     "pixel_normals", "segmentation_head")
#: The head name :func:`torch_to_scenic` writes for each task.
TASK_HEAD_NAMES = {"segmentation": "pixel_segmentation", "depth": "pixel_depth_classif",
                   "normals": "pixel_normals"}


def _pairs(torch_name: str, scenic_name: str, kind: str, bias: bool = True):
    yield f"{torch_name}.weight", f"{scenic_name}/kernel", kind
    if bias:
        yield f"{torch_name}.bias", f"{scenic_name}/bias", "bias"


def _body_table():
    """Every (torch key, scenic path under ``dpt/``, kind) of a DPT trunk; names do not depend on widths."""
    rb, fb = "dpt.reassemble", "dpt.fusion_blocks"
    for i in range(4):
        yield from _pairs(f"{rb}.out_projections.{i}", f"reassemble_blocks/out_projection_{i}", "conv")
        yield from _pairs(f"{rb}.readout_projects.{i}", f"reassemble_blocks/readout_projects_{i}", "dense")
        yield from _pairs(f"dpt.convs.{i}", f"convs_{i}", "conv", bias=False)
        units = [("main_unit", 0)] if i == 0 else [("residual_unit", 0), ("main_unit", 1)]
        for unit, idx in units:
            for conv in ("conv1", "conv2"):
                yield from _pairs(f"{fb}.{i}.{unit}.{conv}", f"fusion_blocks_{i}/PreActResidualConvUnit_{idx}/{conv}",
                                  "conv", bias=False)
        yield from _pairs(f"{fb}.{i}.out_conv", f"fusion_blocks_{i}/Conv_0", "conv")
    for i, kind in ((0, "convT"), (1, "convT"), (3, "conv")):
        yield from _pairs(f"{rb}.resize_layers.{i}", f"reassemble_blocks/resize_layers_{i}", kind)
    yield from _pairs("dpt.project", "project", "conv")


_TORCH_TO_SCENIC = {t: ("dpt/" + s, kind) for t, s, kind in _body_table()}
_SCENIC_TO_TORCH = {s: (t, kind) for t, s, kind in _body_table()}
for _t, _s, _kind in list(_body_table()):  # the official reader also accepts ``out_conv``
    if "/Conv_0/" in _s:
        _SCENIC_TO_TORCH[_s.replace("/Conv_0/", "/out_conv/")] = (_t, _kind)
for _name in SCENIC_HEAD_NAMES:
    _SCENIC_TO_TORCH[f"{_name}/kernel"] = ("head.weight", "dense")
    _SCENIC_TO_TORCH[f"{_name}/bias"] = ("head.bias", "bias")
_SCENIC_TO_TORCH["bin_centers"] = ("bin_centers", "bias")


def _to_numpy(v) -> np.ndarray:
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


def _convert(key: str, value: np.ndarray, kind: str, to_flax: bool) -> np.ndarray:
    """One array between layouts; ``kind`` in conv / convT / dense / bias."""
    if kind == "bias":
        return value
    ndim = 2 if kind == "dense" else 4
    if value.ndim != ndim:
        raise CheckpointError(f"{key} has shape {tuple(value.shape)}; expected a {ndim}-D {kind} kernel")
    if kind == "dense":
        return value.T
    if kind == "conv":  # flax (H, W, in, out) <-> torch (out, in, H, W)
        return value.transpose(2, 3, 1, 0) if to_flax else value.transpose(3, 2, 0, 1)
    # convT: flax (H, W, in, out), spatially flipped <-> torch (in, out, H, W)
    return value.transpose(2, 3, 0, 1)[::-1, ::-1] if to_flax else value[::-1, ::-1].transpose(2, 3, 0, 1)


def _head_name_for(state_dict: Mapping, task: str | None) -> str:
    if task is not None:
        return TASK_HEAD_NAMES[check_task(task)]
    if "bin_centers" in state_dict:
        return TASK_HEAD_NAMES["depth"]
    head = state_dict.get("head.weight")
    return TASK_HEAD_NAMES["normals" if head is not None and head.shape[0] == 3 else "segmentation"]


def torch_to_scenic(state_dict: Mapping[str, torch.Tensor | np.ndarray], task: str | None = None,
                    prefix: str = "decoder/") -> dict[str, np.ndarray]:
    """A DPT state dict (official PyTorch keys) -> flat Scenic/Flax arrays.

    ``task`` picks the head name (:data:`TASK_HEAD_NAMES`); without it a
    ``bin_centers`` buffer means depth, a 3-output head normals, else
    segmentation.
    """
    head_name = _head_name_for(state_dict, task)
    out, unknown = {}, []
    for key, value in state_dict.items():
        if key in ("head.weight", "head.bias"):
            path, kind = f"{head_name}/{'kernel' if key == 'head.weight' else 'bias'}", (
                "dense" if key == "head.weight" else "bias")
        elif key == "bin_centers":
            path, kind = "bin_centers", "bias"
        elif key in _TORCH_TO_SCENIC:
            path, kind = _TORCH_TO_SCENIC[key]
        else:
            unknown.append(key)
            continue
        out[prefix + path] = np.ascontiguousarray(_convert(key, _to_numpy(value), kind, to_flax=True))
    if unknown:
        raise CheckpointError(f"not DPT decoder keys, cannot convert to Scenic: {', '.join(unknown)}")
    return out


def scenic_to_torch(flat: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flat Scenic/Flax DPT arrays -> a state dict with the official PyTorch keys.

    Keys it cannot place, or two task heads, raise one :class:`CheckpointError`.
    """
    sd, unknown, heads = {}, [], set()
    for key, value in flat.items():
        path = key[len("decoder/"):] if key.startswith("decoder/") else key
        path = path[len("dpt/"):] if path.startswith("dpt/") else path
        if path not in _SCENIC_TO_TORCH:
            unknown.append(key)
            continue
        name, kind = _SCENIC_TO_TORCH[path]
        if name.startswith("head."):
            heads.add(path.split("/")[0])
        if name in sd:
            unknown.append(f"{key} (a second {name})")
            continue
        sd[name] = torch.from_numpy(np.ascontiguousarray(_convert(key, _to_numpy(value), kind, to_flax=False)))
    if len(heads) > 1:
        raise CheckpointError(
            f"Scenic checkpoint has {len(heads)} task heads ({', '.join(sorted(heads))}); expected one")
    if unknown:
        raise CheckpointError(f"Scenic checkpoint has keys that are not DPT decoder weights: {', '.join(unknown)}")
    return sd
