"""One scene, two views: ``render_scene(seed)`` and pixel correspondences between its views."""

from __future__ import annotations

import json

import numpy as np

from .geometry import relative_pose, warp_pixels
from .render import render_view
from .scene import SHAPES, make_caption, camera_clear_of_objects, sample_scene, sample_view_pair

#: bump whenever a change alters rendered pixels, so stored datasets regenerate
GENERATOR_VERSION = "1"
CAMERA_TRIES, SCENE_TRIES = 10, 20


def _size(image_size) -> tuple[int, int]:
    h, w = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
    if int(h) < 16 or int(w) < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size!r}")
    return int(h), int(w)


def _object_areas(view: dict, n_objects: int) -> np.ndarray:
    return np.bincount(view["instance"].ravel(), minlength=n_objects + 1)[1:]


def _finish_view(view: dict, scene: dict) -> dict:
    """Add the image-level label (shape of the largest object by pixel area) and the caption."""
    areas = _object_areas(view, len(scene["objects"]))
    largest = scene["objects"][int(np.argmax(areas))]  # ties: the first object
    view["label"] = SHAPES.index(largest["shape"])
    view["label_name"] = largest["shape"]
    view["caption"] = make_caption(scene["objects"], scene["floor"], view["instance"])
    return view


def render_scene(seed: int, image_size=64) -> dict:
    """Sample and render one scene from ``seed`` (deterministic), seen from two cameras.

    Returns a dict with ``objects``, ``floor``, ``light``, ``K`` (3, 3),
    ``views`` (a list of two dicts with ``rgb`` (H, W, 3) uint8, ``depth``
    (H, W) float32 metres (0 = sky), ``valid`` bool, ``normals`` (H, W, 3)
    float32 camera-frame, ``semantic`` uint8, ``instance`` uint8 (0 = no
    object, k + 1 = object k), ``cam_to_world`` (4, 4), ``label``,
    ``label_name``, ``caption``) and ``pose_view2`` (4, 4): camera-1 to
    camera-2 coordinates. Every object shows at least a few pixels in view 1,
    and view 2 shows at least one object.
    """
    height, width = _size(image_size)
    rng = np.random.default_rng(seed)
    min_px = max(4, round(0.002 * height * width))
    for _ in range(SCENE_TRIES):
        scene = sample_scene(rng, height, width)
        n = len(scene["objects"])
        for _ in range(CAMERA_TRIES):
            pose1, pose2 = sample_view_pair(rng, scene["objects"])
            if not (camera_clear_of_objects(pose1, scene["objects"]) and camera_clear_of_objects(pose2, scene["objects"])):
                continue
            view1 = render_view(scene, pose1, height, width)
            if (_object_areas(view1, n) < min_px).any():
                continue
            view2 = render_view(scene, pose2, height, width)
            if _object_areas(view2, n).max() < min_px:
                continue
            scene.update(seed=int(seed), image_size=(height, width),
                         views=[_finish_view(view1, scene), _finish_view(view2, scene)],
                         pose_view2=relative_pose(pose1, pose2))
            return scene
    raise RuntimeError(f"seed {seed}: no camera pair sees every object after {SCENE_TRIES * CAMERA_TRIES} tries")


def _view_index(view) -> int:
    if view not in (1, 2):
        raise ValueError(f"view must be 1 or 2, got {view!r}")
    return int(view) - 1


def correspondences(scene: dict, view_a: int = 1, view_b: int = 2, rel_tol: float = 0.01
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels of ``view_a`` mapped into ``view_b`` using depth, K and the relative pose.

    Returns ``(uv_a, uv_b, visible)``: (N, 2) pixel-centre coordinates (u, v)
    of every valid pixel of view a, their (N, 2) sub-pixel positions in view b,
    and (N,) True where the point is inside view b and not occluded there
    (depth test against view b's depth map, see
    :func:`tips_eval.synthetic.geometry.warp_pixels`).
    """
    a, b = scene["views"][_view_index(view_a)], scene["views"][_view_index(view_b)]
    pose_ba = relative_pose(a["cam_to_world"], b["cam_to_world"])
    return warp_pixels(a["depth"], scene["K"], pose_ba, b["depth"], rel_tol=rel_tol)


def scene_to_json(scene: dict) -> str:
    """The scene description (objects, floor, light, field of view) as compact JSON."""
    keys = ("objects", "floor", "light", "fov_x_deg")
    return json.dumps({k: scene[k] for k in keys}, separators=(",", ":"), sort_keys=True)
