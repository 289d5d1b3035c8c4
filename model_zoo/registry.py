"""The model registry (timm's ``@register_model`` habit).

Each zoo entry is a :class:`ModelCard` (what ``tips-eval models`` lists,
readable without building anything) plus a builder function
``builder(pretrained=True, device=None, **kwargs) -> Encoder``.
``pretrained=False`` builds the architecture with random weights (tests, demo);
``device='meta'`` builds it without memory (shape checks of giant models).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

from tips_eval.errors import UnknownNameError


@dataclass(frozen=True)
class ModelCard:
    name: str
    family: str  # tips | timm | open_clip | pixels
    description: str
    image_size: int
    patch_size: int
    embed_dim: int
    has_text: bool
    weights: str  # where pretrained weights come from
    #: model names used for this checkpoint in ../shared/paper CSVs (for tables)
    paper_names: tuple[str, ...] = ()
    #: architecture/config details the builder uses (family specific)
    config: dict = field(default_factory=dict, hash=False, compare=False)

    def to_row(self) -> dict:
        row = asdict(self)
        row.pop("config")
        row["paper_names"] = ", ".join(self.paper_names)
        return row


_REGISTRY: dict[str, tuple[ModelCard, Callable]] = {}


def register_model(card: ModelCard):
    """Decorator: ``@register_model(ModelCard(...))`` on a builder function."""

    def wrap(fn: Callable) -> Callable:
        if card.name in _REGISTRY:
            raise ValueError(f"model {card.name!r} registered twice")
        _REGISTRY[card.name] = (card, fn)
        return fn

    return wrap


def list_models(family: str | None = None) -> list[str]:
    return [n for n, (c, _) in _REGISTRY.items() if family is None or c.family == family]


def get_card(name: str) -> ModelCard:
    return _lookup(name)[0]


def create_model(name: str, **kwargs):
    card, builder = _lookup(name)
    return builder(**kwargs)


def _lookup(name: str):
    key = name.lower().replace("_", "-")
    if key not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(key, list(_REGISTRY), n=3)
        raise UnknownNameError(
            f"unknown model {name!r}",
            hint=(f"did you mean {', '.join(close)}? " if close else "") + "`tips-eval models` lists the zoo",
        )
    return _REGISTRY[key]
