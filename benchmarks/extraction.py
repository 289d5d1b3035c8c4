"""Extraction pipeline throughput vs bare ``encode_image`` on the same images (goal: >= 0.9x).

The pipeline run decodes JPEGs from disk, transforms them (in DataLoader
workers if any), runs the encoder, casts, checks for NaN/Inf, writes the
memmapped cache, fsyncs and checksums every shard, and seals the manifest.
The bare run only calls ``encoder.encode_image`` on the same images,
pre-decoded and pre-transformed into batches in memory, under the same
precision. Both are timed side by side, alternating, best of ``--repeats``.

    python benchmarks/extraction.py                       # dinov2-s14 @112, CPU
    python benchmarks/extraction.py --model tips-v2-b14 --image-size 224 --n 2048 --batch-size 128  # GPU
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def peak_rss_mib() -> tuple[float, float]:
    """(this process, largest finished child) peak resident set size in MiB (Linux reports KiB)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def write_images(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    """Smooth random JPEGs (a realistic decode cost, unlike noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        small = rng.integers(0, 256, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size[1], size[0]), Image.BILINEAR)
        path = folder / f"{i:06d}.jpg"
        img.save(path, quality=90)
        out.append(str(path))
    return out


def bare_forward(encoder, batches, device, precision, kinds, layers) -> float:
    from tips_eval.features.spec import autocast_dtype

    amp = autocast_dtype(precision)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            x = x.to(device, non_blocking=True)
            ctx = torch.autocast(device.type, dtype=amp) if amp is not None else torch.autocast(device.type,
                                                                                                enabled=False)
            with ctx:
                f = encoder.encode_image(x, layers=layers, kinds=kinds)
            f.patch_tokens.sum().item()  # wait for the device
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dinov2-s14", help="zoo name, built with random weights")
    ap.add_argument("--image-size", type=int, default=112, help="encoder input resolution")
    ap.add_argument("--source-size", type=int, nargs=2, default=(160, 200), metavar=("H", "W"),
                    help="size of the JPEGs on disk")
    ap.add_argument("--n", type=int, default=192, help="number of images")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the engine's)")
    ap.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--layers", type=int, nargs="*", default=[], help="also store these blocks")
    ap.add_argument("--repeats", type=int, default=2, help="alternating timed runs of each; best is kept")
    args = ap.parse_args(argv)

    import tips_eval
    from tips_eval.data.base import ListDataset, load_rgb
    from tips_eval.features import FeatureSpec, extract_features
    from tips_eval.features.pipeline import default_num_workers
    from tips_eval.features.spec import resolve_precision

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = resolve_precision(args.precision, device.type)
    enc = tips_eval.load_encoder(args.model, pretrained=False, image_size=args.image_size).to(device).eval()
    base_mib = peak_rss_mib()[0]
    workers = default_num_workers(device.type) if args.workers is None else args.workers
    spec = FeatureSpec(layers=tuple(args.layers))
    layers = enc.normalize_layers(spec.layers)
    print(f"model {args.model} (random weights) @ {args.image_size}px, {args.n} JPEGs "
          f"{args.source_size[0]}x{args.source_size[1]}, batch {args.batch_size}, device {device}, "
          f"precision {precision}, workers {workers}, torch threads {torch.get_num_threads()}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "imgs").mkdir()
        paths = write_images(tmp / "imgs", args.n, tuple(args.source_size))
        ds = ListDataset(paths, name="bench")
        pixels = torch.stack([enc.preprocess(load_rgb(p)) for p in paths])
        batches = [pixels[i:i + args.batch_size] for i in range(0, args.n, args.batch_size)]
        if device.type == "cuda":
            batches = [b.pin_memory() for b in batches]
        bare_forward(enc, batches[:1], device, precision, (), layers)  # warm-up
        bare_s, pipe_s, hit_s = [], [], []
        for r in range(args.repeats):
            bare_s.append(bare_forward(enc, batches, device, precision, (), layers))
            t0 = time.perf_counter()
            fs = extract_features(enc, ds, spec, cache_dir=tmp / f"cache{r}", batch_size=args.batch_size,
                                  num_workers=workers, device=device, precision=args.precision, progress=False)
            pipe_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            extract_features(enc, ds, spec, cache_dir=tmp / f"cache{r}", batch_size=args.batch_size,
                             num_workers=workers, device=device, precision=args.precision, progress=False)
            hit_s.append(time.perf_counter() - t0)
        bare_ips, pipe_ips = args.n / min(bare_s), args.n / min(pipe_s)
        size_mib = fs.nbytes() / 2**20
    self_mib, child_mib = peak_rss_mib()
    print(f"bare encode_image (pre-decoded batches): {bare_ips:8.1f} images/s  "
          f"(runs: {', '.join(f'{args.n / s:.1f}' for s in bare_s)})")
    print(f"pipeline extract_features (decode+cache): {pipe_ips:8.1f} images/s  "
          f"(runs: {', '.join(f'{args.n / s:.1f}' for s in pipe_s)})")
    print(f"ratio pipeline / bare: {pipe_ips / bare_ips:.3f}x (goal >= 0.9x)")
    print(f"cache hit (open + validate {size_mib:.1f} MiB): {min(hit_s) * 1000:.1f} ms")
    print(f"peak RSS: {self_mib:.0f} MiB main process ({base_mib:.0f} MiB after importing torch and building "
          f"the model), {child_mib:.0f} MiB largest child process")


if __name__ == "__main__":
    main()
