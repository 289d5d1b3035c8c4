"""Embedded synthetic 3D benchmark: procedural scenes with exact ground truth for every task.

Each scene (ground plane, 1-4 coloured, textured primitives, a directional
light, a sky) is ray cast from two known cameras, giving RGB, metric depth,
camera-frame normals, semantic and instance masks, an image-level label, a
caption and the relative pose of the two views -- all from a seed, offline,
in milliseconds. ``generate_dataset`` stores many scenes as a Hugging Face
dataset that ``open_dataset("synthetic", path, split)`` reads.

    from tips_eval.synthetic import generate_dataset, render_scene
    path = generate_dataset("data/synthetic", n_scenes=300, image_size=64)
"""

from .geometry import normals_from_depth
from .scene import COLORS, SEMANTIC_CLASSES, SHAPES
from .store import generate_dataset, read_manifest
from .views import GENERATOR_VERSION, correspondences, render_scene

__all__ = ["COLORS", "GENERATOR_VERSION", "SEMANTIC_CLASSES", "SHAPES", "correspondences", "generate_dataset",
           "normals_from_depth", "read_manifest", "render_scene"]
