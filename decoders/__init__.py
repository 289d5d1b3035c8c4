"""Trainable heads on frozen features: linear probes and the TIPS DPT decoder.

>>> from tips_eval.decoders import load_tips_dpt, to_dpt_inputs
>>> dpt = load_tips_dpt("tips_v2_b14_depth_dpt.npz", "depth")   # PyTorch or Scenic layout
>>> depth = dpt(to_dpt_inputs(features.layers), image_size=(480, 640))  # (B, 1, 480, 640), metres
"""

from .checkpoint import dpt_from_state_dict, infer_dpt_config, load_tips_dpt, save_tips_dpt
from .dpt import TASKS, DPTDecoder, UnknownTaskError, to_dpt_inputs
from .linear_head import DepthBinsHead, LinearHead
from .scenic import scenic_to_torch, torch_to_scenic

__all__ = [
    "load_tips_dpt", "save_tips_dpt", "dpt_from_state_dict", "infer_dpt_config",
    "DPTDecoder", "to_dpt_inputs", "TASKS", "UnknownTaskError",
    "LinearHead", "DepthBinsHead", "scenic_to_torch", "torch_to_scenic",
]
