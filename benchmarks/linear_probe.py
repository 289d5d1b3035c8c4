"""Linear-probe sweep speed: all heads in one pass vs one head, and vs an sklearn C sweep.

    python benchmarks/linear_probe.py [--train 20000 --val 5000 --dim 384 --classes 200 --epochs 10]

Synthetic Gaussian class means (unit-variance noise), so accuracy is neither
trivial nor chance. Contenders, timed side by side in one run:

1. ``LinearProbeSweep``: 13 lrs x 3 wds = 39 heads, one pass over the data
   per epoch (refit off, so the selected sweep head is what is compared);
2. the same sweep with a single head (the chosen lr/wd) for the same epochs;
3. sklearn ``LogisticRegression`` (lbfgs, multinomial) over 39 values of C
   from 10^linspace(-6, 5) (the range of DINOv2's ``log_regression.py``),
   fitted in increasing C with ``warm_start`` (a regularisation path, the
   fastest way sklearn offers), C picked on the same held-out split
   (``--sklearn-cold`` also times every C fitted from scratch).

Goals: the sweep <= 2x one head; >= 10x faster than sklearn at equal top-1
(+-0.5). Both are printed as measured, whatever they are.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from tips_eval.decoders.linear_sweep import LinearProbeSweep, stratified_split


def synthetic(n, dim, classes, spread, seed):
    means = np.random.default_rng(1234).normal(size=(classes, dim)) * spread
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    return (means[y] + rng.normal(size=(n, dim))).astype(np.float32), y


def sklearn_sweep(x, y, xv, yv, n_configs, seed, warm_start=True):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    fit_idx, held_idx = stratified_split(y, 0.1, seed)
    clf = LogisticRegression(max_iter=100, warm_start=warm_start)
    best = (-1.0, None, None)
    for c in np.logspace(-6, 5, n_configs):
        clf.set_params(C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x[fit_idx], y[fit_idx])
        held = 100 * clf.score(x[held_idx], y[held_idx])
        if held > best[0]:
            best = (held, c, 100 * clf.score(xv, yv))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=20_000)
    ap.add_argument("--val", type=int, default=5_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--classes", type=int, default=200)
    ap.add_argument("--spread", type=float, default=0.2)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--sklearn-cold", action="store_true", help="also time sklearn fitting every C from scratch (slow)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of the sweep and the one head (sklearn runs once)")
    args = ap.parse_args()
    x, y = synthetic(args.train, args.dim, args.classes, args.spread, 0)
    xv, yv = synthetic(args.val, args.dim, args.classes, args.spread, 1)
    print(f"train {args.train} x {args.dim}, val {args.val}, {args.classes} classes, {args.epochs} epochs, "
          f"batch {args.batch}, torch threads {torch.get_num_threads()}")

    sweep = LinearProbeSweep(args.dim, args.classes, epochs=args.epochs, batch_size=args.batch, refit=False)
    best = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
        return out

    for r in range(args.repeats):  # interleaved; the fastest run of each counts (the machine may be shared)
        res = timed("sweep", lambda: sweep.fit(x, y, xv, yv))
        one = LinearProbeSweep(args.dim, args.classes, lrs=(res["best_base_lr"],), wds=(res["best_wd"],),
                               epochs=args.epochs, batch_size=args.batch, refit=False)
        res_one = timed("one", lambda one=one: one.fit(x, y, xv, yv))
        if r == 0:
            n_cfg = len(res["heads"])
            _, sk_c, sk_val = timed("sklearn", lambda n_cfg=n_cfg: sklearn_sweep(x, y, xv, yv, n_cfg, 0))
            if args.sklearn_cold:
                cold = timed("sklearn_cold", lambda n_cfg=n_cfg: sklearn_sweep(x, y, xv, yv, n_cfg, 0, warm_start=False))
    t_sweep, t_one, t_sk = best["sweep"], best["one"], best["sklearn"]
    n_heads = len(res["heads"])

    print(f"\n{'contender':48s} {'time s':>8s} {'val top-1':>10s}")
    print(f"{'sweep, ' + str(n_heads) + ' heads in one pass':48s} {t_sweep:8.2f} {res['sweep_head_val_top1']:10.2f}"
          f"   (best lr {res['best_lr']:g}, wd {res['best_wd']:g})")
    print(f"{'one head (same lr/wd, same epochs)':48s} {t_one:8.2f} {res_one['sweep_head_val_top1']:10.2f}")
    print(f"{'sklearn LogisticRegression, ' + str(n_heads) + ' C values':48s} {t_sk:8.2f} {sk_val:10.2f}   (best C {sk_c:.3g})")
    if args.sklearn_cold:
        print(f"{'sklearn, same ' + str(n_heads) + ' C values, each from scratch':48s} {best['sklearn_cold']:8.2f} {cold[2]:10.2f}"
              f"   (best C {cold[1]:.3g}; sklearn_cold / sweep: {best['sklearn_cold'] / t_sweep:.2f}x)")
    print(f"\nsweep / one head: {t_sweep / t_one:.2f}x  (goal <= 2x; {n_heads} heads trained one after another "
          f"would take ~{n_heads:d}x one head = {n_heads * t_one:.1f} s, i.e. the one-pass sweep is "
          f"{n_heads * t_one / t_sweep:.1f}x faster than that)")
    print(f"sklearn / sweep: {t_sk / t_sweep:.2f}x  (goal >= 10x)")
    print(f"top-1 difference sweep - sklearn: {res['sweep_head_val_top1'] - sk_val:+.2f} points (goal within +-0.5)")


if __name__ == "__main__":
    main()
