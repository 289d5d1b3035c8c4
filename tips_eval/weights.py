"""Safe weight files: locate, download (when a network exists), hash, load.

No code runs from data: ``.npz`` files load with ``allow_pickle=False``,
``.safetensors`` through safetensors, and ``.pt/.pth`` with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError, CheckpointNotFoundError

_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def cache_root() -> Path:
    """Where downloaded weights live: ``$TIPS_EVAL_HOME/weights`` (default ~/.cache/tips_eval)."""
    home = os.environ.get("TIPS_EVAL_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tips_eval"
    )
    return Path(home)


def offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "TIPS_EVAL_OFFLINE"))


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, memoised on (path, size, mtime)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def resolve_weights(path_or_name: str | os.PathLike | None, *, url: str | None = None,
                    what: str = "checkpoint", search_dirs: tuple[str, ...] = ()) -> Path:
    """Find a weights file: explicit path, then the cache/search dirs, then ``url``.

    Offline (``HF_HUB_OFFLINE=1``) or without a network, the error says where
    to put the file.
    """
    if path_or_name is not None:
        p = Path(path_or_name).expanduser()
        if p.is_file():
            return p
        if os.path.sep in str(path_or_name):  # an explicit path that is not there
            raise CheckpointNotFoundError(f"{what} file not found: {p}", hint="check the path")
    filename = str(path_or_name) if path_or_name else (url.rsplit("/", 1)[-1] if url else None)
    if filename is None:
        raise CheckpointNotFoundError(f"no {what} given")
    dirs = [*search_dirs, os.environ.get("TIPS_EVAL_WEIGHTS", ""), str(cache_root() / "weights")]
    for d in dirs:
        if d and (Path(d) / filename).is_file():
            return Path(d) / filename
    target = cache_root() / "weights" / filename
    if url is None:
        raise CheckpointNotFoundError(
            f"{what} {filename} not found in {', '.join(d for d in dirs if d)}",
            hint=f"put the file at {target} or pass its path",
        )
    if offline():
        raise CheckpointNotFoundError(
            f"{what} {filename} is not cached and downloads are off (HF_HUB_OFFLINE=1)",
            hint=f"download {url} and put it at {target} (or set TIPS_EVAL_WEIGHTS to its folder)",
        )
    return _download(url, target, what)


def _download(url: str, target: Path, what: str) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            from tqdm.auto import tqdm

            with tqdm(total=total or None, unit="B", unit_scale=True, desc=f"download {target.name}") as bar:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, target)  # atomic: a half download is never taken as the file
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointNotFoundError(
            f"could not download {what} from {url}: {getattr(e, 'reason', e)}",
            hint=f"without a network, download it elsewhere and put it at {target}",
        ) from None
    return target


def load_npz(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` with ``allow_pickle=False``; clear errors otherwise."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointNotFoundError(f"{what} file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise CheckpointError(
                f"{what} {p} holds pickled objects; refused (allow_pickle=False)",
                hint="save plain arrays with numpy.savez",
            ) from None
        raise CheckpointError(f"{what} {p} is not a readable .npz file: {e}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"{what} {p} is not a valid .npz archive ({type(e).__name__}: {e})",
                              hint="the file may be truncated; download it again") from None


def load_state_dict_file(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A state dict from .npz / .safetensors / .pt|.pth (weights only)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointNotFoundError(f"{what} file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in load_npz(p, what).items()}
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{what} {p} is not a valid safetensors file: {e}") from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{what} {p} could not be loaded with torch.load(weights_only=True): {type(e).__name__}",
            hint="only plain tensor state dicts are accepted; pickled code is refused",
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{what} {p} is not a flat state dict of tensors")
    return obj
