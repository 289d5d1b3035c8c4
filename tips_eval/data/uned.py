"""UnED (Universal Embedding Dataset): 8 retrieval domains from the official info files.

Root = the UnED ``data/`` folder: ``info_files/<domain>/<split>.json`` (a JSON
list of ``{"path": <relative to images/>, "class_id": int | [int, ...]}``)
and ``images/...`` (nikosips/Universal-Image-Embeddings ``prepare_data.sh``,
``convert_to_tfrecord_from_file.py``). Domain ids and the query -> index pairs
follow ``universal_embedding/datasets.py`` (``DOMAIN_LABELS``, ``DATASET_INFO``):

- test queries search the ``index`` split for inshop, met and gldv2, and the
  test split itself for the other five (query == index, self-matches dropped);
- val queries of met search ``small_index``;
- the standard protocol merges the index sets of all 8 domains; a hit needs
  the same domain and a shared class id (a query's ``class_id`` may be a list).

RP2K file names with non-ASCII characters are also found in their
``#Uxxxx``-escaped form, as the reference converter does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from tips_eval.data.base import ImageDataset, load_rgb, register_dataset
from tips_eval.data.layout_utils import meant_root_hint, missing_files
from tips_eval.errors import DataError, DatasetLayoutError, UnknownNameError

DOMAINS = ("cars", "sop", "inshop", "inat", "met", "gldv2", "food2k", "rp2k")
SPLITS = ("train", "val", "test", "index", "small_index")
#: query split -> {domain: index split} where the index is not the query split itself
INDEX_SPLITS = {"test": {"inshop": "index", "met": "index", "gldv2": "index"}, "val": {"met": "small_index"}}
#: split sizes of the official info files (PROTOCOLS.md section 6), recorded next to what was read
OFFICIAL_SIZES = {
    "cars": {"train": 6346, "val": 1708, "test": 8131},
    "sop": {"train": 48942, "val": 10609, "test": 60502},
    "inshop": {"train": 20897, "val": 4982, "test": 14218, "index": 12612},
    "inat": {"train": 273929, "val": 51917, "test": 136093},
    "met": {"train": 397121, "val": 129, "test": 1003},
    "gldv2": {"train": 1422914, "val": 157556, "test": 1129},
    "food2k": {"train": 472349, "val": 49323, "test": 9979},
    "rp2k": {"train": 188724, "val": 17185, "test": 10931},
}
LAYOUT = "root = UnED data/ folder with info_files/<domain>/<split>.json and images/"


def index_split_for(domain: str, split: str) -> str:
    """The split that ``split`` queries of ``domain`` are searched against."""
    return INDEX_SPLITS.get(split, {}).get(domain, split)


def _escape_rp2k(rel: str) -> str:
    """RP2K's escaped file name: each non-ASCII character becomes ``#U`` + 4 hex digits."""
    return "".join(c if ord(c) < 128 else f"#U{ord(c):04x}" for c in rel)


def _read_info(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Paths and class ids (CSR: values, offsets) from one info file."""
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"UnED info file {path} is not valid JSON ({e})") from None
    if not isinstance(entries, list):
        raise DataError(f"UnED info file {path} holds a {type(entries).__name__}; expected a list of "
                        "{\"path\", \"class_id\"} entries")
    paths, values, counts = [], [], []
    for k, e in enumerate(entries):
        try:
            ids = e["class_id"]
            ids = [int(ids)] if not isinstance(ids, list) else [int(c) for c in ids]
            if not isinstance(e["path"], str):
                raise TypeError("path is not a string")
            paths.append(e["path"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"UnED info file {path}: entry {k} is {str(e)[:120]}; expected "
                            f"{{\"path\": str, \"class_id\": int or list}} ({type(err).__name__}: {err})") from None
        values.extend(ids)
        counts.append(len(ids))
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
    return paths, np.asarray(values, dtype=np.int64), offsets


class UnedDataset(ImageDataset):
    """Items of one or more UnED domains, contiguous per domain in domain-id order.

    ``domains`` (int array), ``label`` (first class id, -1 when none) and
    ``labels_of(i)`` (all class ids) describe the items; ``domain_splits``
    says which info file each domain came from. Query sets built by
    :func:`uned_query_index` also carry ``index_position`` (position of the
    same image in the index, -1 if absent) and ``in_index``.
    """

    name = "uned"

    def __init__(self, root: Path, split: str, parts: Sequence[tuple[str, str, list[str], np.ndarray, np.ndarray]]):
        self.root, self.split = Path(root), split
        self.paths: list[str] = []
        self.domain_splits: dict[str, str] = {}
        self._slices: dict[str, slice] = {}
        domains, values, offsets = [], [], [np.zeros(1, dtype=np.int64)]
        for domain, dsplit, paths, vals, offs in parts:
            start = len(self.paths)
            self.paths.extend(paths)
            self._slices[domain], self.domain_splits[domain] = slice(start, len(self.paths)), dsplit
            domains.append(np.full(len(paths), DOMAINS.index(domain), dtype=np.int64))
            offsets.append(offs[1:] + offsets[-1][-1])
            values.append(vals)
        self.domains = np.concatenate(domains) if domains else np.zeros(0, dtype=np.int64)
        self.label_values = np.concatenate(values) if values else np.zeros(0, dtype=np.int64)
        self.label_offsets = np.concatenate(offsets)
        counts = np.diff(self.label_offsets)
        self.label = np.full(len(self.paths), -1, dtype=np.int64)
        self.label[counts > 0] = self.label_values[self.label_offsets[:-1][counts > 0]]
        self.is_multilabel = bool((counts > 1).any())
        self.load_paths: dict[int, str] = {}  # item -> escaped file name actually on disk (RP2K)
        self.index_position: np.ndarray | None = None
        self.in_index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def image_key(self, i: int) -> str:
        return "images/" + self.paths[i]

    def labels_of(self, i: int) -> list[int]:
        return self.label_values[self.label_offsets[i]:self.label_offsets[i + 1]].tolist()

    def domain_slice(self, domain: str) -> slice:
        """The contiguous item range of one domain."""
        return self._slices[domain]

    @property
    def domain_names(self) -> list[str]:
        return list(self._slices)

    def load_image(self, i: int) -> Image.Image:
        rel = self.load_paths.get(i, self.paths[i])
        path = self.root / "images" / rel
        if i not in self.load_paths and not path.exists() and not rel.isascii():
            escaped = self.root / "images" / _escape_rp2k(rel)
            path = escaped if escaped.exists() else path
        return load_rgb(path)

    def target(self, i: int) -> dict:
        d = int(self.domains[i])
        return {"label": int(self.label[i]), "labels": self.labels_of(i), "domain": d, "domain_name": DOMAINS[d]}

    def describe(self) -> dict:
        sizes = {d: s.stop - s.start for d, s in self._slices.items()}
        official = {d: OFFICIAL_SIZES[d].get(self.domain_splits[d]) for d in sizes}
        return {**super().describe(), "domain_splits": dict(self.domain_splits), "domain_sizes": sizes,
                "official_sizes": official}


def _check_root(root: Path) -> None:
    if (root / "info_files").is_dir() and (root / "images").is_dir():
        return
    if not root.is_dir():
        raise DatasetLayoutError(f"UnED root {root} does not exist", hint=LAYOUT)
    if root.name in ("info_files", "images") and (root.parent / "info_files").is_dir():
        raise DatasetLayoutError(f"UnED root {root} is the {root.name}/ folder",
                                 hint=f"did you mean {root.parent}? ({LAYOUT})")
    missing = "info_files/" if not (root / "info_files").is_dir() else "images/"
    raise DatasetLayoutError(f"UnED root {root} has no {missing} folder",
                             hint=meant_root_hint(root, ["info_files", "images"], LAYOUT))


def _resolve_domains(domains: Iterable[str | int] | str | None) -> list[str]:
    if domains is None:
        return list(DOMAINS)
    if isinstance(domains, (str, int)):
        domains = [domains]
    names = []
    for d in domains:
        name = DOMAINS[d] if isinstance(d, int) and 0 <= d < len(DOMAINS) else d
        if name not in DOMAINS:
            raise UnknownNameError(f"unknown UnED domain {d!r}", hint=f"known: {', '.join(DOMAINS)}")
        names.append(name)
    return sorted(set(names), key=DOMAINS.index)


def _info_path(root: Path, domain: str, split: str) -> Path:
    return root / "info_files" / domain / f"{split}.json"


def _load_parts(root: Path, pairs: Sequence[tuple[str, str]], check_files: bool):
    """Read (domain, split) info files; with ``check_files`` every image must exist (RP2K escapes allowed)."""
    parts, escapes = [], {}
    for domain, split in pairs:
        paths, vals, offs = _read_info(_info_path(root, domain, split))
        parts.append((domain, split, paths, vals, offs))
        if not check_files:
            continue
        missing = missing_files(root / "images", paths)
        if missing and domain == "rp2k":
            escaped = {_escape_rp2k(m): m for m in missing if not m.isascii()}
            found = set(escaped) - set(missing_files(root / "images", escaped))
            escapes.update({escaped[e]: e for e in found})
            missing = [m for m in missing if m not in escapes]
        if missing:
            top = missing[0].split("/")[0]
            raise DatasetLayoutError(
                f"UnED {domain}/{split}: {len(missing)} of {len(paths)} images listed in "
                f"{_info_path(root, domain, split)} are missing, first {root / 'images' / missing[0]}",
                hint=f"extract the {domain} images under {root / 'images' / top} (see the UnED README)")
    return parts, escapes


def _build(root: Path, split: str, pairs, check_files: bool) -> UnedDataset:
    parts, escapes = _load_parts(root, pairs, check_files)
    ds = UnedDataset(root, split, parts)
    if escapes:
        ds.load_paths = {i: escapes[p] for i, p in enumerate(ds.paths) if p in escapes}
    if len(ds) == 0:
        raise DatasetLayoutError(f"UnED {split}: the info files of {', '.join(d for d, _ in pairs)} list no images")
    return ds


@register_dataset("uned")
def uned(root: str | os.PathLike, split: str = "test", *, domains: Iterable[str | int] | str | None = None,
         check_files: bool = True) -> UnedDataset:
    """One split (train/val/test/index/small_index) over the requested or all present domains.

    With ``domains=None`` every domain that has ``info_files/<domain>/<split>.json`` is read.
    ``test-index`` / ``val-index`` give the standard protocol's index for those queries: per
    domain its index split where one exists (inshop, met, gldv2), else the query split,
    merged over the domains (items shared with the queries keep the same ``image_key``).
    """
    root = Path(root).expanduser()
    if split.endswith("-index") and split[: -len("-index")] in ("train", "val", "test"):
        # the merged index of the standard protocol for these queries (see uned_query_index)
        base = split[: -len("-index")]
        _check_root(root)
        if domains is None:
            domains = [d for d in DOMAINS if _info_path(root, d, base).is_file()] or None
        return uned_query_index(root, domains, base, check_files)[1]
    if split not in SPLITS:
        raise DataError(f"UnED has splits {', '.join(SPLITS)} (and test-index/val-index: the merged protocol "
                        f"index); got {split!r}")
    _check_root(root)
    if domains is None:
        names = [d for d in DOMAINS if _info_path(root, d, split).is_file()]
        if not names:
            raise DatasetLayoutError(f"no UnED domain has info_files/<domain>/{split}.json under {root}",
                                     hint=f"domains: {', '.join(DOMAINS)}; {LAYOUT}")
    else:
        names = _resolve_domains(domains)
        for d in names:
            if not _info_path(root, d, split).is_file():
                have = [x for x in DOMAINS if _info_path(root, x, split).is_file()]
                raise DatasetLayoutError(f"UnED info file {_info_path(root, d, split)} not found",
                                         hint=f"{split} exists for: {', '.join(have) or 'no domain'}")
    return _build(root, split, [(d, split) for d in names], check_files)


def uned_query_index(root: str | os.PathLike, domains: Iterable[str | int] | str | None = None,
                     split: str = "test", check_files: bool = True) -> tuple[UnedDataset, UnedDataset]:
    """The standard protocol: ``split`` queries of each domain against one index merged over the domains.

    ``domains=None`` means all 8 (the paper's setting) and requires all of
    them. Domains whose index is the query split itself have
    ``query.index_position[i] >= 0``: the task must drop that self-match.
    """
    root = Path(root).expanduser()
    if split not in ("train", "val", "test"):
        raise DataError(f"UnED queries come from train, val or test; got {split!r}")
    _check_root(root)
    names = _resolve_domains(domains)
    pairs = [(d, split, index_split_for(d, split)) for d in names]
    absent = [str(_info_path(root, d, s)) for d, q, i in pairs for s in dict.fromkeys((q, i))
              if not _info_path(root, d, s).is_file()]
    if absent:
        raise DatasetLayoutError(f"UnED {split} protocol needs {len(absent)} missing info files, first {absent[0]}",
                                 hint="download info_files.zip, or pass domains=[...] to evaluate fewer domains "
                                      "(the merged index then spans only those)")
    query = _build(root, split, [(d, q) for d, q, _ in pairs], check_files)
    index = _build(root, f"{split}-index", [(d, i) for d, _, i in pairs], check_files)
    position = np.full(len(query), -1, dtype=np.int64)
    for d, q, i in pairs:
        qs, ix = query.domain_slice(d), index.domain_slice(d)
        if q == i:  # the same info file: item j of the query is item j of the index
            position[qs] = np.arange(ix.start, ix.stop)
            continue
        where = {p: k for k, p in enumerate(query.paths[qs])}
        for j, p in enumerate(index.paths[ix]):
            if p in where:
                position[qs.start + where[p]] = ix.start + j
    query.index_position, query.in_index = position, position >= 0
    return query, index
