"""Suites as data: each entry names its task, dataset, splits, protocol parameters and
the table columns it fills. Nothing about an evaluation is hard-coded in the runner.

Built-in suites: ``paper`` (TIPS Tables 2-3: 13 evaluations filling the 16 table
cells -- image-text retrieval gives both directions in one record), ``paper-v2``
(+ TIPSv2's zero-shot segmentation on 4 datasets), ``demo`` (the embedded
synthetic benchmark). A user suite is a YAML file with the same fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError, UnknownNameError


@dataclass(frozen=True)
class Column:
    """One table cell an entry fills: our metric key and the paper's row keys."""

    label: str  # column header, e.g. "VOC"
    metric: str  # key in the record's metrics
    higher_is_better: bool = True
    paper_dataset: str = ""  # dataset name as in ../shared/paper CSVs (prefix match)
    paper_task: str = ""  # task as in the CSVs
    scale: float = 1.0  # multiply our metric to the paper's unit


@dataclass(frozen=True)
class SuiteEntry:
    id: str
    task: str
    dataset: str  # display name
    reader: str  # registered dataset reader
    root: str  # relative to --data-root (or absolute)
    splits: dict[str, Any]  # task role -> split name, or {"split": name, **per-role reader options}
    params: dict[str, Any] = field(default_factory=dict)  # protocol parameters (task config)
    reader_options: dict[str, Any] = field(default_factory=dict)
    table: str = "image-only"  # which table: image-only | image-text | zeroshot-seg | demo
    columns: tuple[Column, ...] = ()

    @classmethod
    def from_dict(cls, d: dict) -> "SuiteEntry":
        d = dict(d)
        missing = [k for k in ("id", "task", "dataset", "reader", "root", "splits") if k not in d]
        if missing:
            raise DataError(f"suite entry {d.get('id', '?')!r} is missing {', '.join(missing)}")
        cols = tuple(Column(**c) for c in d.pop("columns", ()))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(f"suite entry {d['id']!r}: unknown field(s) {', '.join(unknown)}")
        return cls(columns=cols, **d)


def _col(label, metric, paper_dataset, paper_task, higher=True, scale=1.0):
    return Column(label, metric, higher, paper_dataset, paper_task, scale)


PAPER: tuple[SuiteEntry, ...] = (
    SuiteEntry("voc_seg", "semantic_segmentation", "PASCAL VOC", "voc2012", "VOCdevkit/VOC2012",
               {"train": "train", "test": "val"}, {"head": "linear"},
               columns=(_col("VOC mIoU", "mIoU", "PASCAL VOC", "semantic segmentation"),)),
    SuiteEntry("ade20k_seg", "semantic_segmentation", "ADE20K", "ade20k", "ADEChallengeData2016",
               {"train": "train", "test": "val"}, {"head": "linear"},
               columns=(_col("ADE20K mIoU", "mIoU", "ADE20K", "semantic segmentation"),)),
    SuiteEntry("nyu_depth", "depth", "NYUv2", "nyuv2", "nyuv2", {"train": "train", "test": "test"},
               {"head": "linear_bins"},
               columns=(_col("NYUv2 depth RMSE", "rmse", "NYUv2", "monocular depth", higher=False),)),
    SuiteEntry("navi_depth", "depth", "NAVI", "navi", "navi_v1", {"train": "trainval", "test": "test"},
               {"head": "dpt"},
               columns=(_col("NAVI depth RMSE", "rmse", "NAVI", "monocular depth", higher=False),)),
    SuiteEntry("nyu_normals", "normals", "NYUv2", "nyuv2", "nyuv2", {"train": "train", "test": "test"},
               {"head": "dpt"}, reader_options={"normals": "file"},  # Probe3D's normals (convert_probe3d_pkl)
               columns=(_col("NYUv2 normals RMSE", "angular_rmse", "NYUv2", "surface normals", higher=False),)),
    SuiteEntry("navi_normals", "normals", "NAVI", "navi", "navi_v1", {"train": "trainval", "test": "test"},
               {"head": "dpt"}, reader_options={"normals": "from_depth"},  # Probe3D: normals from depth
               columns=(_col("NAVI normals RMSE", "angular_rmse", "NAVI", "surface normals", higher=False),)),
    SuiteEntry("imagenet_knn", "knn", "ImageNet-1K", "imagenet", "imagenet", {"train": "train", "test": "val"},
               {}, columns=(_col("IN kNN", "top1", "ImageNet-1K", "classification (kNN)"),)),
    SuiteEntry("imagenet_linear", "linear_probe", "ImageNet-1K", "imagenet", "imagenet",
               {"train": "train", "test": "val"}, {},
               columns=(_col("IN linear", "top1", "ImageNet-1K", "classification (linear)"),)),
    SuiteEntry("uned", "instance_retrieval", "UnED", "uned", "uned", {"query": "test", "index": "test-index"}, {},
               columns=(_col("UnED R@1", "R@1", "UnED", "fine-grained/instance retrieval (kNN)"),)),
    SuiteEntry("coco_retrieval", "image_text_retrieval", "COCO", "coco", "coco", {"test": "test"}, {},
               table="image-text",
               columns=(_col("COCO I->T", "i2t_R@1", "COCO", "image-to-text retrieval"),
                        _col("COCO T->I", "t2i_R@1", "COCO", "text-to-image retrieval"))),
    SuiteEntry("flickr_retrieval", "image_text_retrieval", "Flickr30K", "flickr30k", "flickr30k", {"test": "test"},
               {}, table="image-text",
               columns=(_col("Flickr I->T", "i2t_R@1", "Flickr30K", "image-to-text retrieval"),
                        _col("Flickr T->I", "t2i_R@1", "Flickr30K", "text-to-image retrieval"))),
    SuiteEntry("docci_retrieval", "image_text_retrieval", "DOCCI", "docci", "docci", {"test": "test"}, {},
               table="image-text",
               columns=(_col("DOCCI I->T", "i2t_R@1", "DOCCI", "image-to-text retrieval"),
                        _col("DOCCI T->I", "t2i_R@1", "DOCCI", "text-to-image retrieval"))),
    SuiteEntry("imagenet_zeroshot", "zeroshot_classification", "ImageNet-1K", "imagenet", "imagenet",
               {"test": "val"}, {}, table="image-text",
               columns=(_col("IN 0-shot", "top1", "ImageNet-1K", "zero-shot classification"),)),
)

ZEROSHOT_SEG: tuple[SuiteEntry, ...] = tuple(
    SuiteEntry(f"{key}_zsseg", "zeroshot_segmentation", name, reader, root, {"test": "val"}, params,
               reader_options=opts, table="zeroshot-seg",
               columns=(_col(f"{key.upper()} 0-shot mIoU", "mIoU", paper, "zero-shot semantic segmentation"),))
    for key, name, reader, root, opts, params, paper in (
        ("voc21", "PASCAL VOC-21", "voc2012", "VOCdevkit/VOC2012", {}, {"background": "class"}, "PASCAL VOC-21"),
        ("pc59", "Pascal Context-59", "pascal_context", "VOCdevkit/VOC2010", {"num_classes": 59}, {},
         "Pascal Context-59"),
        ("pc60", "Pascal Context-60", "pascal_context", "VOCdevkit/VOC2010", {"num_classes": 60},
         {"background": "class"}, "Pascal Context-60"),
        ("ade150", "ADE20K-150", "ade20k", "ADEChallengeData2016", {}, {}, "ADE20K-150"),
    )
)

_SUITES: dict[str, tuple[SuiteEntry, ...]] = {"paper": PAPER, "paper-v2": PAPER + ZEROSHOT_SEG}


def register_suite(name: str, entries: tuple[SuiteEntry, ...]) -> None:
    _SUITES[name] = tuple(entries)


def suite_names() -> list[str]:
    _ensure_builtin()
    return sorted(_SUITES)


def get_suite(name_or_path: str) -> tuple[SuiteEntry, ...]:
    """A built-in suite by name, or a user suite from a YAML file."""
    _ensure_builtin()
    if name_or_path in _SUITES:
        return _SUITES[name_or_path]
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return load_suite_yaml(p)
    raise UnknownNameError(f"unknown suite {name_or_path!r}",
                           hint=f"built-in: {', '.join(sorted(_SUITES))}; or pass a .yaml file")


def load_suite_yaml(path: str | Path) -> tuple[SuiteEntry, ...]:
    """``entries: [{id, task, dataset, reader, root, splits, params, columns: [...]}, ...]``;
    ``extends: paper`` starts from a built-in suite (entries with the same id replace it)."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise DataError(f"suite file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    base = {e.id: e for e in get_suite(doc["extends"])} if doc.get("extends") else {}
    for d in doc.get("entries", []):
        e = SuiteEntry.from_dict(d)
        base[e.id] = e
    only = doc.get("only")
    entries = tuple(e for e in base.values() if not only or e.id in only)
    if not entries:
        raise DataError(f"suite file {path} defines no entries")
    return entries


def _ensure_builtin() -> None:
    if "demo" not in _SUITES:
        try:
            from .synthetic.suite import DEMO  # registered by the synthetic benchmark
        except ImportError:
            return
        _SUITES["demo"] = DEMO
