"""``python -m tips_eval.synthetic OUT_DIR [--n-scenes 300] [--image-size 64]``: generate (or reuse) a dataset."""

from __future__ import annotations

import argparse
import time

from .store import generate_dataset, read_manifest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tips_eval.synthetic", description=__doc__.split(":")[1].strip())
    p.add_argument("out_dir")
    p.add_argument("--n-scenes", type=int, default=300)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-proc", type=int, default=1)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    path = generate_dataset(args.out_dir, args.n_scenes, image_size=args.image_size, seed=args.seed,
                            num_proc=args.num_proc)
    splits = read_manifest(path)["splits"]
    print(f"{path}  ({', '.join(f'{k} {v}' for k, v in splits.items())} scenes; {time.perf_counter() - t0:.2f} s)")


if __name__ == "__main__":
    main()
