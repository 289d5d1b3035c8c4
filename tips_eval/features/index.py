"""``CacheIndex``: list, remove and verify the entries of a feature cache directory."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from tips_eval.errors import CacheError, UnknownNameError

from . import store
from .spec import FORMAT_VERSION


@dataclass
class CacheEntry:
    key: str
    path: str
    model: str
    dataset: str
    split: str
    n: int
    size_bytes: int
    complete: bool
    shards_done: int
    shards_total: int
    created: str = ""

    def to_row(self) -> dict:
        return asdict(self)


class CacheIndex:
    """The entries under ``cache_dir`` (default ``$TIPS_EVAL_HOME/features``).

    ``complete`` means a sealed manifest whose digest and key check out (a
    quick check; :meth:`verify` hashes every shard).
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        if cache_dir is None:
            from .engine import default_cache_dir

            cache_dir = default_cache_dir()
        self.root = Path(cache_dir).expanduser()

    def _dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(".")
                      and ((p / store.MANIFEST).exists() or (p / store.PROGRESS).exists()))

    def entry(self, path: Path) -> CacheEntry:
        m = store.read_json(path / store.MANIFEST)
        sealed = m is not None and m.get("manifest_digest") == store.manifest_digest(m) and m.get("key") == path.name
        info = m if sealed else (store.read_json(path / store.PROGRESS) or {})
        n, shard = int(info.get("n", 0)), int(info.get("shard_size", 0) or 1)
        total = -(-n // shard) if n else 0
        done = total if sealed else len(store.read_shard_records(path))
        return CacheEntry(key=path.name, path=str(path), model=str(info.get("model", _part(path.name, 0))),
                          dataset=str(info.get("dataset_name", _part(path.name, 1))),
                          split=str(info.get("split", _part(path.name, 2))), n=n, size_bytes=store.dir_size(path),
                          complete=bool(sealed and m.get("format") == FORMAT_VERSION), shards_done=done,
                          shards_total=total, created=str(info.get("created", "")))

    def entries(self) -> list[CacheEntry]:
        return [self.entry(p) for p in self._dirs()]

    def __iter__(self):
        return iter(self.entries())

    def __len__(self) -> int:
        return len(self._dirs())

    def find(self, key: str) -> Path:
        """The entry named ``key`` (or the only one starting with it)."""
        exact = self.root / key
        if exact.is_dir() and exact in self._dirs():
            return exact
        hits = [p for p in self._dirs() if p.name.startswith(key)]
        if len(hits) == 1:
            return hits[0]
        what = "matches several entries" if hits else "is not in"
        raise UnknownNameError(f"feature cache key {key!r} {what} {self.root}",
                               hint="list the entries with `tips-eval cache ls`")

    def remove(self, key: str) -> int:
        """Delete one entry (refused while an extraction holds its lock); returns bytes freed."""
        path = self.find(key)
        size = store.dir_size(path)
        lock = self.root / ".locks" / f"{path.name}.lock"
        fd = None
        try:
            import fcntl

            if lock.exists():
                fd = os.open(lock, os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise CacheError(f"feature cache {path} is being written by another process; not removed") \
                        from None
        except ImportError:  # pragma: no cover
            pass
        try:
            shutil.rmtree(path)
            lock.unlink(missing_ok=True)
        except OSError as e:
            raise CacheError(f"cannot remove feature cache {path}: {e.strerror or e}") from None
        finally:
            if fd is not None:
                os.close(fd)
        return size

    def verify(self, key: str | None = None) -> dict[str, str]:
        """Hash every shard of one entry (or all): ``{key: "ok" | "incomplete" | "invalid: reason"}``."""
        paths = [self.find(key)] if key else self._dirs()
        out = {}
        for p in paths:
            chk = store.check_entry(p, p.name, "full", FORMAT_VERSION)
            out[p.name] = "ok" if chk.status == "valid" else (
                chk.status if chk.status != "invalid" else f"invalid: {chk.reason}")
            if chk.status == "valid":
                store.restamp(p, chk.manifest)
        return out

    def open(self, key: str):
        from .featureset import FeatureSet

        return FeatureSet.open(self.find(key))


def _part(key: str, i: int) -> str:
    parts = key.rsplit("-", 1)[0].split("-")
    return parts[i] if len(parts) > i else ""
