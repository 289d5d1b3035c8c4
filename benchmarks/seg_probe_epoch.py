"""One linear segmentation probe epoch on cached features vs through the frozen backbone.

Same images (synthetic scenes), same head (DINOv2 "lin." BatchNorm + 1x1
conv on the last block), same batch and iterations, same Lightning loop:

- ``cached``: the engine's feature cache is built once (timed apart), then
  an epoch reads features from the memmap and targets from the dataset
  (cold: the in-memory target cache starts empty, as in a first epoch).
- ``backbone``: an epoch decodes each image, augments it (the segmentation
  protocol's random scale + crop, flip, colour jitter) and runs the frozen
  encoder on every batch.

Both epochs are timed side by side, alternating, best of ``--repeats``; the
ratio is backbone / cached.

    python benchmarks/seg_probe_epoch.py                   # dinov2-s14 @112, CPU (about a minute)
    python benchmarks/seg_probe_epoch.py --model tips-v2-b14 --image-size 448 --scenes 1000 --device cuda
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dinov2-s14", help="zoo name, built with random weights")
    ap.add_argument("--image-size", type=int, default=112, help="training resolution (a multiple of the patch)")
    ap.add_argument("--scenes", type=int, default=100, help="synthetic scenes (60%% of them are the train split)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the training loop")
    ap.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating timed epochs of each; best is kept")
    args = ap.parse_args(argv)

    import tips_eval
    from tips_eval.data import open_dataset
    from tips_eval.features import FeatureSpec
    from tips_eval.features.spec import resolve_precision
    from tips_eval.synthetic import generate_dataset
    from tips_eval.task_api import RunContext
    from tips_eval.tasks._dense import REFERENCE, DenseConfig, plan_schedule
    from tips_eval.tasks._dense_heads import DenseHead, DenseLoss
    from tips_eval.tasks._dense_train import AugmentedTrainSet, CachedTrainSet, DenseProbe, fit

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = resolve_precision("auto", device.type)
    enc = tips_eval.load_encoder(args.model, pretrained=False, image_size=args.image_size).eval()
    side = args.image_size // enc.patch_size * enc.patch_size
    pre = enc.preprocess.replace(image_size=(side, side), resize="squash")
    layer = enc.num_layers - 1
    ref = REFERENCE[("segmentation", "linear")]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = generate_dataset(tmp / "data", args.scenes, image_size=128, seed=0)
        train = open_dataset("synthetic", root, "train")
        n, c = len(train), train.num_classes
        steps = math.ceil(n / args.batch_size)
        ctx = RunContext(cache_dir=tmp / "cache", device=str(device), progress=False, batch_size=64,
                         num_workers=args.workers)
        cfg = DenseConfig(steps=steps, batch_size=args.batch_size)
        plan, _ = plan_schedule(cfg, ref, n, quick=False)
        print(f"model {args.model} (random weights, {enc.num_layers} blocks, dim {enc.embed_dim}) @ {side}px, "
              f"{n} train images, {c} classes, batch {args.batch_size}, {steps} iterations/epoch, device {device}, "
              f"precision {precision}, torch threads {torch.get_num_threads()}")

        t0 = time.perf_counter()
        fs = ctx.features(enc, train, FeatureSpec(layers=(layer,), patch=False, preprocess=pre))
        extract_s = time.perf_counter() - t0
        backbone_set = AugmentedTrainSet(train, "segmentation", side, pre, ref["aug_scale"], True,
                                         ref["color_jitter"], {"num_classes": c}, False)

        def epoch(source: str) -> float:
            torch.manual_seed(0)
            head = DenseHead("segmentation", "linear", enc.embed_dim, num_outputs=c)
            kw = {"encoder": enc, "layer_ids": [layer], "slot_ids": [0]} if source == "backbone" else {}
            module = DenseProbe(head, DenseLoss("segmentation"), plan, (side, side), **kw)
            t = time.perf_counter()
            data = backbone_set if source == "backbone" else CachedTrainSet(  # fresh: targets read cold
                train, "segmentation", (side, side), [fs], [0], np.arange(n), {"num_classes": c})
            summary = fit(module, data, ctx, plan, precision)
            assert summary["steps_run"] == steps
            return time.perf_counter() - t

        epoch("cached")  # warm-up: imports, first Lightning trainer
        times = {"cached": [], "backbone": []}
        for _ in range(args.repeats):
            for source in times:
                times[source].append(epoch(source))
    cached, backbone = min(times["cached"]), min(times["backbone"])
    runs = lambda ts: ", ".join(f"{t:.2f}" for t in ts)  # noqa: E731
    print(f"feature extraction, once (train split, {n} images): {extract_s:8.2f} s")
    print(f"cached epoch   (features from the cache):          {cached:8.2f} s  (runs: {runs(times['cached'])})")
    print(f"backbone epoch (augmented images through encoder): {backbone:8.2f} s  (runs: {runs(times['backbone'])})")
    print(f"ratio backbone / cached: {backbone / cached:.1f}x per epoch; the cache pays for itself after "
          f"{extract_s / max(backbone - cached, 1e-9):.2f} epochs")


if __name__ == "__main__":
    main()
