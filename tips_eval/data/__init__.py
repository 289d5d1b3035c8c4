"""Dataset readers: one module per dataset layout, registered by name.

Every reader returns :class:`~tips_eval.data.base.ImageDataset` splits; the
feature engine only needs ``load_image(i)``, ``image_key(i)`` and
``fingerprint()``, tasks read targets with ``target(i)``.
"""

from .base import DATASETS, ImageDataset, ListDataset, load_readers, load_rgb, open_dataset, register_dataset

__all__ = ["DATASETS", "ImageDataset", "ListDataset", "load_readers", "load_rgb", "open_dataset", "register_dataset"]
