"""Depth and surface-normal utilities shared by the NYUv2 and NAVI readers.

Conventions (OpenCV): camera frame x right, y down, z forward (into the
scene); pixel (row v, column u) has its centre at integer coordinates (u, v);
``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``. Depth is the z coordinate in
metres (not the ray length); 0 marks a missing value. Normals are unit
vectors in the camera frame oriented towards the camera (``n . X < 0`` for the
3D point X), so a wall facing the camera has normal (0, 0, -1).
"""

from __future__ import annotations

import warnings

import numpy as np

from tips_eval.errors import DataError

#: median valid depth above this (in "metres") almost surely means millimetres
SUSPICIOUS_MEDIAN_DEPTH_M = 100.0


def intrinsics(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """A 3x3 float32 pinhole matrix."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float32)


def scale_intrinsics(K: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Intrinsics of the same camera after resizing the image from ``from_hw`` to ``to_hw``
    (pixel-centre aware: ``c' = (c + 0.5) * s - 0.5``)."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    K = np.asarray(K, dtype=np.float64)
    out = np.array(K)
    out[0, 0], out[0, 2] = K[0, 0] * sx, (K[0, 2] + 0.5) * sx - 0.5
    out[1, 1], out[1, 2] = K[1, 1] * sy, (K[1, 2] + 0.5) * sy - 0.5
    return out.astype(np.float32)


def crop_intrinsics(K: np.ndarray, top: int, left: int) -> np.ndarray:
    """Intrinsics after cropping ``top`` rows and ``left`` columns off the image."""
    out = np.array(K, dtype=np.float32)
    out[0, 2] -= left
    out[1, 2] -= top
    return out


def backproject(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """3D points (H, W, 3) in the camera frame: ``X = (u - cx) z / fx``, ``Y = (v - cy) z / fy``, ``Z = z``."""
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise DataError(f"backproject: depth has shape {depth.shape}; expected (H, W)")
    h, w = depth.shape
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    u = (np.arange(w, dtype=np.float32) - cx) / fx
    v = (np.arange(h, dtype=np.float32) - cy) / fy
    return np.stack([depth * u[None, :], depth * v[:, None], depth], axis=-1)


def normals_from_depth(depth: np.ndarray, K: np.ndarray, valid: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Surface normals from a depth map by neighbour cross products (Probe3D's scheme).

    Each pixel's 3D point is joined to its left/top/right/bottom neighbours and
    the four cross products of consecutive arms are averaged -- only those whose
    two neighbours are valid, so object borders keep a normal. Returns
    ``(normals (H, W, 3) float32, valid (H, W) bool)``; invalid normals are 0.

    Differences from Probe3D's ``compute_normal``: the principal point of ``K``
    is used (Probe3D backprojects with cx = cy = 0), missing neighbours are
    dropped instead of being placed 1e6 m away, and the result is oriented
    towards the camera (Probe3D's cross-product order gives the opposite sign).
    """
    depth = np.asarray(depth, dtype=np.float32)
    if valid is None:
        valid = np.isfinite(depth) & (depth > 0)
    valid = np.asarray(valid, dtype=bool) & np.isfinite(depth) & (depth > 0)
    h, w = depth.shape
    normals = np.zeros((h, w, 3), dtype=np.float32)
    out_valid = np.zeros((h, w), dtype=bool)
    if h < 3 or w < 3:
        return normals, out_valid
    xyz = backproject(np.where(valid, depth, 0.0), K)
    c = xyz[1:-1, 1:-1]
    arms = [xyz[1:-1, :-2] - c, xyz[:-2, 1:-1] - c, xyz[1:-1, 2:] - c, xyz[2:, 1:-1] - c]  # left, top, right, bottom
    ok = [valid[1:-1, :-2], valid[:-2, 1:-1], valid[1:-1, 2:], valid[2:, 1:-1]]
    centre_ok = valid[1:-1, 1:-1]
    acc = np.zeros_like(c)
    for k in range(4):  # (top x left), (right x top), (bottom x right), (left x bottom)
        a, b = arms[(k + 1) % 4], arms[k]
        use = (centre_ok & ok[k] & ok[(k + 1) % 4])[..., None]
        acc += np.where(use, np.cross(a, b), 0.0)
    norm = np.linalg.norm(acc, axis=-1, keepdims=True)
    good = norm[..., 0] > 1e-12
    n = np.where(good[..., None], acc / np.maximum(norm, 1e-30), 0.0)
    flip = (n * c).sum(-1) > 0  # orient towards the camera
    n[flip] *= -1
    normals[1:-1, 1:-1] = n
    out_valid[1:-1, 1:-1] = good
    return normals, out_valid


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    # half-pixel centres, as PIL NEAREST / torch 'nearest-exact'
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) or (H, W, C) array to ``size = (h, w)``
    (pixel-centre sampling; never mixes values, so fit for depth, masks and normals)."""
    h, w = array.shape[:2]
    return array[_nearest_index(h, size[0])][:, _nearest_index(w, size[1])]


def resize_depth_nearest(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a depth map (no averaging across holes or edges)."""
    return resize_nearest(depth, size)


def encode_normals_png(normals: np.ndarray) -> np.ndarray:
    """(H, W, 3) unit normals -> uint8 RGB as ``(n + 1) / 2 * 255`` (invalid, all-zero -> 0)."""
    n = np.asarray(normals, dtype=np.float32)
    out = np.clip(np.round((n + 1.0) * 127.5), 0, 255).astype(np.uint8)
    out[np.linalg.norm(n, axis=-1) < 0.5] = 0
    return out


def decode_normals(raw: np.ndarray, *, path: object = "normals") -> tuple[np.ndarray, np.ndarray]:
    """Normals from a stored array: uint8 ``(n + 1) / 2 * 255`` PNG data or float vectors, (H, W, 3) or
    (3, H, W). Returns renormalised ``(normals, valid)``; all-zero / non-finite vectors are invalid."""
    raw = np.asarray(raw)
    if raw.ndim == 3 and raw.shape[0] == 3 and raw.shape[-1] != 3:
        raw = np.moveaxis(raw, 0, -1)
    if raw.ndim != 3 or raw.shape[-1] != 3:
        raise DataError(f"normals file {path} has shape {raw.shape}; expected (H, W, 3)")
    if raw.dtype == np.uint8:
        zero = (raw == 0).all(-1)
        n = raw.astype(np.float32) / 127.5 - 1.0
    else:
        n = raw.astype(np.float32)
        zero = ~np.isfinite(n).all(-1)
        n = np.where(zero[..., None], 0.0, n)
    norm = np.linalg.norm(n, axis=-1)
    valid = ~zero & (norm > 0.5)
    n = np.where(valid[..., None], n / np.maximum(norm, 1e-12)[..., None], 0.0).astype(np.float32)
    return n, valid


class DepthUnitsCheck:
    """Warns once (per dataset) when depth looks like millimetres rather than metres."""

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.warned = False

    def __call__(self, depth: np.ndarray, valid: np.ndarray, source: object) -> None:
        if self.warned:
            return
        sample = depth[::4, ::4][valid[::4, ::4]]
        if sample.size and float(np.median(sample)) > SUSPICIOUS_MEDIAN_DEPTH_M:
            self.warned = True
            warnings.warn(f"{self.dataset}: median valid depth of {source} is {float(np.median(sample)):.1f}; "
                          f"depth should be metres -- is this file in millimetres?", stacklevel=3)
