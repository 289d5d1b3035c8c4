"""Small helpers shared by the dataset readers: file checks and wrong-root hints.

Readers check their layout up front so that a wrong path fails in a second
with one line naming the file and the expected layout, not an hour later in a
worker process. When a root points one level too high or too low,
:func:`find_meant_root` finds the folder the user most likely meant.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Sequence

#: image extensions readers pick up from folders (compared case-insensitively)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

#: how many sub-folders a wrong-root search looks into per level (keeps errors fast on huge folders)
_MAX_SCAN = 256


def is_image_file(name: str) -> bool:
    """True for visible files with a known image extension (``.JPEG`` included)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _subdirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as it:
            dirs = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []
    return [path / d for d in dirs[:_MAX_SCAN]]


def find_meant_root(root: str | os.PathLike, marker: str | Sequence[str],
                    accept: Callable[[Path], bool] | None = None, depth: int = 3) -> Path | None:
    """The folder near ``root`` that holds ``marker`` (a relative path, or several that must all exist).

    Looks at ``root``'s parents (root one level too low) and then at its
    sub-folders breadth-first up to ``depth`` levels (root too high, e.g.
    ``root/ILSVRC2012/train``). ``accept(candidate)`` can veto a match.
    Returns None when nothing nearby fits.
    """
    markers = [marker] if isinstance(marker, str) else list(marker)
    root = Path(root).expanduser()

    def fits(p: Path) -> bool:
        return all((p / m).exists() for m in markers) and (accept is None or accept(p))

    for parent in list(root.resolve().parents)[:2]:
        if fits(parent):
            return parent
    level = [root]
    for _ in range(depth):
        level = [c for p in level for c in _subdirs(p)][: _MAX_SCAN * 4]
        for cand in level:
            if fits(cand):
                return cand
    return None


def meant_root_hint(root: str | os.PathLike, marker: str | Sequence[str], expected: str,
                    accept: Callable[[Path], bool] | None = None) -> str:
    """``"did you mean X?"`` when a nearby folder fits, else a description of the expected layout."""
    meant = find_meant_root(root, marker, accept=accept)
    if meant is not None and meant != Path(root).expanduser():
        return f"did you mean {meant}? (expected layout: {expected})"
    return f"expected layout: {expected}"


def missing_files(base: str | os.PathLike, relpaths: Iterable[str]) -> list[str]:
    """The entries of ``relpaths`` (relative to ``base``) that are not files, in input order.

    Lists each folder once instead of one ``stat`` per file, so checking a
    100k-image split costs a few hundred directory reads.
    """
    base = Path(base)
    relpaths = list(relpaths)
    by_dir: dict[str, set[str]] = defaultdict(set)
    for rel in relpaths:
        head, _, name = rel.rpartition("/")
        by_dir[head].add(name)
    present: dict[str, set[str]] = {}
    for head in by_dir:
        try:
            with os.scandir(base / head if head else base) as it:
                present[head] = {e.name for e in it if not e.is_dir()}
        except OSError:
            present[head] = set()
    out = []
    for rel in relpaths:
        head, _, name = rel.rpartition("/")
        if name not in present[head]:
            out.append(rel)
    return out
