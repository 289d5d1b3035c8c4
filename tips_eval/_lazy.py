"""Import the plug-in modules of a registry on first use (readers, tasks)."""

from __future__ import annotations

import importlib


def import_plugins(package: str, modules) -> None:
    """Import ``package.<m>`` for each m; a module that is not there is skipped, an error inside one is not."""
    for mod in modules:
        try:
            importlib.import_module(f"{package}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{package}.{mod}":
                raise
