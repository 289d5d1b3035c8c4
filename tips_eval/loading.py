"""``load_encoder``: one entry point for zoo names, TIPS files and families."""

from __future__ import annotations

import os

from .encoder import Encoder


def load_encoder(name: str, **kwargs) -> Encoder:
    """Build an encoder behind the frozen-feature interface.

    - ``load_encoder("tips", vision_checkpoint=..., text_checkpoint=..., tokenizer=...,
      num_heads=None, text_num_heads=None, image_size=None)``: official TIPS ``.npz``
      files of any size (architecture read off the shapes).
    - ``load_encoder("path/to/tips_vision.npz", ...)``: the same, with the path as the name.
    - ``load_encoder("tips-v2-b14")`` or ``load_encoder("dinov2-b14", pretrained=False)``:
      a zoo entry (``tips-eval models``); ``pretrained=False`` gives random weights.
    """
    from tips_eval.model_zoo import create_model
    from tips_eval.model_zoo.tips import load_tips

    if name.lower() == "tips":
        if "vision_checkpoint" not in kwargs:
            raise TypeError("load_encoder('tips', ...) needs vision_checkpoint=path/to/*_vision.npz")
        return load_tips(**kwargs)
    if name.endswith(".npz") or os.path.sep in name:
        return load_tips(name, **kwargs)
    return create_model(name, **kwargs)
