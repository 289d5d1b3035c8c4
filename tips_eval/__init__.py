"""tips-eval: frozen-feature evaluation of image and image-text encoders.

Public API::

    import tips_eval
    enc = tips_eval.load_encoder("tips", vision_checkpoint=..., text_checkpoint=..., tokenizer=...)
    f = enc.encode_image(pixels, layers=[2, 5, 8, 11])
    t = enc.encode_text(["a photo of a cat"])
"""

from .encoder import Encoder, Features
from .errors import TipsEvalError
from .loading import load_encoder
from .preprocess import Preprocess

__version__ = "0.1.0"


def list_models(family: str | None = None) -> list[str]:
    """Names of the zoo entries (optionally of one family: tips, timm, open_clip, pixels)."""
    from .model_zoo import list_models as _list

    return _list(family)


def evaluate(model, suite="paper", data_root=None, **kwargs):
    """Run (or reuse) a suite for a model or list of models; a tidy pandas DataFrame.

    ``tips_eval.evaluate("tips-v2-b14", suite="paper", data_root="/data")``; keyword
    arguments go to :func:`tips_eval.runner.run_suite` and :class:`~tips_eval.task_api.RunContext`.
    """
    from .runner import evaluate as _evaluate

    return _evaluate(model, suite, data_root, **kwargs)


__all__ = ["evaluate", "Encoder", "Features", "Preprocess", "TipsEvalError", "load_encoder", "list_models", "__version__"]
