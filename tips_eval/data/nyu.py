"""NYU Depth v2: depth (metres) and surface normals, in two on-disk layouts.

(a) ``mat``: the labelled ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5,
    read lazily with h5py) plus the standard ``splits.mat`` (``trainNdxs`` 795 /
    ``testNdxs`` 654, 1-based; MATLAB v5, read with scipy). h5py sees MATLAB's
    column-major arrays transposed: ``images`` (N, 3, W, H) -> (H, W, 3),
    ``rawDepths`` / ``depths`` (N, W, H) -> (H, W). ``depth_key`` defaults to
    ``rawDepths``: the un-inpainted depth (0 = missing) that Probe3D's test set
    and BTS's ``official_splits/test`` (DINOv2's NYU test GT) are made from;
    ``depths`` is the colourisation-inpainted version.
(b) ``sync``: BTS-style per-file layout, split lists ``nyu_{train,test}.txt``
    (or BTS's ``nyudepthv2_{split}_files_with_gt.txt``) with lines
    ``<rgb relpath> <depth relpath> <focal> [<normals relpath>]``; depth is a
    16-bit PNG in millimetres (0 = missing).

Targets: ``depth`` (H, W) float32 metres, ``valid`` = depth in (0, max_depth]
(depth beyond ``max_depth`` = 10 m is set to 0, as Probe3D does), ``K`` (3x3).
``normals="file"`` reads ``normals/<key>.npy`` or ``.png`` (``(n+1)/2*255``;
mat layout: ``normals/NNNN.*`` with the 1-based index); ``normals="from_depth"``
computes them with :func:`geometry.normals_from_depth` -- an approximation of
Probe3D's NYU normals, which come from the FAIR SSL benchmark's precomputed
``all_normals.pklz``. Probe3D's combined ``nyuv2_snorm_all.pkl`` converts once
with :func:`convert_probe3d_pkl` (a restricted unpickler: numpy arrays and
plain containers only, never arbitrary objects). ``center_crop=True`` keeps
Probe3D's centred 480x480 (columns 80:560). Intrinsics: the NYU toolbox's RGB
calibration (fx 518.86, fy 519.47, cx 325.58, cy 253.74 at 640x480), scaled to
other sizes; the sync layout's focal column overrides fx = fy.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from tips_eval.errors import DataError, DatasetLayoutError

from .base import ImageDataset, load_rgb, register_dataset
from .dense_common import nearby_root
from .geometry import DepthUnitsCheck, crop_intrinsics, decode_normals, intrinsics, normals_from_depth

MAT_NAME = "nyu_depth_v2_labeled.mat"
NYU_FX, NYU_FY, NYU_CX, NYU_CY = 518.8579, 519.4696, 325.5824, 253.7362  # NYU toolbox camera_params.m, 640x480
_SYNC_LISTS = ("nyu_{split}.txt", "nyudepthv2_{split}_files_with_gt.txt")
_NORMALS = (None, "file", "from_depth")


def eigen_crop_mask(h: int = 480, w: int = 640, *, center_crop: bool = False) -> np.ndarray:
    """Eigen evaluation crop (rows 45:471, cols 41:601 of 480x640; DINOv2/DINOv3) as a bool mask.
    Other sizes scale the box; ``center_crop=True`` gives the box inside Probe3D's 480x480 centre crop."""
    full_w = h * 4 // 3 if center_crop else w
    top, bottom = round(45 * h / 480), round(471 * h / 480)
    left, right = round(41 * full_w / 640), round(601 * full_w / 640)
    if center_crop:
        off = (full_w - w) // 2
        left, right = max(left - off, 0), min(right - off, w)
    mask = np.zeros((h, w), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def nyu_intrinsics(h: int = 480, w: int = 640, focal: float | None = None) -> np.ndarray:
    """The NYU Kinect RGB intrinsics scaled to an (h, w) image; ``focal`` (px at that size) overrides fx, fy."""
    sx, sy = w / 640, h / 480
    fx, fy = (focal, focal) if focal is not None else (NYU_FX * sx, NYU_FY * sy)
    return intrinsics(fx, fy, (NYU_CX + 0.5) * sx - 0.5, (NYU_CY + 0.5) * sy - 0.5)


class NYUDataset(ImageDataset):
    """Shared target logic: cap, validity, normals, centre crop."""

    name = "nyuv2"

    def __init__(self, *, split: str, max_depth: float, normals: str | None, center_crop: bool, protocol: dict):
        self.split, self.max_depth, self.normals, self.center_crop = split, float(max_depth), normals, center_crop
        self.protocol = {"max_depth": self.max_depth, "normals": normals, "center_crop": center_crop, **protocol}
        self._units = DepthUnitsCheck("nyuv2")

    # subclasses: _raw_depth(i) -> (H, W) float32 metres, _K(i, h, w), _normals_path_stem(i) -> Path
    def _crop_box(self, h: int, w: int) -> tuple[int, int]:
        """(left, width) of Probe3D's centred square crop (80:560 at 640 wide)."""
        if not self.center_crop or w <= h:
            return 0, w
        return (w - h) // 2, h

    def _crop_image(self, img: Image.Image) -> Image.Image:
        left, width = self._crop_box(img.height, img.width)
        return img if width == img.width else img.crop((left, 0, left + width, img.height))

    def _read_normals(self, i: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        stem = self._normals_path_stem(i)
        for path in (stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".png")):
            if path.is_file():
                raw = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.asarray(Image.open(path))
                n, ok = decode_normals(raw, path=path)
                if n.shape[:2] != shape:
                    raise DataError(f"nyuv2: normals {path} are {n.shape[1]}x{n.shape[0]} (WxH) but depth of "
                                    f"{self.image_key(i)} is {shape[1]}x{shape[0]}")
                return n, ok
        raise DatasetLayoutError(f"nyuv2: normals='file' but {stem}.npy / {stem}.png is missing "
                                 f"(item {self.image_key(i)})",
                                 hint="convert Probe3D's pkl with tips_eval.data.nyu.convert_probe3d_pkl, "
                                      "or pass normals='from_depth'")

    def target(self, i: int) -> dict:
        depth = self._raw_depth(i)
        h, w = depth.shape
        finite = np.isfinite(depth) & (depth > 0)
        self._units(depth, finite, self.image_key(i))
        valid = finite & (depth <= self.max_depth)
        depth = np.where(valid, depth, 0.0).astype(np.float32)
        K = self._K(i, h, w)
        out = {"depth": depth, "valid": valid, "K": K}
        if self.normals == "file":
            out["normals"], out["normals_valid"] = self._read_normals(i, (h, w))
        elif self.normals == "from_depth":
            out["normals"], out["normals_valid"] = normals_from_depth(depth, K, valid)
        left, width = self._crop_box(h, w)
        if width != w:
            for k in ("depth", "valid", "normals", "normals_valid"):
                if k in out:
                    out[k] = np.ascontiguousarray(out[k][:, left:left + width])
            out["K"] = crop_intrinsics(K, 0, left)
        return out

    def describe(self) -> dict:
        return {**super().describe(), **self.protocol}


class NYULabeledMat(NYUDataset):
    """The 1,449-image labelled set, split by ``splits.mat``; read lazily (one h5py handle per process)."""

    def __init__(self, mat_path: Path, indices: list[int], *, depth_key: str, **kw):
        super().__init__(protocol={"layout": "mat", "depth_key": depth_key}, **kw)
        self.mat_path, self.indices, self.depth_key = mat_path, indices, depth_key
        self._h5, self._pid = None, None
        f = self._file()
        for key in ("images", depth_key):
            if key not in f:
                raise DataError(f"nyuv2: {mat_path} has no dataset {key!r}; found {sorted(f.keys())[:12]}")
        imgs, deps = f["images"], f[depth_key]
        if imgs.ndim != 4 or imgs.shape[1] != 3 or deps.shape != (imgs.shape[0],) + imgs.shape[2:]:
            raise DataError(f"nyuv2: {mat_path} 'images' {imgs.shape} / {depth_key!r} {deps.shape} are not the "
                            "labelled set's (N, 3, W, H) / (N, W, H)")
        bad = [j for j in indices if not 1 <= j <= imgs.shape[0]]
        if bad:
            raise DataError(f"nyuv2: split indices {bad[:5]} are outside 1..{imgs.shape[0]} of {mat_path}")

    def _file(self):
        import h5py

        if self._h5 is None or self._pid != os.getpid():
            try:
                self._h5, self._pid = h5py.File(self.mat_path, "r"), os.getpid()
            except OSError as e:
                raise DataError(f"nyuv2: cannot open {self.mat_path} as MATLAB v7.3/HDF5: {e}") from None
        return self._h5

    def __getstate__(self):  # h5py handles do not cross process boundaries
        return {**self.__dict__, "_h5": None, "_pid": None}

    def __len__(self) -> int:
        return len(self.indices)

    def image_key(self, i: int) -> str:
        return f"{self.mat_path.name}[{self.indices[i]:04d}]"

    def load_image(self, i: int) -> Image.Image:
        arr = np.asarray(self._file()["images"][self.indices[i] - 1]).transpose(2, 1, 0)
        return self._crop_image(Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8)), "RGB"))

    def _raw_depth(self, i: int) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(self._file()[self.depth_key][self.indices[i] - 1], np.float32).T)

    def _K(self, i: int, h: int, w: int) -> np.ndarray:
        return nyu_intrinsics(h, w)

    def _normals_path_stem(self, i: int) -> Path:
        return self.mat_path.parent / "normals" / f"{self.indices[i]:04d}"


class NYUSync(NYUDataset):
    """Per-file RGB + 16-bit millimetre PNG depth listed in a split file."""

    def __init__(self, root: Path, rows: list[tuple[str, str, float | None, str | None]], split_file: Path, **kw):
        super().__init__(protocol={"layout": "sync", "split_list": split_file.name}, **kw)
        self.root, self.rows = root, rows
        rgb, dep = rows[0][:2]
        for rel in (rgb, dep):
            if not (root / rel).is_file():
                raise DatasetLayoutError(f"nyuv2: {root / rel} listed in {split_file} is missing")

    def __len__(self) -> int:
        return len(self.rows)

    def image_key(self, i: int) -> str:
        return self.rows[i][0]

    def load_image(self, i: int) -> Image.Image:
        return self._crop_image(load_rgb(self.root / self.rows[i][0]))

    def _raw_depth(self, i: int) -> np.ndarray:
        path = self.root / self.rows[i][1]
        try:
            with Image.open(path) as img:
                if img.mode not in ("I;16", "I;16B", "I", "I;16L"):
                    raise DataError(f"nyuv2: depth {path} is a {img.mode!r} image; expected a 16-bit PNG in mm")
                return np.asarray(img, dtype=np.float32) / 1000.0
        except FileNotFoundError:
            raise DatasetLayoutError(f"nyuv2: depth file {path} is missing") from None

    def _K(self, i: int, h: int, w: int) -> np.ndarray:
        return nyu_intrinsics(h, w, self.rows[i][2])

    def _normals_path_stem(self, i: int) -> Path:
        listed = self.rows[i][3]
        rel = Path(listed) if listed else Path("normals") / self.rows[i][0]
        return (self.root / rel).with_suffix("")


def _read_splits_mat(path: Path, split: str) -> list[int]:
    key = {"train": "trainNdxs", "test": "testNdxs"}[split]
    try:
        import scipy.io

        data = scipy.io.loadmat(path)
    except NotImplementedError:  # a v7.3 splits file
        import h5py

        with h5py.File(path, "r") as f:
            data = {k: np.asarray(f[k]) for k in f.keys()}
    except (OSError, ValueError) as e:
        raise DataError(f"nyuv2: cannot read split file {path}: {e}") from None
    if key not in data:
        raise DataError(f"nyuv2: {path} has no {key!r}; expected 'trainNdxs' and 'testNdxs' (1-based)")
    return [int(x) for x in np.asarray(data[key]).ravel()]


def _open_mat(mat: Path, split: str, splits_file, depth_key: str, kw: dict) -> NYULabeledMat:
    looked = [Path(splits_file)] if splits_file else [mat.parent / "splits.mat", mat.parent / "nyuv2_splits.mat"]
    found = next((p for p in looked if p.is_file()), None)
    if found is None:
        raise DatasetLayoutError(f"nyuv2: no split file for {mat}; looked for {', '.join(map(str, looked))}",
                                 hint="the standard 795/654 splits.mat ships with the NYU toolbox")
    ds = NYULabeledMat(mat, _read_splits_mat(found, split), depth_key=depth_key, **kw)
    ds.protocol["split_list"] = found.name
    return ds


def _open_sync(root: Path, split: str, split_file, kw: dict) -> NYUSync:
    if split_file:
        path = Path(split_file)
        if not path.is_file():
            raise DatasetLayoutError(f"nyuv2: split file {path} does not exist")
    else:
        looked = [root / c.format(split=split) for c in _SYNC_LISTS]
        path = next((p for p in looked if p.is_file()), None)
        if path is None:
            raise DatasetLayoutError(f"nyuv2: no split list for {split!r}; looked for {', '.join(map(str, looked))}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        tok = line.split()
        if not tok:
            continue
        if len(tok) < 2:
            raise DataError(f"nyuv2: {path} line {n} has {len(tok)} field(s); expected '<rgb> <depth> [focal]'")
        try:
            focal = float(tok[2]) if len(tok) > 2 else None
        except ValueError:
            raise DataError(f"nyuv2: {path} line {n}: focal {tok[2]!r} is not a number") from None
        rows.append((tok[0].lstrip("/"), tok[1].lstrip("/"), focal, tok[3].lstrip("/") if len(tok) > 3 else None))
    if not rows:
        raise DataError(f"nyuv2: split list {path} is empty")
    return NYUSync(root, rows, path, **kw)


@register_dataset("nyuv2")
def nyuv2(root: str | os.PathLike, split: str = "test", *, layout: str = "auto", depth_key: str = "rawDepths",
          max_depth: float = 10.0, normals: str | None = None, center_crop: bool = False,
          splits_file: str | os.PathLike | None = None, split_file: str | os.PathLike | None = None
          ) -> NYUDataset:
    """Open NYUv2 ``train`` / ``test`` from the labelled .mat (+ splits.mat) or a sync split list."""
    if split not in ("train", "test"):
        raise DataError(f"nyuv2: unknown split {split!r}; expected 'train' or 'test'")
    if layout not in ("auto", "mat", "sync"):
        raise DataError(f"nyuv2: layout={layout!r}; expected 'auto', 'mat' or 'sync'")
    if normals not in _NORMALS:
        raise DataError(f"nyuv2: normals={normals!r}; expected None, 'file' or 'from_depth'")
    if depth_key not in ("rawDepths", "depths"):
        raise DataError(f"nyuv2: depth_key={depth_key!r}; expected 'rawDepths' or 'depths'")
    kw = dict(split=split, max_depth=max_depth, normals=normals, center_crop=center_crop)
    root = Path(root).expanduser()
    if root.is_file() and root.suffix == ".mat" and layout in ("auto", "mat"):
        return _open_mat(root, split, splits_file, depth_key, kw)
    sync_markers = [c.format(split=split) for c in _SYNC_LISTS]
    if layout in ("auto", "mat") and (root / MAT_NAME).is_file():
        return _open_mat(root / MAT_NAME, split, splits_file, depth_key, kw)
    if layout in ("auto", "sync") and (split_file or any((root / m).is_file() for m in sync_markers)):
        return _open_sync(root, split, split_file, kw)
    expected = f"{MAT_NAME} (+ splits.mat), or split lists {' / '.join(sync_markers)}"
    if not root.exists():
        raise DatasetLayoutError(f"nyuv2: root {root} does not exist; expected {expected}")
    wanted = ([MAT_NAME] if layout != "sync" else []) + (sync_markers if layout != "mat" else [])
    for marker in wanted:
        near = nearby_root(root, [marker])
        if near is not None:
            raise DatasetLayoutError(f"nyuv2: {root} is not the dataset root (no {marker}); the root looks like "
                                     f"{near}", hint=f"pass {near}")
    raise DatasetLayoutError(f"nyuv2: {root} has no {' / '.join(wanted)}; expected {expected}")


_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),  # protocol-2 pickles spell bytes this way
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and builtin containers only; any other global is refused (never called)."""

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def convert_probe3d_pkl(pkl_path: str | os.PathLike, out_dir: str | os.PathLike) -> int:
    """Write Probe3D's NYU normals (``nyuv2_snorm_all.pkl``) as ``out_dir/normals/NNNN.npy`` (H, W, 3).

    NNNN is the 1-based index into the labelled .mat, so putting ``normals/``
    next to ``nyu_depth_v2_labeled.mat`` lets ``nyuv2(..., normals='file')``
    read them. Needs RAM for the whole pickle (about 9 GB) once. Vectors are
    stored as given: Probe3D trains and evaluates on them unchanged. Returns
    the number of files written.
    """
    pkl_path, out = Path(pkl_path), Path(out_dir) / "normals"
    try:
        with open(pkl_path, "rb") as f:
            data = _ArraysOnlyUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise DataError(f"nyuv2: {pkl_path} is not a plain arrays pickle: {e}",
                        hint="only numpy arrays, lists and dicts are accepted; nothing else is executed") from None
    if not isinstance(data, dict) or "snorms" not in data:
        raise DataError(f"nyuv2: {pkl_path} has no 'snorms'; expected Probe3D's nyuv2_snorm_all.pkl")
    snorms = np.asarray(data["snorms"])
    if snorms.ndim != 4 or snorms.shape[1] != 3:
        raise DataError(f"nyuv2: {pkl_path} 'snorms' has shape {snorms.shape}; expected (N, 3, H, W)")
    idx = sorted({int(j) for key in ("train_indices", "test_indices") for j in np.ravel(data.get(key, []))})
    idx = idx or list(range(len(snorms)))
    out.mkdir(parents=True, exist_ok=True)
    for j in idx:
        np.save(out / f"{j + 1:04d}.npy", np.ascontiguousarray(snorms[j].transpose(1, 2, 0), dtype=np.float32))
    (out / "source.json").write_text(json.dumps({"from": str(pkl_path), "files": len(idx), "index_base": 1,
                                                 "convention": "as stored by Probe3D (FAIR SSL benchmark normals)"}))
    return len(idx)
