"""Vectorised numpy ray casting of the procedural scenes.

Every pixel's ray is intersected analytically with the floor square and each
object (sphere, convex polyhedra for cubes and pyramids, capped cylinder and
cone); the nearest hit gives depth, normal, semantic class and instance.
Shading is Lambertian with one directional light, ambient term and hard
shadows; rays that miss everything see a sky gradient. A 64x64 view costs a
few milliseconds.
"""

from __future__ import annotations

import numpy as np

from .geometry import pixel_grid, pixel_rays
from .scene import COLORS, FLOOR_COLORS, semantic_id

EPS = 1e-6
AMBIENT = 0.35
SKY_HORIZON = np.array([0.86, 0.90, 0.97])
SKY_ZENITH = np.array([0.33, 0.53, 0.88])


def _rot_world_to_local(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def _roots(a, b, c):
    """Both roots of ``a t^2 + 2 b t + c = 0`` (NaN when none), numerically stable also for a -> 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        q = -(b + np.where(b >= 0, 1.0, -1.0) * np.sqrt(b * b - a * c))
        r1, r2 = q / a, c / q
    return np.fmin(r1, r2), np.fmax(r1, r2)


def _pick(cands) -> tuple[np.ndarray, np.ndarray]:
    """Nearest of several (t, normal, ok) candidates; t = inf where none is ok and ahead."""
    t_best = np.full(cands[0][0].shape, np.inf)
    n_best = np.zeros(t_best.shape + (3,))
    for t, n, ok in cands:
        better = ok & (t > EPS) & (t < t_best)
        t_best = np.where(better, t, t_best)
        n_best = np.where(better[:, None], n, n_best)
    return t_best, n_best


def _sphere(o, d, r):
    c = np.array([0.0, 0.0, r])
    oc = o - c
    t1, t2 = _roots(np.sum(d * d, -1), np.sum(oc * d, -1), np.sum(oc * oc, -1) - r * r)
    return _pick([(t, (o + t[:, None] * d - c) / r, np.isfinite(t)) for t in (t1, t2)])


def _convex(o, d, normals, offsets):
    """Ray / convex polyhedron {x : normals @ x <= offsets} by slab clipping."""
    nd, no = d @ normals.T, o @ normals.T
    with np.errstate(divide="ignore", invalid="ignore"):
        tp = (offsets - no) / nd
    t_in = np.where(nd < 0, tp, -np.inf)
    t_out = np.where(nd > 0, tp, np.inf)
    enter, leave = t_in.max(1), t_out.min(1)
    miss = ((nd == 0) & (no > offsets)).any(1) | (enter > leave)
    use_enter = enter > EPS
    t = np.where(use_enter, enter, leave)
    face = np.where(use_enter, t_in.argmax(1), t_out.argmin(1))
    return _pick([(t, normals[face], ~miss)])


def _box_planes(half: float):
    n = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64)
    return n, np.array([half, half, half, half, 2 * half, 0.0])


def _pyramid_planes(half: float, height: float):
    n = np.array([[height, 0, half], [-height, 0, half], [0, height, half], [0, -height, half]], dtype=np.float64)
    scale = np.linalg.norm(n, axis=1)
    normals = np.vstack([n / scale[:, None], [[0.0, 0.0, -1.0]]])
    return normals, np.append(height * half / scale, 0.0)


def _disc(o, d, z, r, up):
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (z - o[:, 2]) / d[:, 2]
    p = o + t[:, None] * d
    ok = np.isfinite(t) & (p[:, 0] ** 2 + p[:, 1] ** 2 <= r * r)
    return t, np.broadcast_to(np.array([0.0, 0.0, 1.0 if up else -1.0]), p.shape), ok


def _cylinder(o, d, r, h):
    t1, t2 = _roots(d[:, 0] ** 2 + d[:, 1] ** 2, o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1],
                    o[:, 0] ** 2 + o[:, 1] ** 2 - r * r)
    cands = []
    for t in (t1, t2):
        p = o + t[:, None] * d
        n = np.stack([p[:, 0] / r, p[:, 1] / r, np.zeros_like(t)], -1)
        cands.append((t, n, np.isfinite(t) & (p[:, 2] >= 0) & (p[:, 2] <= h)))
    return _pick(cands + [_disc(o, d, h, r, True), _disc(o, d, 0.0, r, False)])


def _cone(o, d, r, h):
    k2 = (r / h) ** 2
    rest = h - o[:, 2]
    t1, t2 = _roots(d[:, 0] ** 2 + d[:, 1] ** 2 - k2 * d[:, 2] ** 2,
                    o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1] + k2 * rest * d[:, 2],
                    o[:, 0] ** 2 + o[:, 1] ** 2 - k2 * rest ** 2)
    cands = []
    for t in (t1, t2):
        p = o + t[:, None] * d
        n = np.stack([p[:, 0], p[:, 1], k2 * (h - p[:, 2])], -1)
        n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
        cands.append((t, n, np.isfinite(t) & (p[:, 2] >= 0) & (p[:, 2] <= h)))
    return _pick(cands + [_disc(o, d, 0.0, r, False)])


def _may_hit(obj: dict, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Rays that meet the object's bounding sphere ahead of their origin (cheap culling)."""
    half_h = obj["height"] / 2
    centre = np.asarray(obj["center"]) + [0.0, 0.0, half_h]
    radius2 = (obj["footprint"] ** 2 + half_h ** 2) * 1.0001
    oc = np.broadcast_to(origins - centre, dirs.shape)
    a, b, c = (np.einsum("ij,ij->i", x, y) for x, y in ((dirs, dirs), (dirs, oc), (oc, oc)))
    disc = b * b - a * (c - radius2)
    return (disc >= 0) & (-b + np.sqrt(np.maximum(disc, 0)) > 0)


def intersect_object(obj: dict, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray parameter t (N,) (inf on a miss) and world normal (N, 3) of the first hit with one object."""
    t_all, n_all = np.full(dirs.shape[0], np.inf), np.zeros(dirs.shape)
    cand = np.nonzero(_may_hit(obj, origins, dirs))[0]
    if cand.size == 0:
        return t_all, n_all
    origins = origins if np.ndim(origins) == 1 else origins[cand]
    t_all[cand], n_all[cand] = _intersect_local(obj, origins, dirs[cand])
    return t_all, n_all


def _intersect_local(obj: dict, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rot = _rot_world_to_local(obj["yaw"])
    o = (np.broadcast_to(origins, dirs.shape) - np.asarray(obj["center"])) @ rot.T
    d = dirs @ rot.T
    shape = obj["shape"]
    if shape == "sphere":
        t, n = _sphere(o, d, obj["radius"])
    elif shape == "cube":
        t, n = _convex(o, d, *_box_planes(obj["half"]))
    elif shape == "pyramid":
        t, n = _convex(o, d, *_pyramid_planes(obj["half"], obj["height"]))
    elif shape == "cylinder":
        t, n = _cylinder(o, d, obj["radius"], obj["height"])
    elif shape == "cone":
        t, n = _cone(o, d, obj["radius"], obj["height"])
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return t, n @ rot


def cast_rays(scene: dict, origins: np.ndarray, dirs: np.ndarray, with_floor: bool = True
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit of rays ``origins + t * dirs`` (N, 3) with the scene.

    Returns ``(t, normal, hit)``: t (N,) inf on a miss, world normal (N, 3),
    hit (N,) int: -1 sky, 0 floor, k + 1 object k.
    """
    n_rays = dirs.shape[0]
    t_best = np.full(n_rays, np.inf)
    n_best = np.zeros((n_rays, 3))
    hit = np.full(n_rays, -1, dtype=np.int64)
    if with_floor:
        half = scene["floor"]["half_size"]
        o = np.broadcast_to(origins, dirs.shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -o[:, 2] / dirs[:, 2]
        p = o + t[:, None] * dirs
        ok = np.isfinite(t) & (t > EPS) & (np.abs(p[:, 0]) <= half) & (np.abs(p[:, 1]) <= half)
        t_best = np.where(ok, t, t_best)
        n_best[ok] = (0.0, 0.0, 1.0)
        hit[ok] = 0
    for k, obj in enumerate(scene["objects"]):
        t, n = intersect_object(obj, origins, dirs)
        better = t < t_best
        t_best = np.where(better, t, t_best)
        n_best[better] = n[better]
        hit[better] = k + 1
    return t_best, n_best, hit


def _albedo(scene: dict, points: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """Per-hit base colour with the procedural texture of the floor or object."""
    albedo = np.zeros(points.shape)
    floor = scene["floor"]
    m = hit == 0
    base = np.array(FLOOR_COLORS[floor["color"]])
    if floor["texture"] == "checkered":
        cell = (np.floor(points[m, 0] / 0.5) + np.floor(points[m, 1] / 0.5)) % 2
        albedo[m] = base * (1.0 - 0.18 * cell[:, None])
    else:
        albedo[m] = base
    for k, obj in enumerate(scene["objects"]):
        m = hit == k + 1
        if not m.any():
            continue
        base = np.array(COLORS[obj["color"]])
        light = 0.45 * base + 0.55
        p = (points[m] - np.asarray(obj["center"])) @ _rot_world_to_local(obj["yaw"]).T
        if obj["texture"] == "striped":
            alt = np.floor(p[:, 2] / (obj["height"] / 5)) % 2
        elif obj["texture"] == "checkered":
            alt = np.floor(p / (obj["height"] / 3)).sum(1) % 2
        else:
            alt = np.zeros(len(p))
        albedo[m] = np.where(alt[:, None] > 0, light, base)
    return albedo


def shade(scene: dict, points: np.ndarray, normals: np.ndarray, hit: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] (N, 3): Lambert + ambient with hard shadows for hits, sky gradient otherwise."""
    light = np.asarray(scene["light"])
    rgb = np.zeros(points.shape)
    surf = hit >= 0
    p, n = points[surf], normals[surf]
    lambert = np.clip(n @ light, 0.0, None)
    lit = np.isinf(cast_rays(scene, p + 1e-4 * n, np.broadcast_to(light, p.shape).copy(), with_floor=False)[0])
    rgb[surf] = _albedo(scene, points, hit)[surf] * (AMBIENT + (1 - AMBIENT) * lambert * lit)[:, None]
    d = dirs[~surf]
    up = np.clip(d[:, 2] / np.linalg.norm(d, axis=-1), 0.0, 1.0) ** 0.6
    rgb[~surf] = SKY_HORIZON + up[:, None] * (SKY_ZENITH - SKY_HORIZON)
    return np.clip(rgb, 0.0, 1.0)


def render_view(scene: dict, cam_to_world: np.ndarray, height: int, width: int) -> dict:
    """Render one view: rgb uint8, depth float32 (0 = sky), camera-frame normals, masks.

    Ray directions have camera-frame z = 1, so the hit parameter t is the z-depth.
    """
    K = scene["K"]
    u, v = pixel_grid(height, width)
    d_cam = pixel_rays(K, u, v).reshape(-1, 3)
    rot, eye = cam_to_world[:3, :3], cam_to_world[:3, 3]
    d_world = d_cam @ rot.T
    t, n_world, hit = cast_rays(scene, eye, d_world)
    surf = hit >= 0
    t_safe = np.where(surf, t, 0.0)
    points = eye + t_safe[:, None] * d_world
    rgb = shade(scene, points, n_world, hit, d_world)
    n_cam = n_world @ rot
    n_cam[np.sum(n_cam * d_cam, -1) > 0] *= -1  # towards the camera
    n_cam[~surf] = 0.0
    semantic = np.zeros(hit.shape, dtype=np.uint8)
    semantic[hit == 0] = 1
    for k, obj in enumerate(scene["objects"]):
        semantic[hit == k + 1] = semantic_id(obj["shape"])
    shape = (height, width)
    return {
        "rgb": np.round(rgb * 255).astype(np.uint8).reshape(shape + (3,)),
        "depth": t_safe.astype(np.float32).reshape(shape),
        "valid": surf.reshape(shape),
        "normals": n_cam.astype(np.float32).reshape(shape + (3,)),
        "semantic": semantic.reshape(shape),
        "instance": np.clip(hit, 0, None).astype(np.uint8).reshape(shape),
        "cam_to_world": cam_to_world.copy(),
    }
