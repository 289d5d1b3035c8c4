"""The on-disk layout of one feature-cache entry, ``<cache_dir>/<key>/``.

- ``<array>.npy``: one preallocated ``.npy`` per array (``global_tokens``,
  ``patch_tokens``, ``layer07_cls``, ``layer07_patch``, ``value_tokens``),
  rows in dataset order, written through memory maps.
- ``progress.json``: the layout (key, n, shard size, array shapes/dtypes),
  written once when the arrays are created.
- ``shards/<s>.json``: one record per finished shard (its checksums and bad
  items), written atomically only after the shard's bytes were fsync'ed. One
  file per shard, so any number of processes can finish shards concurrently.
- ``manifest.json``: written atomically once every shard is recorded; only then
  is the entry valid. It carries its own digest, so an edited manifest is caught.

Every JSON file is written to a temp file and ``os.replace``'d into place.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tips_eval.errors import CacheError

MANIFEST, PROGRESS, SHARDS = "manifest.json", "progress.json", "shards"

try:  # xxhash ships with HF datasets; sha256 is the fallback
    import xxhash

    HASH_NAME = "xxh3_128"

    def _hasher():
        return xxhash.xxh3_128()
except ImportError:  # pragma: no cover
    HASH_NAME = "sha256"

    def _hasher():
        return hashlib.sha256()


def checksum(rows: np.ndarray, algo: str = HASH_NAME) -> str:
    """Digest of an array slice's raw bytes (rows of one shard)."""
    h = _hasher() if algo == HASH_NAME else hashlib.new(algo)
    h.update(memoryview(np.ascontiguousarray(rows)).cast("B"))
    return h.hexdigest()


def cache_write_error(root: str | os.PathLike, e: OSError) -> CacheError:
    """A one-line CacheError naming the cache path (disk full gets its own hint)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return CacheError(f"disk full while writing feature cache {root} ({e.strerror or e})",
                          hint="free space there, or point cache_dir / $TIPS_EVAL_HOME at a bigger disk; "
                               "finished shards are kept and a rerun resumes")
    return CacheError(f"cannot write feature cache {root}: {e.strerror or e}",
                      hint="check that the cache directory is writable (cache_dir / $TIPS_EVAL_HOME)")


def atomic_write_json(path: Path, obj: dict, root: Path | None = None) -> None:
    """Write JSON to a temp file, fsync, then os.replace (readers see old or new, never half)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise cache_write_error(root or path.parent, e) from None


def read_json(path: Path) -> dict | None:
    try:
        with open(path) as f:
            obj = json.load(f)
        return obj if isinstance(obj, dict) else None
    except (OSError, ValueError):
        return None


@dataclass
class Layout:
    """Shapes and sharding of one entry (what ``progress.json`` holds)."""

    key: str
    n: int
    shard_size: int
    arrays: dict[str, dict]  # name -> {"shape": [n, ...], "dtype": "float16"}
    global_names: list[str]
    layers: list[int] = field(default_factory=list)
    format: int = 1

    @property
    def n_shards(self) -> int:
        return -(-self.n // self.shard_size)

    def shard_range(self, s: int) -> tuple[int, int]:
        return s * self.shard_size, min((s + 1) * self.shard_size, self.n)

    def nbytes(self) -> int:
        return sum(int(np.prod(a["shape"])) * np.dtype(a["dtype"]).itemsize for a in self.arrays.values())

    def to_dict(self) -> dict:
        return {"key": self.key, "n": self.n, "shard_size": self.shard_size, "arrays": self.arrays,
                "global_names": self.global_names, "layers": self.layers, "format": self.format}

    @classmethod
    def from_dict(cls, d: dict) -> "Layout":
        return cls(key=d["key"], n=int(d["n"]), shard_size=int(d["shard_size"]), arrays=d["arrays"],
                   global_names=list(d["global_names"]), layers=list(d.get("layers", [])),
                   format=int(d.get("format", -1)))


def create_arrays(root: Path, layout: Layout) -> None:
    """Preallocate every array file with real disk blocks, so a full disk fails here, not mid-run."""
    need = layout.nbytes()
    try:
        root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(root).free
        if need > free:
            raise OSError(errno.ENOSPC, f"needs {need / 2**30:.2f} GiB, {free / 2**30:.2f} GiB free")
        for name, a in layout.arrays.items():
            path = root / f"{name}.npy"
            mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(a["dtype"]), shape=tuple(a["shape"]))
            del mm
            fd = os.open(path, os.O_RDWR)
            try:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
            finally:
                os.close(fd)
    except OSError as e:
        raise cache_write_error(root, e) from None
    atomic_write_json(root / PROGRESS, layout.to_dict(), root)


def open_arrays(root: Path, layout: Layout, mode: str = "r") -> dict[str, np.memmap]:
    """Memory-map every array; a missing file or a header that disagrees with the layout is a CacheError."""
    out = {}
    for name, a in layout.arrays.items():
        path = root / f"{name}.npy"
        try:
            mm = np.load(path, mmap_mode=mode, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CacheError(f"feature cache array {path} is unreadable: {str(e).splitlines()[0]}") from None
        if list(mm.shape) != list(a["shape"]) or str(mm.dtype) != a["dtype"]:
            raise CacheError(f"feature cache array {path} is {mm.dtype}{list(mm.shape)}; "
                             f"expected {a['dtype']}{list(a['shape'])}")
        out[name] = mm
    return out


def shard_checksums(arrays: dict[str, np.ndarray], start: int, stop: int) -> dict[str, str]:
    return {name: checksum(arr[start:stop]) for name, arr in arrays.items()}


def shard_record_path(root: Path, s: int) -> Path:
    return root / SHARDS / f"{s:06d}.json"


def write_shard_record(root: Path, s: int, record: dict) -> None:
    try:
        (root / SHARDS).mkdir(exist_ok=True)
    except OSError as e:
        raise cache_write_error(root, e) from None
    atomic_write_json(shard_record_path(root, s), record, root)


def read_shard_records(root: Path) -> dict[int, dict]:
    out = {}
    folder = root / SHARDS
    if folder.is_dir():
        for p in folder.glob("[0-9]*.json"):
            rec = read_json(p)
            if rec is not None and rec.get("shard") == int(p.stem):
                out[int(p.stem)] = rec
    return out


def remove_shard_record(root: Path, s: int) -> None:
    shard_record_path(root, s).unlink(missing_ok=True)


# ------------------------------------------------------------------ manifest
def manifest_digest(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def file_stats(root: Path, names) -> dict[str, dict]:
    out = {}
    for name in names:
        st = os.stat(root / f"{name}.npy")
        out[name] = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


def write_manifest(root: Path, manifest: dict) -> None:
    manifest = dict(manifest)
    manifest["files"] = file_stats(root, manifest["arrays"])
    manifest["manifest_digest"] = manifest_digest(manifest)
    atomic_write_json(root / MANIFEST, manifest, root)


@dataclass
class Check:
    """Outcome of checking an entry: ``valid``, ``absent``, ``incomplete`` or ``invalid``.

    For an ``invalid`` entry whose manifest is intact but some shards' bytes
    differ, ``bad_shards`` lists them (the rest can be kept); otherwise None.
    """

    status: str
    reason: str = ""
    manifest: dict | None = None
    bad_shards: list[int] | None = None


def check_entry(root: Path, key: str | None = None, verify: str = "auto", format_version: int = 1) -> Check:
    """Validate ``root``: manifest digest, key, format, array headers, then checksums.

    ``verify="auto"`` hashes an array's bytes only when its size or mtime differ
    from the manifest (any write since it was sealed); ``"full"`` always hashes.
    """
    if verify not in ("auto", "full"):
        raise ValueError(f"verify={verify!r}; expected 'auto' or 'full'")
    if not root.is_dir():
        return Check("absent")
    if not (root / MANIFEST).exists():
        return Check("incomplete", "no manifest.json (extraction not finished)")
    m = read_json(root / MANIFEST)
    if m is None:
        return Check("invalid", "manifest.json is not readable JSON")
    if m.get("manifest_digest") != manifest_digest(m):
        return Check("invalid", "manifest.json was modified (its digest does not match)")
    if m.get("format") != format_version:
        return Check("invalid", f"format version {m.get('format')} != {format_version}")
    if key is not None and m.get("key") != key:
        return Check("invalid", f"manifest key {m.get('key')!r} != {key!r}")
    try:
        layout = Layout.from_dict(m)
        arrays = open_arrays(root, layout, "r")
    except (CacheError, KeyError, TypeError, ValueError) as e:
        return Check("invalid", str(e))
    algo = m.get("hash", HASH_NAME)
    sums = m.get("checksums", {})
    stats = m.get("files", {})
    bad: set[int] = set()
    for name, arr in arrays.items():
        try:
            st = os.stat(root / f"{name}.npy")
        except OSError as e:
            return Check("invalid", f"{name}.npy: {e.strerror}")
        rec = stats.get(name, {})
        if verify == "auto" and rec.get("bytes") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
            continue
        per_shard = sums.get(name, [])
        if len(per_shard) != layout.n_shards:
            return Check("invalid", f"manifest lists {len(per_shard)} checksums for {name}, "
                                    f"expected {layout.n_shards}", m)
        for s in range(layout.n_shards):
            a, b = layout.shard_range(s)
            if checksum(arr[a:b], algo) != per_shard[s]:
                bad.add(s)
    if bad:
        return Check("invalid", f"checksum mismatch in shard(s) {sorted(bad)[:8]}", m, sorted(bad))
    return Check("valid", "", m)


def restamp(root: Path, manifest: dict) -> None:
    """After a full verification passed, record the files' current size/mtime (best effort)."""
    try:
        write_manifest(root, {k: v for k, v in manifest.items() if k not in ("files", "manifest_digest")})
    except CacheError:
        pass  # read-only cache: it stays valid, it just gets re-verified next time


def demote(root: Path, manifest: dict, bad_shards: list[int]) -> None:
    """Turn a sealed entry with some bad shards back into a resumable one keeping the good shards."""
    layout = Layout.from_dict(manifest)
    atomic_write_json(root / PROGRESS, layout.to_dict(), root)
    bad_set = set(bad_shards)
    bad_items = set(manifest.get("bad_indices", []))
    for s in range(layout.n_shards):
        if s in bad_set:
            remove_shard_record(root, s)
            continue
        a, b = layout.shard_range(s)
        write_shard_record(root, s, {
            "shard": s, "start": a, "stop": b, "hash": manifest.get("hash", HASH_NAME),
            "checksums": {name: manifest["checksums"][name][s] for name in layout.arrays},
            "bad": sorted(i for i in bad_items if a <= i < b)})
    (root / MANIFEST).unlink(missing_ok=True)


def dir_size(root: Path) -> int:
    total = 0
    for p in root.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_blocks * 512 if hasattr(p.stat(), "st_blocks") else p.stat().st_size
        except OSError:
            pass
    return total
