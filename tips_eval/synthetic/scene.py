"""Random scene descriptions (objects, floor, light, two cameras) and their captions.

A scene is plain data (dicts of floats and names) sampled from a numpy
``Generator``, so it is deterministic from a seed and can be written as JSON
next to the rendered arrays.
"""

from __future__ import annotations

import numpy as np

from .geometry import intrinsics, look_at

#: image-level labels: the shape of the largest object (index = label)
SHAPES: tuple[str, ...] = ("sphere", "cube", "cylinder", "cone", "pyramid")
#: per-pixel semantic classes (index = class id); every pixel has one, there is no ignore value
SEMANTIC_CLASSES: tuple[str, ...] = ("background", "floor") + SHAPES
#: named object colours (RGB in [0, 1])
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.10),
    "green": (0.16, 0.62, 0.20),
    "blue": (0.12, 0.28, 0.86),
    "yellow": (0.95, 0.84, 0.14),
    "orange": (0.96, 0.50, 0.08),
    "purple": (0.52, 0.20, 0.72),
    "cyan": (0.10, 0.78, 0.84),
    "pink": (0.96, 0.46, 0.70),
}
FLOOR_COLORS: dict[str, tuple[float, float, float]] = {
    "grey": (0.52, 0.52, 0.52),
    "beige": (0.80, 0.72, 0.56),
    "white": (0.86, 0.86, 0.86),
}
#: surface patterns; the second colour is the base colour mixed with white
TEXTURES: tuple[str, ...] = ("solid", "striped", "checkered")
TEXTURE_WORDS = {"solid": "", "striped": "striped ", "checkered": "checkered "}

FLOOR_HALF_SIZE = 7.0  # metres; beyond the floor square is sky
PLACEMENT_RADIUS = 1.6  # object centres lie in this disc around the origin
MAX_OBJECTS = 4


def semantic_id(shape: str) -> int:
    """Semantic class id of a shape name."""
    return SEMANTIC_CLASSES.index(shape)


def _sample_object(rng: np.random.Generator, shape: str, color: str) -> dict:
    """Size, orientation and texture of one object; ``footprint`` bounds it on the floor."""
    obj = {"shape": shape, "color": color, "texture": TEXTURES[rng.integers(len(TEXTURES))],
           "yaw": float(rng.uniform(0, np.pi / 2))}
    if shape == "sphere":
        r = rng.uniform(0.35, 0.65)
        obj.update(radius=r, height=2 * r, footprint=r)
    elif shape == "cube":
        s = rng.uniform(0.30, 0.55)  # half side
        obj.update(half=s, height=2 * s, footprint=s * np.sqrt(2))
    elif shape == "cylinder":
        r, h = rng.uniform(0.25, 0.5), rng.uniform(0.5, 1.3)
        obj.update(radius=r, height=h, footprint=r)
    elif shape == "cone":
        r, h = rng.uniform(0.35, 0.6), rng.uniform(0.7, 1.4)
        obj.update(radius=r, height=h, footprint=r)
    elif shape == "pyramid":
        s, h = rng.uniform(0.35, 0.6), rng.uniform(0.6, 1.2)
        obj.update(half=s, height=h, footprint=s * np.sqrt(2))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in obj.items()}


def sample_objects(rng: np.random.Generator) -> list[dict]:
    """1-4 non-overlapping objects resting on the floor, no two with the same colour and shape."""
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    objects: list[dict] = []
    used: set[tuple[str, str]] = set()
    colors = list(COLORS)
    for _ in range(200):
        if len(objects) == n:
            break
        shape, color = SHAPES[rng.integers(len(SHAPES))], colors[rng.integers(len(colors))]
        if (color, shape) in used:
            continue
        obj = _sample_object(rng, shape, color)
        rad, ang = PLACEMENT_RADIUS * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
        xy = np.array([rad * np.cos(ang), rad * np.sin(ang)])
        if any(np.hypot(*(xy - o["center"][:2])) < obj["footprint"] + o["footprint"] + 0.15 for o in objects):
            continue
        obj["center"] = [float(xy[0]), float(xy[1]), 0.0]  # base centre, on the floor
        objects.append(obj)
        used.add((color, shape))
    return objects


def sample_camera(rng: np.random.Generator, target: np.ndarray, azimuth: float | None = None) -> dict:
    """An elevated camera looking at ``target`` from a random azimuth/elevation/distance."""
    az = rng.uniform(0, 2 * np.pi) if azimuth is None else azimuth
    el = np.radians(rng.uniform(25, 55))
    dist = rng.uniform(3.8, 6.0)
    eye = target + dist * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    look = target + rng.uniform(-0.15, 0.15, size=3) * np.array([1, 1, 0.5])
    return {"azimuth": float(az), "cam_to_world": look_at(eye, look)}


def camera_clear_of_objects(pose: np.ndarray, objects: list[dict], margin: float = 0.3) -> bool:
    """True when the camera centre lies outside every object's bounding cylinder (plus margin)."""
    eye = pose[:3, 3]
    for o in objects:
        c = np.asarray(o["center"])
        if np.hypot(*(eye[:2] - c[:2])) < o["footprint"] + margin and eye[2] < o["height"] + margin:
            return False
    return True


def sample_scene(rng: np.random.Generator, height: int, width: int) -> dict:
    """Objects, floor, light, intrinsics and two camera poses of one scene (views not checked yet)."""
    objects = sample_objects(rng)
    floor_color = list(FLOOR_COLORS)[rng.integers(len(FLOOR_COLORS))]
    floor = {"color": floor_color, "texture": ("solid", "checkered")[rng.integers(2)],
             "half_size": FLOOR_HALF_SIZE}
    light_az, light_el = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(35, 70))
    light = np.array([np.cos(light_el) * np.cos(light_az), np.cos(light_el) * np.sin(light_az), np.sin(light_el)])
    fov = float(rng.uniform(48, 60))
    return {"objects": objects, "floor": floor, "light": light.tolist(), "fov_x_deg": fov,
            "K": intrinsics(fov, height, width)}


def sample_view_pair(rng: np.random.Generator, objects: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Two camera poses around the objects; the second is 20-60 degrees of azimuth away."""
    centroid = np.mean([o["center"] for o in objects], axis=0)
    target = np.array([centroid[0], centroid[1], 0.3])
    cam1 = sample_camera(rng, target)
    offset = np.radians(rng.uniform(20, 60)) * (1 if rng.uniform() < 0.5 else -1)
    cam2 = sample_camera(rng, target, azimuth=cam1["azimuth"] + offset)
    return cam1["cam_to_world"], cam2["cam_to_world"]


def describe_object(obj: dict) -> str:
    """'a red striped sphere' -- colour, texture (if any) and shape."""
    words = f"{obj['color']} {TEXTURE_WORDS[obj['texture']]}{obj['shape']}"
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def make_caption(objects: list[dict], floor: dict, instance: np.ndarray) -> str:
    """Caption naming every visible object left to right, e.g. 'a red sphere left of a blue cube on a grey floor'.

    Objects are ordered by the column of their visible pixels' centroid in this
    view (``instance`` holds 1 + object index per pixel), so the order and the
    spatial relation are true for the image the caption belongs to.
    """
    cols = np.arange(instance.shape[1])[None, :]
    order = []
    for k, obj in enumerate(objects):
        m = instance == k + 1
        if m.any():
            order.append((float((cols * m).sum() / m.sum()), k))
    names = [describe_object(objects[k]) for _, k in sorted(order)]
    floor_words = f"{floor['color']} {TEXTURE_WORDS[floor['texture']]}floor"
    if not names:
        return f"an empty {floor_words}"
    if len(names) == 1:
        subject = names[0]
    elif len(names) == 2:
        subject = f"{names[0]} left of {names[1]}"
    else:
        subject = f"{', '.join(names[:-1])} and {names[-1]} from left to right,"
    return f"{subject} on a {floor_words}"
