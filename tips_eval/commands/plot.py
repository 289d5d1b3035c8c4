"""``tips-eval plot``: PCA of patch features, dense predictions, a run vs baselines."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("plot", help="PCA of patch features, dense predictions vs ground truth, run vs baselines",
                       description="Write PNG plots. `pca`: the first 3 principal components of patch features "
                                   "as RGB (the paper's qualitative figure), one column per model. `dense`: "
                                   "predictions next to ground truth, from the dense tasks' saved predictions. "
                                   "`compare`: bars per table column and a radar chart of a run vs baselines.")
    kinds = p.add_subparsers(dest="plot_kind", metavar="<kind>", required=True)
    pca = kinds.add_parser("pca", help="PCA of patch features as RGB")
    pca.add_argument("--model", "-m", action="append", required=True, help="zoo name or TIPS *_vision.npz (repeat)")
    src = pca.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs="+", help="image files")
    src.add_argument("--dataset", help="a dataset reader name (with --root and --split), e.g. voc2012")
    pca.add_argument("--root", help="dataset root for --dataset")
    pca.add_argument("--split", default="val", help="dataset split for --dataset (default val)")
    pca.add_argument("--n", type=int, default=4, help="images taken from --dataset (default 4)")
    pca.add_argument("--image-size", type=int, help="input resolution (default: each model's own)")
    pca.add_argument("--random-weights", action="store_true", help="zoo models with random weights")
    pca.add_argument("--out", default="pca.png", help="output PNG (default pca.png)")
    dense = kinds.add_parser("dense", help="dense predictions vs ground truth from a results store")
    dense.add_argument("--results", default="results/runs", help="results store (default results/runs)")
    dense.add_argument("--out", default="plots", help="output folder (default plots)")
    cmp_ = kinds.add_parser("compare", help="bars + radar chart of models over the table columns")
    cmp_.add_argument("--results", default="results/runs", help="results store (default results/runs)")
    cmp_.add_argument("--models", help="comma-separated models (default: all)")
    cmp_.add_argument("--kind", help="only this table (image-only, image-text, zeroshot-seg, demo)")
    cmp_.add_argument("--out", default="compare.png", help="output PNG (default compare.png)")
    p.set_defaults(func=run)


def run(args) -> int:
    return {"pca": _pca, "dense": _dense, "compare": _compare}[args.plot_kind](args)


def _pca(args) -> int:
    import torch

    from tips_eval import plots
    from tips_eval.data import load_rgb, open_dataset
    from tips_eval.runner import ModelRef

    if args.images:
        images = [load_rgb(p) for p in args.images]
    else:
        if not args.root:
            from tips_eval.errors import TipsEvalError

            raise TipsEvalError("--dataset needs --root")
        ds = open_dataset(args.dataset, args.root, args.split)
        images = [ds.load_image(i) for i in range(min(args.n, len(ds)))]
    feats, shown = {}, None
    for name in args.model:
        ref = ModelRef.parse(name, **({"pretrained": False} if args.random_weights and not name.endswith(".npz") else {}))
        enc = ref.load()
        pre = enc.preprocess if not args.image_size else enc.preprocess.replace(image_size=(args.image_size,) * 2)
        x = torch.stack([pre(im) for im in images])
        feats[enc.name] = enc.encode_image(x).patch_tokens.float().cpu().numpy()
        shown = shown or [im.resize(pre.image_size[::-1]) for im in images]
    path = plots.pca_figure(shown, feats, args.out)
    print(f"wrote {path}")
    return 0


def _dense(args) -> int:
    from tips_eval import plots
    from tips_eval.records import ResultStore

    n = 0
    for r in ResultStore(Path(args.results)).load_all():
        npz = (r.get("artifacts") or {}).get("predictions")
        if npz and Path(npz).is_file():
            out = Path(args.out) / f"{r['model']}__{r['suite_entry']}.png"
            plots.dense_figure_from_npz(npz, out, title=f"{r['model']} / {r['dataset']} ({r['task']})")
            n += 1
    print(f"wrote {n} figure(s) to {args.out}")
    return 0


def _compare(args) -> int:
    from tips_eval import plots
    from tips_eval.errors import TipsEvalError
    from tips_eval.records import ResultStore

    records = ResultStore(Path(args.results)).load_all()
    if args.models:
        keep = set(args.models.split(","))
        records = [r for r in records if r["model"] in keep]
    if args.kind:
        records = [r for r in records if r.get("table") == args.kind]
    if not records:
        raise TipsEvalError(f"no records to plot in {args.results}")
    path = plots.comparison_figure(records, args.out)
    print(f"wrote {path}")
    return 0
