"""Zero-shot semantic segmentation (TIPSv2 Table 5), the official TIPS notebook's protocol.

Defaults follow google-deepmind/tips ``pytorch/TIPS_zeroshot_segmentation.ipynb`` (after TCL):

- Text: each class name fills every template (``tcl``: TCL's 9; ``openai``: open_clip's 80);
  each prompt embedding is L2-normalised, averaged over templates and re-normalised.
- Image: short side resized to ``short_side`` (bicubic; long side ``int(S * long / short)``,
  untouched when the short side already is S). ``slide``: windows of ``window`` pixels every
  ``stride`` (the mmseg/TCL grid; windows clamped to the image, so a side shorter than the window
  is one window of that side); ``whole``: the whole resized image is one window. A window whose
  side is not a multiple of the patch size is resized up to the next multiple (bicubic), as the
  notebook does; full windows (448 = 32 x 14) are untouched.
- Patch features: ``value`` = MaskCLIP value tokens (``Features.value_tokens``), ``patch`` = final
  patch tokens; L2-normalised, cosine with every class embedding -> (C, h, w) per window.
- Scores: ``slide``: each window's cosine map upsampled bilinearly to the window, softmax over
  classes of ``cos / softmax_temperature`` (1 = the notebook's plain softmax), summed into the
  image canvas and divided by the per-pixel window count. ``whole``: the cosine map itself (the
  notebook applies no softmax there). The score map is upsampled bilinearly to the label size;
  the prediction is the argmax.
- Background (VOC21 and PC60 label a "background" class):
  ``none``: the dataset's class names are the prompts; a dataset with a background class is
  refused (pick one of the two rules below). ``class``: "background" is one more class name,
  prompted through the templates like every other class. ``threshold``: background is not
  prompted; a pixel whose best foreground cosine -- the window-averaged, label-size upsampled
  cosine map, maxed over classes -- is below ``background_threshold`` is background, otherwise it
  keeps its argmax class.
- Metrics: confusion-matrix mIoU over the classes present in target or prediction, aAcc, mAcc;
  pixels with the dataset's ignore label are skipped.

Windows are the cached feature unit: each window is an item of a :class:`WindowDataset`, so the
engine stores exactly what the encoder saw and a rerun decodes nothing.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tips_eval.data.base import ImageDataset
from tips_eval.data.dense_common import SegmentationDataset, image_size
from tips_eval.errors import BadImageError, DataError
from tips_eval.features import FeatureSpec
from tips_eval.metrics import mean_iou, segmentation_confusion
from tips_eval.task_api import TaskConfig, TaskResult, register_task

from ._common import TCL_TEMPLATES, class_text_embeddings, prompt_templates, require_nonempty  # noqa: F401

Box = tuple[int, int, int, int]  # y1, x1, y2, x2 (pixels of the resized image, end exclusive)


# ------------------------------------------------------------------------------ geometry
def short_side_size(w: int, h: int, short: int | None) -> tuple[int, int]:
    """(W, H) after resizing the short side to ``short`` (the notebook's ShortSideResize)."""
    if not short or min(w, h) == short:
        return w, h
    if w < h:
        return short, int(short * h / w)
    return int(short * w / h), short


def slide_windows(h: int, w: int, window: int, stride: int) -> list[Box]:
    """The mmseg/TCL sliding grid over an (h, w) image, windows clamped to the image."""
    boxes = []
    for i in range(max(h - window + stride - 1, 0) // stride + 1):
        for j in range(max(w - window + stride - 1, 0) // stride + 1):
            y2, x2 = min(i * stride + window, h), min(j * stride + window, w)
            boxes.append((max(y2 - window, 0), max(x2 - window, 0), y2, x2))
    return boxes


def window_counts(boxes, size: tuple[int, int], device=None) -> torch.Tensor:
    """(H, W) number of windows covering each pixel."""
    count = torch.zeros(size, device=device)
    for y1, x1, y2, x2 in boxes:
        count[y1:y2, x1:x2] += 1
    return count


def stitch_windows(cos_maps, boxes, size: tuple[int, int], temperature: float = 1.0, with_cosine: bool = False):
    """Per-window cosine maps (C, h, w) -> ((C, H, W) window-averaged softmax probabilities,
    (C, H, W) window-averaged cosines or None). Each map is upsampled bilinearly to its box first."""
    c = cos_maps[0].shape[0]
    dev = cos_maps[0].device
    probs = torch.zeros((c, *size), device=dev)
    cos_sum = torch.zeros((c, *size), device=dev) if with_cosine else None
    for cos, (y1, x1, y2, x2) in zip(cos_maps, boxes):
        up = F.interpolate(cos[None].float(), size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)[0]
        probs[:, y1:y2, x1:x2] += (up / temperature).softmax(dim=0)
        if cos_sum is not None:
            cos_sum[:, y1:y2, x1:x2] += up
    count = window_counts(boxes, size, dev)
    if bool((count == 0).any()):
        raise ValueError(f"windows {boxes} leave pixels of a {size} image uncovered")
    return probs / count, (cos_sum / count if cos_sum is not None else None)


def assign_labels(score: torch.Tensor, cosine: torch.Tensor | None, class_ids: torch.Tensor,
                  background_index: int | None = None, threshold: float | None = None) -> torch.Tensor:
    """(C, H, W) scores -> (H, W) dataset class ids: ``class_ids[argmax]``; with a ``threshold``,
    pixels whose best ``cosine`` is below it become ``background_index``."""
    pred = class_ids.to(score.device)[score.argmax(dim=0)]
    if threshold is not None:
        best = cosine.max(dim=0).values
        pred = torch.where(best < threshold, torch.full_like(pred, background_index), pred)
    return pred


# ------------------------------------------------------------------------------ windows as items
class WindowDataset(ImageDataset):
    """Crops (``boxes``) of the short-side-resized images of ``base``; item k is window ``items[k]``."""

    reader_version = "zsseg-windows-1"

    def __init__(self, base: ImageDataset, items: list[tuple[int, Box]], short_side: int | None):
        self.base, self.items, self.short_side = base, list(items), short_side
        self.name, self.split = base.name, base.split
        self._last: tuple[int, Image.Image] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def image_key(self, k: int) -> str:
        i, (y1, x1, y2, x2) = self.items[k]
        return f"{self.base.image_key(i)}@short{self.short_side}[{y1}:{y2},{x1}:{x2}]"

    def resized(self, i: int) -> Image.Image:
        if self._last is None or self._last[0] != i:  # windows of one image are consecutive
            img = self.base.load_image(i)
            w, h = short_side_size(*img.size, self.short_side)
            self._last = (i, img if (w, h) == img.size else img.resize((w, h), Image.Resampling.BICUBIC))
        return self._last[1]

    def load_image(self, k: int) -> Image.Image:
        i, (y1, x1, y2, x2) = self.items[k]
        return self.resized(i).crop((x1, y1, x2, y2))

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{self.base.fingerprint()}|{self.reader_version}|{self.short_side}".encode())
        for k in range(len(self)):
            h.update(self.image_key(k).encode() + b"\0")
        return h.hexdigest()[:20]

    def __getstate__(self):
        return {**self.__dict__, "_last": None}


@dataclass
class ZeroShotSegConfig(TaskConfig):
    """Protocol parameters (module docstring). The base ``resolution``, when set, is the notebook's
    single ``image_size`` knob: short side = window = resolution, stride scaled by resolution / window;
    the base ``token`` is unused (patch features only)."""

    templates: str = "tcl"  # tcl (9) | openai (80)
    inference: str = "slide"  # slide | whole
    short_side: int | None = 448  # None = keep the image size
    window: int = 448
    stride: int = 336
    feature: str = "value"  # value (MaskCLIP) | patch (final patch tokens)
    background: str = "none"  # none | class | threshold
    background_threshold: float | None = None  # cosine, for background="threshold"
    softmax_temperature: float = 1.0  # slide: softmax(cos / T) per window


def _check(cfg: ZeroShotSegConfig, ds, encoder) -> tuple[int | None, int, int]:
    """Validated (short_side, window, stride); ``resolution`` sets short side = window and scales stride."""
    for name, value, allowed in (("inference", cfg.inference, ("slide", "whole")),
                                 ("feature", cfg.feature, ("value", "patch")),
                                 ("background", cfg.background, ("none", "class", "threshold"))):
        if value not in allowed:
            raise DataError(f"zeroshot_segmentation: {name}={value!r}; expected one of {', '.join(allowed)}")
    short, window, stride = cfg.short_side, cfg.window, cfg.stride
    if cfg.resolution:
        short, window, stride = cfg.resolution, cfg.resolution, max(1, round(cfg.stride * cfg.resolution / cfg.window))
    if cfg.inference == "slide" and not (0 < stride <= window and window >= encoder.patch_size):
        raise DataError(f"zeroshot_segmentation: window={window}, stride={stride}; need "
                        f"patch size ({encoder.patch_size}) <= window and 0 < stride <= window (no gaps)")
    if short is not None and short < encoder.patch_size:
        raise DataError(f"zeroshot_segmentation: short_side={short} is below the patch size {encoder.patch_size}")
    if cfg.softmax_temperature <= 0:
        raise DataError(f"zeroshot_segmentation: softmax_temperature={cfg.softmax_temperature}; expected > 0")
    has_bg = "background" in ds.class_names
    if cfg.background == "none" and has_bg:
        raise DataError(f"{ds.name} labels a 'background' class (index {ds.class_names.index('background')}); "
                        "background='none' cannot predict it", hint="use background='class' or 'threshold'")
    if cfg.background != "none" and not has_bg:
        raise DataError(f"{ds.name} has no 'background' class; background={cfg.background!r} needs one",
                        hint="use background='none'")
    if cfg.background == "threshold" and cfg.background_threshold is None:
        raise DataError("background='threshold' needs background_threshold (a cosine, e.g. 0.1)")
    return short, window, stride


def _to_size(x: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
    """(C, h, w) -> (C, H, W), bilinear (align_corners=False); unchanged at that size already."""
    if x is None or tuple(x.shape[1:]) == size:
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]


def _image_wh(ds, i: int) -> tuple[int, int]:
    """(W, H) of item i, from the file header where the reader lists files."""
    if isinstance(ds, SegmentationDataset):
        return image_size(ds.root / ds.items[i][0])
    return ds.load_image(i).size


def _plan_windows(ds, encoder, inference, short, window, stride, skip_bad):
    """Per image: its resized (H, W) and [(group, row, box)]; groups: preprocessed size -> items."""
    p = encoder.patch_size
    sizes, per_image, groups, bad = {}, {}, {}, []
    for i in range(len(ds)):
        try:
            w, h = short_side_size(*_image_wh(ds, i), short)
        except BadImageError:
            if not skip_bad:
                raise
            bad.append(i)
            continue
        boxes = slide_windows(h, w, window, stride) if inference == "slide" else [(0, 0, h, w)]
        sizes[i], per_image[i] = (h, w), []
        for box in boxes:
            g = (math.ceil((box[2] - box[0]) / p) * p, math.ceil((box[3] - box[1]) / p) * p)
            per_image[i].append((g, len(groups.setdefault(g, [])), box))
            groups[g].append((i, box))
    return sizes, per_image, groups, bad


@register_task("zeroshot_segmentation", ZeroShotSegConfig, roles=("test",), needs_text=True,
               description="zero-shot semantic segmentation (value-attention patches vs class prompts)")
def run(encoder, data, cfg: ZeroShotSegConfig, ctx) -> TaskResult:
    ds = data["test"]
    require_nonempty(ds, "test")
    names = tuple(getattr(ds, "class_names", ()) or ())
    if not names:
        raise DataError(f"{ds.name} has no class names; zero-shot segmentation needs them")
    short, window, stride = _check(cfg, ds, encoder)
    bg = names.index("background") if "background" in names else None
    class_ids = [k for k in range(len(names)) if not (cfg.background == "threshold" and k == bg)]
    dev = ctx.torch_device()
    text = torch.from_numpy(class_text_embeddings(encoder, [names[k] for k in class_ids], cfg.templates, ctx)).to(dev)

    sizes, per_image, groups, bad = _plan_windows(ds, encoder, cfg.inference, short, window, stride,
                                                  ctx.skip_bad_images)
    pre = encoder.preprocess.replace(resize="squash", interpolation="bicubic", crop_pct=1.0)
    kind = "value_tokens" if cfg.feature == "value" else "patch_tokens"
    fsets = {}
    for g, items in groups.items():
        spec = FeatureSpec(kinds=("value",) if cfg.feature == "value" else (), patch=cfg.feature == "patch",
                           preprocess=pre.replace(image_size=g))
        fsets[g] = ctx.features(encoder, WindowDataset(ds, items, short), spec)
        dim = getattr(fsets[g], kind).shape[-1]
        if dim != text.shape[1]:
            raise DataError(f"{encoder.name}: {cfg.feature} features have {dim} dims but text embeddings "
                            f"{text.shape[1]}; they cannot be compared",
                            hint="the adapter must project its patch features into the text space")

    from tqdm.auto import tqdm

    ids = torch.tensor(class_ids, device=dev)
    threshold = cfg.background_threshold if cfg.background == "threshold" else None
    bad_rows = {g: set(fs.bad_indices) for g, fs in fsets.items()}
    conf = np.zeros((len(names), len(names)), np.int64)
    n_scored = 0
    for i in tqdm(sorted(per_image), desc=f"zero-shot seg {ds.name}", unit="img", disable=not ctx.progress):
        windows = per_image[i]
        if any(row in bad_rows[g] for g, row, _ in windows):
            bad.append(i)
            continue
        cos_maps = []
        for g, row, _ in windows:
            x = torch.from_numpy(np.asarray(getattr(fsets[g], kind)[row], dtype=np.float32)).to(dev)
            cos_maps.append(torch.einsum("cd,hwd->chw", text, F.normalize(x, dim=-1)))
        if cfg.inference == "slide":
            score, cosine = stitch_windows(cos_maps, [b for _, _, b in windows], sizes[i], cfg.softmax_temperature,
                                           with_cosine=threshold is not None)
        else:
            score, cosine = cos_maps[0], None
        mask = torch.as_tensor(ds.target(i)["mask"], device=dev)
        score, cosine = (_to_size(m, tuple(mask.shape)) for m in (score, cosine))
        if cosine is None:
            cosine = score  # whole: the score is the cosine map
        pred = assign_labels(score, cosine, ids, bg, threshold)
        conf += segmentation_confusion(pred, mask, len(names), ds.ignore_index)
        n_scored += 1
    if not n_scored:
        raise DataError(f"{ds.name} {ds.split}: no image could be scored ({len(bad)} unreadable)")
    res = mean_iou(conf)
    return TaskResult(
        {"mIoU": res["mIoU"], "aAcc": res["aAcc"], "mAcc": res["mAcc"]}, "mIoU",
        protocol={"templates": f"{cfg.templates} ({len(prompt_templates(cfg.templates))})",
                  "class_embedding": "mean of L2-normalised template embeddings, re-normalised",
                  "prompted_classes": len(class_ids), "feature": cfg.feature, "inference": cfg.inference,
                  "short_side": short, "short_side_resize": "bicubic (PIL), long side int(S * long / short)",
                  "window": window if cfg.inference == "slide" else None,
                  "stride": stride if cfg.inference == "slide" else None,
                  "window_resize": "up to the next patch multiple, bicubic (full windows untouched)",
                  "scores": ("softmax(cos / T) per window, bilinear to the window, averaged over windows"
                             if cfg.inference == "slide" else "cosine map (no softmax)"),
                  "softmax_temperature": cfg.softmax_temperature if cfg.inference == "slide" else None,
                  "to_label_size": "bilinear (align_corners=False), argmax",
                  "background": cfg.background, "background_threshold": threshold,
                  "ignore_index": ds.ignore_index, "miou": "confusion matrix, classes present in target or prediction",
                  "preprocess": {**pre.to_dict(), "image_size": "each window's size"}},
        info={"n_images": n_scored, "bad_images": len(bad), "num_classes": len(names),
              "n_windows": sum(len(v) for v in groups.values()),
              "per_class_iou": {n: v for n, v in zip(names, res["per_class"])},
              "feature_caches": sorted(fs.key for fs in fsets.values())})
