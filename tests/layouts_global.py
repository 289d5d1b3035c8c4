"""Tiny copies of the global-task dataset layouts (ImageNet, UnED, COCO/Flickr Karpathy, DOCCI, HF).

Each ``make_*`` writes real on-disk layouts into a folder (a ``tmp_path``)
and returns the root to pass to the reader. Images are small and filled with
one colour per class (per image for caption sets) plus mild noise, so an
end-to-end test can check that an encoder separates them.
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

UNED_IMAGE_DIRS = {  # top folders as in the UnED README (domain -> {split: folder under images/})
    "cars": "cars/car_ims", "sop": "sop/Stanford_Online_Products", "inshop": "deepfashion/inshop/img",
    "inat": "inat/iNaturalist/train_val2018", "met": "met/MET", "gldv2": "gldv2/images",
    "food2k": "food2k/Food2k_complete", "rp2k": "rp2k/all",
}


def class_colour(k: int) -> tuple[int, int, int]:
    """A distinct RGB colour for class k (golden-ratio hues, alternating brightness)."""
    h = (k * 0.618033988749895) % 1.0
    s, v = (0.9, 0.95) if k % 2 == 0 else (0.6, 0.7)
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v))


def write_image(path: Path, colour: Sequence[int], seed: int = 0, size: tuple[int, int] = (40, 32)) -> Path:
    """A (w, h) image of one colour with +-6 noise; JPEG or PNG by the file extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour, dtype=np.int16) + rng.integers(-6, 7, (size[1], size[0], 3)), 0, 255)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.fromarray(arr.astype(np.uint8)).save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def make_imagenet(root: Path, n_classes: int = 3, per_class: int = 4, splits: Sequence[str] = ("train", "val"),
                  wnids: Sequence[str] | None = None, ext: str = ".JPEG") -> Path:
    """``root/{train,val}/<wnid>/<wnid>_<k>.JPEG``; default wnids are the first standard ones."""
    if wnids is None:
        from tips_eval.data.imagenet import standard_wnids

        wnids = standard_wnids()[:n_classes]
    root = Path(root)
    for s, split in enumerate(splits):
        for c, wnid in enumerate(wnids):
            for k in range(per_class):
                write_image(root / split / wnid / f"{wnid}_{s}{k:03d}{ext}", class_colour(c), seed=100 * c + 10 * s + k)
    return root


_SPLIT_SEED = {"train": 0, "val": 1, "test": 2, "index": 3, "small_index": 4}


def _uned_entry(root: Path, domain: str, split: str, d: int, c: int, k: int, class_id) -> dict:
    folder = UNED_IMAGE_DIRS[domain] + (f"/{'test' if split == 'test' else 'train'}" if domain == "rp2k" else "")
    rel = f"{folder}/{split}_c{c}/{k:03d}.jpg"
    write_image(root / "images" / rel, class_colour(10 * d + c), seed=1000 * d + 100 * c + 10 * _SPLIT_SEED[split] + k)
    return {"path": rel, "class_id": class_id}


def make_uned(root: Path, domains: Sequence[str] | None = None, n_classes: int = 2, per_class: int = 2,
              splits: Sequence[str] = ("train", "val", "test")) -> Path:
    """A UnED ``data/`` folder: ``info_files/<domain>/<split>.json`` + ``images/``.

    inshop, met and gldv2 get an ``index`` split (``per_class`` images of each
    class plus one extra class) and their test queries are separate images;
    met also gets ``small_index``. gldv2's first test query has a list of
    class ids ``[0, 99]`` (multi-label, as some official queries do).
    """
    from tips_eval.data.uned import DOMAINS

    root = Path(root)
    for domain in domains or DOMAINS:
        d = DOMAINS.index(domain)
        info: dict[str, list] = {}
        for split in splits:
            info[split] = [_uned_entry(root, domain, split, d, c, k, c)
                           for c in range(n_classes) for k in range(per_class)]
        if domain in ("inshop", "met", "gldv2"):
            info["index"] = [_uned_entry(root, domain, "index", d, c, k, c)
                             for c in range(n_classes + 1) for k in range(per_class)]
        if domain == "met":
            info["small_index"] = info["index"][: 2 * per_class]
        if domain == "gldv2" and "test" in info:
            info["test"][0]["class_id"] = [0, 99]
        for split, entries in info.items():
            path = root / "info_files" / domain / f"{split}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(entries))
    return root


def _karpathy(root: Path, json_name: str, counts: dict[str, int], folder_of, caps: int, with_filepath: bool,
              colour_offset: int) -> Path:
    images, sent_id, k = [], 0, 0
    for split, n in counts.items():
        for _ in range(n):
            folder, filename = folder_of(split, k)
            write_image(root / folder / filename, class_colour(colour_offset + k), seed=k)
            sentences = [{"raw": f"Image {k} caption {j}: a picture of colour {class_colour(colour_offset + k)}. ",
                          "tokens": ["image", str(k)], "imgid": k, "sentid": sent_id + j} for j in range(caps + k % 2)]
            entry = {"filename": filename, "imgid": k, "split": split, "sentences": sentences,
                     "sentids": [s["sentid"] for s in sentences]}
            if with_filepath:
                entry.update(filepath=folder, cocoid=500000 + k)
            images.append(entry)
            sent_id += len(sentences)
            k += 1
    (root / json_name).write_text(json.dumps({"images": images, "dataset": json_name.split("_")[1][:-5]}))
    return root


def make_coco_karpathy(root: Path, n_test: int = 3, n_val: int = 2, n_train: int = 2, n_restval: int = 2,
                       captions_per_image: int = 5) -> Path:
    """``root/dataset_coco.json`` + ``train2014/``/``val2014/``; odd images get one extra caption."""
    def folder_of(split, k):
        year_dir = "train2014" if split == "train" else "val2014"
        return year_dir, f"COCO_{year_dir}_{500000 + k:012d}.jpg"

    counts = {"test": n_test, "val": n_val, "train": n_train, "restval": n_restval}
    return _karpathy(Path(root), "dataset_coco.json", counts, folder_of, captions_per_image, True, 0)


def make_flickr_karpathy(root: Path, n_test: int = 3, n_val: int = 1, n_train: int = 2,
                         captions_per_image: int = 5, image_dir: str = "flickr30k-images") -> Path:
    """``root/dataset_flickr30k.json`` (no filepath field) + ``root/flickr30k-images/``."""
    counts = {"test": n_test, "val": n_val, "train": n_train}
    return _karpathy(Path(root), "dataset_flickr30k.json", counts,
                     lambda split, k: (image_dir, f"{1000000 + k}.jpg"), captions_per_image, False, 40)


def make_docci(root: Path, n_test: int = 3, n_train: int = 2, n_qual_dev: int = 1, image_file: bool = True) -> Path:
    """``root/docci_descriptions.jsonlines`` + ``root/images/<example_id>.jpg``, with long descriptions."""
    root = Path(root)
    lines = []
    for split, n in (("train", n_train), ("test", n_test), ("qual_dev", n_qual_dev)):
        for k in range(n):
            example_id = f"{split}_{k:05d}"
            colour = class_colour(80 + len(lines))
            write_image(root / "images" / f"{example_id}.jpg", colour, seed=len(lines))
            text = (f"A wide photograph of a flat surface painted in colour {colour}. " +
                    " ".join(f"Detail {j}: the paint is even and there are no objects in view." for j in range(12)))
            rec = {"example_id": example_id, "split": split, "description": text}
            if image_file:
                rec["image_file"] = f"{example_id}.jpg"
            lines.append(json.dumps(rec))
    (root / "docci_descriptions.jsonlines").write_text("\n".join(lines) + "\n")
    return root


def make_hf_imagefolder(path: Path, n_classes: int = 3, per_class: int = 2, splits: Sequence[str] = ("train", "test"),
                        captions: bool = False, as_dict: bool = True) -> Path:
    """A ``save_to_disk`` dataset with ``image`` (Image) and ``label`` (ClassLabel) [+ ``caption``] columns."""
    import datasets

    parts = {}
    for s, split in enumerate(splits):
        images, labels, caps = [], [], []
        for c in range(n_classes):
            for k in range(per_class):
                rng = np.random.default_rng(100 * c + 10 * s + k)
                arr = np.clip(np.array(class_colour(c)) + rng.integers(-6, 7, (24, 28, 3)), 0, 255).astype(np.uint8)
                images.append(Image.fromarray(arr))
                labels.append(c)
                caps.append([f"class {c} image {k}", f"colour {class_colour(c)}"])
        data = {"image": images, "label": labels}
        features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"class_{c}" for c in range(n_classes)])}
        if captions:
            data["caption"] = caps
            features["caption"] = datasets.Sequence(datasets.Value("string"))
        parts[split] = datasets.Dataset.from_dict(data, features=datasets.Features(features))
    path = Path(path)
    if as_dict:
        datasets.DatasetDict(parts).save_to_disk(str(path))
    else:
        parts[splits[0]].save_to_disk(str(path))
    return path
