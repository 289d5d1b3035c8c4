"""Class names of the segmentation benchmarks, in label-index order.

Names follow mmsegmentation's dataset classes (``mmseg/datasets/{voc,ade,
pascal_context}.py``), which is the label order the DINOv2/DINOv3 linear
probes and the MaskCLIP-style zero-shot protocols evaluate with. The one
change is cosmetic: mmseg's ADE20K entry ``'bed '`` has a stray trailing
space, dropped here. Zero-shot prompts may want friendlier synonyms
("dining table" for "diningtable"); that mapping belongs to the task, not here.
"""

from __future__ import annotations

import numpy as np

#: PASCAL VOC 2012: 21 classes, index 0 = background (a class), 255 = ignore.
VOC21 = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

#: ADE20K SceneParsing: 150 classes after ``reduce_zero_label`` (file value k -> index k-1).
ADE150 = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)

#: Pascal Context 59: the 59 object/stuff classes (file value k in 1..59 -> index k-1; 0 is ignored).
PC59 = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "table", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor", "bag", "bed",
    "bench", "book", "building", "cabinet", "ceiling", "cloth", "computer", "cup", "door", "fence", "floor",
    "flower", "food", "grass", "ground", "keyboard", "light", "mountain", "mouse", "curtain", "platform",
    "sign", "plate", "road", "rock", "shelves", "sidewalk", "sky", "snow", "bedclothes", "track", "tree",
    "truck", "wall", "water", "window", "wood",
)

#: Pascal Context 60: background (index 0, a class) + the 59 above.
PC60 = ("background",) + PC59


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map ((n, 3) uint8): the palette of ``SegmentationClass`` PNGs."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        pal[i] = (r, g, b)
    return pal

