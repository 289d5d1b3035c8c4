"""Result records: one JSON file per (model, task, dataset, protocol), written atomically.

A record carries the metrics, every protocol parameter, the encoder
fingerprint, package versions, git revision, seed, device and wall time, so a
number in a table can be traced to exactly how it was computed. A rerun finds
finished records by key and skips them; a file edited by hand into invalid
JSON is reported and the other records still load.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import platform
import re
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from .faults import fault_point

log = logging.getLogger("tips_eval.records")
SCHEMA = 1


def safe_name(model: str) -> str:
    """A folder name for a model (zoo name, or a checkpoint path -> stem + short hash)."""
    if re.fullmatch(r"[A-Za-z0-9._-]+", model):
        return model
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).stem)[:60] or "model"
    return f"{stem}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


def protocol_digest(task: str, params: dict, data: dict) -> str:
    blob = json.dumps({"task": task, "params": params, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def atomic_write_json(path: Path, obj: dict) -> None:
    """Write JSON via a temp file in the same folder + fsync + os.replace (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=False, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        fault_point("record_write")  # reliability harness: a kill between the temp file and the rename
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, os.PathLike)):
        return str(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


_ENV_CACHE: dict | None = None


def environment() -> dict:
    """Package versions, git revision, host and device (computed once per process)."""
    global _ENV_CACHE
    if _ENV_CACHE is None:
        from importlib import metadata

        versions = {}
        for pkg in ("tips-eval", "torch", "timm", "open_clip_torch", "numpy", "scikit-learn", "pytorch-lightning",
                    "datasets", "sentencepiece"):
            try:
                versions[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                pass
        _ENV_CACHE = {"versions": versions, "git_revision": git_revision(), "python": platform.python_version(),
                      "host": socket.gethostname(), "platform": platform.platform()}
    return dict(_ENV_CACHE)


def git_revision() -> str | None:
    here = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class ResultStore:
    """Records under ``root/<model>/<entry>__<protocol digest>.json``."""

    root: Path
    invalid: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.root = Path(self.root)

    def path_for(self, model: str, entry_id: str, digest: str) -> Path:
        return self.root / safe_name(model) / f"{entry_id}__{digest}.json"

    def get(self, model: str, entry_id: str, digest: str) -> dict | None:
        p = self.path_for(model, entry_id, digest)
        if not p.is_file():
            return None
        rec = self._read(p)
        return rec if rec and rec.get("status") in ("done", "skipped") else None

    def put(self, record: dict) -> Path:
        record.setdefault("schema", SCHEMA)
        p = self.path_for(record["model"], record["suite_entry"], record["protocol"]["digest"])
        atomic_write_json(p, record)
        return p

    def _read(self, p: Path) -> dict | None:
        try:
            rec = json.loads(p.read_text())
            if not isinstance(rec, dict) or "metrics" not in rec or "model" not in rec:
                raise ValueError("not a tips-eval record")
            return rec
        except (OSError, ValueError) as e:
            msg = f"{p}: invalid record ({type(e).__name__}: {str(e).splitlines()[0][:80]}); ignored"
            if msg not in self.invalid:
                self.invalid.append(msg)
                log.warning(msg)
            return None

    def load_all(self) -> list[dict]:
        """Every valid record (invalid files are listed in ``self.invalid``)."""
        out = []
        if not self.root.exists():
            return out
        for p in sorted(self.root.rglob("*.json")):
            rec = self._read(p)
            if rec is not None:
                out.append(rec)
        return out
