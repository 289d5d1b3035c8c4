"""Pinhole-camera geometry shared by the renderer, the dataset and the tests.

Conventions (all arrays numpy):

- World frame: z up, the floor is the plane z = 0.
- Camera frame: OpenCV -- x right, y down, z forward. A pose is a 4x4
  camera-to-world matrix ``T_wc`` (columns of ``R_wc`` are the camera axes in
  world coordinates, the last column is the camera centre).
- Pixels: ``(u, v) = (column, row)``; integer coordinates are pixel *centres*
  (OpenCV), so the principal point of a W x H image is ((W-1)/2, (H-1)/2).
- Depth is the camera-frame z coordinate (not the distance along the ray),
  as in NYUv2; 0 marks pixels without a surface (``valid`` is False there).
- Normals are camera-frame unit vectors oriented towards the camera
  (``n . X < 0`` for the surface point X).
"""

from __future__ import annotations

import numpy as np


def intrinsics(fov_x_deg: float, height: int, width: int) -> np.ndarray:
    """K (3, 3) of a pinhole with square pixels and horizontal field of view ``fov_x_deg``."""
    f = (width / 2.0) / np.tan(np.radians(fov_x_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world 4x4 pose of a camera at ``eye`` looking at ``target`` (OpenCV axes)."""
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)
    pose[:3, 3] = eye
    return pose


def invert_pose(pose: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform."""
    inv = np.eye(4)
    rot = pose[:3, :3]
    inv[:3, :3] = rot.T
    inv[:3, 3] = -rot.T @ pose[:3, 3]
    return inv


def relative_pose(cam_to_world_a: np.ndarray, cam_to_world_b: np.ndarray) -> np.ndarray:
    """``T_ba`` (4x4): maps camera-a coordinates to camera-b coordinates, ``X_b = R X_a + t``."""
    return invert_pose(cam_to_world_b) @ cam_to_world_a


def transform(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 rigid transform to points (..., 3)."""
    return points @ pose[:3, :3].T + pose[:3, 3]


def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) float64 arrays (H, W) of pixel-centre coordinates."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return u, v


def pixel_rays(K: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Camera-frame ray directions (..., 3) with z = 1, so the ray parameter equals depth."""
    x = (u - K[0, 2]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    return np.stack([x, y, np.ones_like(x)], axis=-1)


def backproject(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Camera-frame points (H, W, 3) of a depth map (z-depth, metres)."""
    u, v = pixel_grid(*depth.shape)
    return pixel_rays(K, u, v) * depth[..., None].astype(np.float64)


def project(points: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (..., 2) and depth (...) of camera-frame points (..., 3)."""
    z = points[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = K[0, 0] * points[..., 0] / z + K[0, 2]
        v = K[1, 1] * points[..., 1] / z + K[1, 2]
    return np.stack([u, v], axis=-1), z


def normals_from_depth(depth: np.ndarray, K: np.ndarray, valid: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame unit normals (H, W, 3) from a depth map by central differences.

    Back-projects with K, takes the cross product of the vertical and horizontal
    neighbour differences and orients the result towards the camera. Returns
    ``(normals, ok)`` where ``ok`` marks pixels whose 4 neighbours are valid
    (border pixels are never ok).
    """
    valid = depth > 0 if valid is None else valid.astype(bool)
    pts = backproject(depth, K)
    normals = np.zeros_like(pts)
    ok = np.zeros(depth.shape, dtype=bool)
    ok[1:-1, 1:-1] = valid[1:-1, 1:-1] & valid[:-2, 1:-1] & valid[2:, 1:-1] & valid[1:-1, :-2] & valid[1:-1, 2:]
    d_right = pts[1:-1, 2:] - pts[1:-1, :-2]
    d_down = pts[2:, 1:-1] - pts[:-2, 1:-1]
    n = np.cross(d_down, d_right)  # x right, y down: down x right points towards the camera
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    n = np.divide(n, norm, out=np.zeros_like(n), where=norm > 0)
    flip = np.sum(n * pts[1:-1, 1:-1], axis=-1) > 0
    n[flip] *= -1
    normals[1:-1, 1:-1] = n
    ok &= np.linalg.norm(normals, axis=-1) > 0
    return normals, ok


def angular_error_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in degrees between unit vectors (..., 3)."""
    cos = np.clip(np.sum(a * b, axis=-1), -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def warp_pixels(depth_a: np.ndarray, K: np.ndarray, pose_ba: np.ndarray, depth_b: np.ndarray,
                rel_tol: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map every valid pixel of view a into view b with depth + K + relative pose.

    Returns ``(uv_a, uv_b, visible)``: ``uv_a`` (N, 2) integer pixel centres of
    view a with valid depth, ``uv_b`` (N, 2) their sub-pixel position in view b,
    ``visible`` (N,) True where the point lands inside view b, in front of the
    camera, and passes the depth test against ``depth_b``: its inverse depth
    matches 1/depth interpolated bilinearly from the surrounding pixel centres
    within ``rel_tol`` (exact on planes, where 1/z is affine in the pixel
    coordinates), or its depth matches the nearest pixel's within
    ``2 * rel_tol`` (silhouettes, where the 4 neighbours straddle two surfaces).
    """
    h_b, w_b = depth_b.shape
    pts_a = backproject(depth_a, K)
    keep = depth_a > 0
    v_a, u_a = np.nonzero(keep)
    uv_a = np.stack([u_a, v_a], axis=-1).astype(np.float64)
    uv_b, z_b = project(transform(pose_ba, pts_a[keep]), K)
    inside = (z_b > 1e-6) & (uv_b[:, 0] >= 0) & (uv_b[:, 0] <= w_b - 1) & (uv_b[:, 1] >= 0) & (uv_b[:, 1] <= h_b - 1)
    visible = np.zeros(len(uv_a), dtype=bool)
    idx = np.nonzero(inside)[0]
    u, v, z = uv_b[idx, 0], uv_b[idx, 1], z_b[idx]
    u0 = np.clip(np.floor(u).astype(int), 0, max(w_b - 2, 0))
    v0 = np.clip(np.floor(v).astype(int), 0, max(h_b - 2, 0))
    fu, fv = u - u0, v - v0
    u1, v1 = np.minimum(u0 + 1, w_b - 1), np.minimum(v0 + 1, h_b - 1)
    corners = np.stack([depth_b[v0, u0], depth_b[v0, u1], depth_b[v1, u0], depth_b[v1, u1]], -1).astype(np.float64)
    weights = np.stack([(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv], -1)
    usable = ((corners > 0) | (weights == 0)).all(-1)
    inv = np.divide(1.0, corners, out=np.zeros_like(corners), where=corners > 0)
    bilinear = usable & (np.abs((inv * weights).sum(-1) * z - 1) <= rel_tol)
    nearest = depth_b[np.round(v).astype(int), np.round(u).astype(int)].astype(np.float64)
    visible[idx] = bilinear | ((nearest > 0) & (np.abs(nearest - z) <= 2 * rel_tol * z))
    return uv_a, uv_b, visible
