"""Render many scenes into a Hugging Face ``datasets`` DatasetDict on disk, once.

``generate_dataset(out_dir, n_scenes, image_size, seed)`` writes
``out_dir/synthetic-<size>px-n<N>-s<seed>-<hash>/`` (a ``save_to_disk``
DatasetDict with train/val/test plus ``manifest.json``). The folder is built
under a temporary name and renamed into place only when complete, so an
interrupted run is never taken as done; a second call with the same
parameters finds the manifest and returns at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from tips_eval.errors import DataError

from . import views
from .scene import COLORS, SEMANTIC_CLASSES, SHAPES

MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
SPLIT_RULE = "scene_id % 5: 0, 1, 2 -> train; 3 -> val; 4 -> test (60/20/20, stable as n_scenes grows)"
CONVENTIONS = {
    "camera": "OpenCV: x right, y down, z forward; integer pixel coordinates are pixel centres",
    "depth": "camera-frame z in metres (float32); 0 and valid=0 where the ray sees sky",
    "normals": "camera-frame unit vectors (float16) oriented towards the camera; 0 on sky",
    "semantic": "uint8 ids into semantic_classes; every pixel has a class (0 = sky background)",
    "instance": "uint8: 0 = sky or floor, k + 1 = object k of the scene JSON",
    "label": "shape of the largest object by pixel area in that view",
    "pose_view2": "4x4 float32 T_21: camera-1 coordinates -> camera-2 coordinates",
    "cam_to_world": "4x4 float32 camera-to-world pose (world z up, floor z = 0)",
    "K": "3x3 float32 intrinsics shared by both views",
}


def split_of(scene_id: int) -> str:
    """Split of a scene, by :data:`SPLIT_RULE`."""
    r = scene_id % 5
    return "train" if r < 3 else ("val" if r == 3 else "test")


def scene_seed(seed: int, scene_id: int) -> int:
    """The ``render_scene`` seed of one scene of a dataset (independent streams per scene)."""
    return int(np.random.SeedSequence([seed, scene_id]).generate_state(1)[0])


def _features(height: int, width: int):
    from datasets import Array2D, Array3D, ClassLabel, Features, Image, Value

    per_view = {
        "image": Image(),
        "depth": Array2D((height, width), "float32"),
        "valid": Array2D((height, width), "uint8"),
        "normals": Array3D((height, width, 3), "float16"),
        "semantic": Array2D((height, width), "uint8"),
        "instance": Array2D((height, width), "uint8"),
        "label": ClassLabel(names=list(SHAPES)),
        "label_name": Value("string"),
        "caption": Value("string"),
        "cam_to_world": Array2D((4, 4), "float32"),
    }
    cols = {"scene_id": Value("int32"), "scene_seed": Value("int64"), "K": Array2D((3, 3), "float32"),
            "pose_view2": Array2D((4, 4), "float32"), "scene": Value("string")}
    for name, feat in per_view.items():
        cols[name] = feat
        cols[f"{name}_view2"] = feat
    return Features(cols)


def _rows(scene_ids: list[int], seed: int, height: int, width: int):
    """Generator of dataset rows (top-level so ``datasets`` can pickle it for num_proc > 1)."""
    for sid in scene_ids:
        s = views.render_scene(scene_seed(seed, sid), (height, width))
        row = {"scene_id": sid, "scene_seed": s["seed"], "K": s["K"].astype(np.float32),
               "pose_view2": s["pose_view2"].astype(np.float32), "scene": views.scene_to_json(s)}
        for v, suffix in zip(s["views"], ("", "_view2")):
            row.update({f"image{suffix}": v["rgb"], f"depth{suffix}": v["depth"],
                        f"valid{suffix}": v["valid"].astype(np.uint8),
                        f"normals{suffix}": v["normals"].astype(np.float16),
                        f"semantic{suffix}": v["semantic"], f"instance{suffix}": v["instance"],
                        f"label{suffix}": v["label"], f"label_name{suffix}": v["label_name"],
                        f"caption{suffix}": v["caption"],
                        f"cam_to_world{suffix}": v["cam_to_world"].astype(np.float32)})
        yield row


def dataset_params(n_scenes: int, image_size: int, seed: int) -> dict:
    """What identifies a generated dataset (the manifest's ``params``)."""
    return {"generator_version": views.GENERATOR_VERSION, "n_scenes": int(n_scenes),
            "image_size": int(image_size), "seed": int(seed)}


def dataset_dir(out_dir: str | os.PathLike, params: dict) -> Path:
    """Folder of a dataset: its parameters in the name plus a hash of all of them."""
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return Path(out_dir) / f"synthetic-{params['image_size']}px-n{params['n_scenes']}-s{params['seed']}-{key}"


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The manifest of a complete dataset folder, or None when absent or unreadable."""
    try:
        with open(Path(path) / MANIFEST) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if not (Path(path) / "dataset_dict.json").is_file() or not isinstance(manifest, dict):
        return None
    return manifest


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(final: Path) -> None:
    """Delete temp folders of this dataset left by killed runs (their pid is gone)."""
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def generate_dataset(out_dir: str | os.PathLike, n_scenes: int, image_size: int = 64, seed: int = 0,
                     num_proc: int = 1) -> Path:
    """Render ``n_scenes`` two-view scenes into a DatasetDict (train/val/test); returns its folder.

    Idempotent: the same (n_scenes, image_size, seed, generator version) reuses
    the folder; anything else gets its own folder. ``num_proc`` renders shards
    in parallel processes (the rows are identical for any ``num_proc``).
    """
    if int(n_scenes) < 5:
        raise DataError(f"n_scenes={n_scenes}: need at least 5 scenes (train/val/test split 60/20/20 by scene)")
    if int(image_size) < 16:
        raise DataError(f"image_size={image_size}: need at least 16 pixels")
    params = dataset_params(n_scenes, image_size, seed)
    final = dataset_dir(out_dir, params)
    manifest = read_manifest(final)
    if manifest is not None and manifest.get("params") == params:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        t0 = time.perf_counter()
        sizes = _build(tmp, params, num_proc)
        manifest = {"format": "tips_eval.synthetic", "params": params, "splits": sizes, "split_rule": SPLIT_RULE,
                    "semantic_classes": list(SEMANTIC_CLASSES), "shapes": list(SHAPES), "colors": list(COLORS),
                    "conventions": CONVENTIONS, "seconds": round(time.perf_counter() - t0, 2),
                    "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
        done = read_manifest(final)
        if done is not None and done.get("params") == params:
            return final  # a concurrent run finished first; keep its copy
        if final.exists():  # an incomplete or foreign folder under our name: replace it
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if (read_manifest(final) or {}).get("params") != params:  # not a concurrent run's copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _build(tmp: Path, params: dict, num_proc: int) -> dict:
    """Generate every split into ``tmp`` (DatasetDict.save_to_disk layout); returns split sizes."""
    from datasets import Dataset, DatasetDict

    size, seed, n = params["image_size"], params["seed"], params["n_scenes"]
    features = _features(size, size)
    cache = tmp.parent / f"{tmp.name}.cache"
    splits = {}
    try:
        for split in SPLITS:
            ids = [i for i in range(n) if split_of(i) == split]
            nproc = max(1, min(int(num_proc), len(ids)))
            splits[split] = Dataset.from_generator(
                _rows, features=features, cache_dir=str(cache), num_proc=nproc if nproc > 1 else None,
                gen_kwargs={"scene_ids": ids, "seed": seed, "height": size, "width": size}, split=split)
            if splits[split]["scene_id"] != ids:
                splits[split] = splits[split].sort("scene_id").flatten_indices()
        DatasetDict(splits).save_to_disk(str(tmp))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {k: len(v) for k, v in splits.items()}
