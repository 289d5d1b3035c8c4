"""The input side: decode + transform in DataLoader workers, batches that never cross a shard.

Errors raised by a reader (``BadImageError`` for an undecodable file, any
``TipsEvalError``) are caught *inside* the worker and shipped back as a
:class:`Failure`, so the main process raises (or skips) them as one clean line
instead of a worker traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from PIL import Image

from tips_eval import errors
from tips_eval.errors import BadImageError, TipsEvalError


@dataclass
class Failure:
    """An item that could not be loaded, as picklable data."""

    index: int
    error: str  # class name in tips_eval.errors
    message: str
    hint: str | None = None

    @classmethod
    def of(cls, index: int, exc: TipsEvalError) -> "Failure":
        """The picklable form of a one-line error raised while loading item ``index``."""
        return cls(index, type(exc).__name__, exc.message, exc.hint)

    def exception(self) -> TipsEvalError:
        cls = getattr(errors, self.error, None)
        if not (isinstance(cls, type) and issubclass(cls, TipsEvalError)):
            cls = TipsEvalError
        return cls(self.message, self.hint)


class TransformedImages(torch.utils.data.Dataset):
    """``dataset.load_image(i)`` -> optional left-right flip -> ``transform`` -> (3, H, W)."""

    def __init__(self, dataset, transform, flip: bool = False):
        self.dataset, self.transform, self.flip = dataset, transform, flip

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            img = self.dataset.load_image(i)
            if self.flip:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            return i, self.transform(img)
        except TipsEvalError as e:
            return i, Failure.of(i, e)
        except OSError as e:  # a reader that reads files itself
            name = f"{getattr(self.dataset, 'name', 'dataset')}/{getattr(self.dataset, 'split', '')}"
            return i, Failure(i, "BadImageError", f"cannot read item {i} ({self._key(i)}) of {name}: "
                                                  f"{str(e).splitlines()[0][:160]}")

    def _key(self, i: int) -> str:
        try:
            return self.dataset.image_key(i)
        except Exception:  # noqa: BLE001  (only used in a message)
            return "?"


def collate(items) -> dict:
    """Stack the loaded images; failed items are listed apart (``pixels`` is None if all failed)."""
    indices = [i for i, _ in items]
    good = [x for _, x in items if not isinstance(x, Failure)]
    failures = [x for _, x in items if isinstance(x, Failure)]
    pixels = None
    if good:
        shapes = {tuple(x.shape) for x in good}
        if len(shapes) > 1:
            failures.append(Failure(indices[0], "DataError",
                                    f"the transform returned images of different sizes {sorted(shapes)} "
                                    f"in one batch (items {indices[0]}..{indices[-1]})",
                                    "use a transform with a fixed output size (tips_eval.Preprocess)"))
        else:
            pixels = torch.stack(good)
    return {"indices": indices, "pixels": pixels, "failures": failures}


def default_num_workers(device_type: str) -> int:
    """min(4, cores) feeding a GPU; on CPU the forward pass wants the cores (0 on <= 4 cores, at most 2)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (macOS)
        cores = os.cpu_count() or 1
    return min(4, cores) if device_type == "cuda" else min(2, cores // 4 if cores > 4 else 0)


def shard_batches(shard_ranges, batch_size: int) -> list[list[int]]:
    """Consecutive index batches of at most ``batch_size`` inside each (start, stop) shard."""
    return [list(range(j, min(j + batch_size, b))) for a, b in shard_ranges for j in range(a, b, batch_size)]


def make_loader(images: TransformedImages, batches: list[list[int]], num_workers: int,
                pin_memory: bool) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        images, batch_sampler=batches, num_workers=num_workers, collate_fn=collate, pin_memory=pin_memory,
        prefetch_factor=4 if num_workers > 0 else None)


def load_one(images: TransformedImages, start: int, skip_bad: bool) -> tuple[int, torch.Tensor]:
    """The first loadable item from ``start`` on (shape probe); raises the first failure unless skipping."""
    for i in range(start, len(images)):
        _, x = images[i]
        if not isinstance(x, Failure):
            return i, x
        if not (skip_bad and x.error == "BadImageError"):
            raise x.exception()
    raise BadImageError(f"no readable image in {getattr(images.dataset, 'name', 'dataset')} "
                        f"from item {start} on; cannot extract features")
