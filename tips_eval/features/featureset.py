"""Read side of the cache: memory-mapped, read-only arrays of one finished entry."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from tips_eval.errors import CacheError

from .spec import FORMAT_VERSION
from .store import Layout, check_entry, open_arrays, restamp


class FeatureSet:
    """Features of every item of one dataset split, rows in dataset order.

    Arrays are read-only ``np.memmap``s: ``global_tokens`` (N, G, Dg),
    ``patch_tokens`` (N, h, w, D) or None, ``layers`` [(cls (N, D), patch
    (N, h, w, D)), ...] in ``layer_indices`` order, ``value_tokens`` or None.
    Rows of images skipped as unreadable are zeros and listed in ``bad_indices``.
    """

    def __init__(self, path: str | os.PathLike, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self.key: str = manifest["key"]
        self.n: int = int(manifest["n"])
        self.global_names: tuple[str, ...] = tuple(manifest["global_names"])
        self.layer_indices: tuple[int, ...] = tuple(manifest.get("layers", []))
        self.bad_indices: list[int] = list(manifest.get("bad_indices", []))
        self.arrays: dict[str, np.memmap] = open_arrays(self.path, Layout.from_dict(manifest), "r")
        self.global_tokens = self.arrays["global_tokens"]
        self.patch_tokens = self.arrays.get("patch_tokens")
        self.value_tokens = self.arrays.get("value_tokens")
        self.layers = [(self.arrays[f"layer{j:02d}_cls"], self.arrays[f"layer{j:02d}_patch"])
                       for j in self.layer_indices]

    @classmethod
    def open(cls, path: str | os.PathLike, verify: str = "auto") -> "FeatureSet":
        """Open a finished entry; a missing, unfinished or corrupt one is a CacheError."""
        path = Path(path)
        chk = check_entry(path, verify=verify, format_version=FORMAT_VERSION)
        if chk.status != "valid":
            raise CacheError(f"feature cache {path} is {chk.status}" + (f": {chk.reason}" if chk.reason else ""),
                             hint="rerun the extraction (extract_features) to build or repair it")
        fs = cls(path, chk.manifest)
        if fs._stats_changed():
            restamp(path, chk.manifest)
        return fs

    def _stats_changed(self) -> bool:
        stats = self.manifest.get("files", {})
        for name in self.arrays:
            st = os.stat(self.path / f"{name}.npy")
            if stats.get(name) != {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}:
                return True
        return False

    # ----------------------------------------------------------------- access
    def global_token(self, name: str) -> np.ndarray:
        """One named global token for every item, (N, Dg) (a memmap view)."""
        if name not in self.global_names:
            raise KeyError(f"global token {name!r} not in {self.global_names}")
        return self.global_tokens[:, self.global_names.index(name)]

    @property
    def good_mask(self) -> np.ndarray:
        """(N,) bool, False on rows of skipped (unreadable) images."""
        mask = np.ones(self.n, dtype=bool)
        mask[self.bad_indices] = False
        return mask

    def iter_chunks(self, array_name: str, chunk: int = 1024) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, rows)`` with ``rows`` an in-memory copy of ``chunk`` rows at a time.

        ``array_name`` is a file name in :attr:`arrays` (``global_tokens``,
        ``patch_tokens``, ``layer07_patch``, ...) or a global token name
        (``cls``), which yields (rows, Dg). Memory stays bounded by one chunk.
        """
        if array_name in self.arrays:
            arr = self.arrays[array_name]
        elif array_name in self.global_names:
            arr = self.global_token(array_name)
        else:
            raise KeyError(f"{array_name!r} is not an array of {self.key}; "
                           f"have {sorted(self.arrays)} and global tokens {list(self.global_names)}")
        if chunk < 1:
            raise ValueError(f"chunk={chunk}; expected >= 1")
        for start in range(0, self.n, chunk):
            yield start, np.array(arr[start:start + chunk])

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape[1:])}:{v.dtype}" for k, v in self.arrays.items())
        return f"FeatureSet({self.key}, n={self.n}, {shapes})"
