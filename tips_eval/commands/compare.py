"""``tips-eval compare A B``: per-dataset differences between two models' records."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("compare", help="per-dataset differences between two models",
                       description="Compare two models' records metric by metric (B - A), with which one is "
                                   "better given each metric's direction and whether the protocols match.")
    p.add_argument("a", help="model A (name as in the records)")
    p.add_argument("b", help="model B")
    p.add_argument("--results", default="results/runs", help="results store (default: results/runs)")
    p.add_argument("--all-metrics", action="store_true", help="every metric, not only the table columns")
    p.add_argument("--csv", help="also write the comparison to this CSV file")
    p.set_defaults(func=run)


def run(args) -> int:
    from tips_eval.errors import TipsEvalError
    from tips_eval.records import ResultStore
    from tips_eval.tables import compare

    records = ResultStore(Path(args.results)).load_all()
    models = {r["model"] for r in records}
    for m in (args.a, args.b):
        if m not in models:
            raise TipsEvalError(f"no records for model {m!r} in {args.results}",
                                hint=f"models with records: {', '.join(sorted(models)) or 'none'}")
    df = compare(records, args.a, args.b)
    if not args.all_metrics and not df.empty:
        cols = {(r["suite_entry"], c["metric"]) for r in records for c in r.get("columns", [])}
        df = df[[(e, m) in cols for e, m in zip(df["entry"], df["metric"])]]
    if df.empty:
        raise TipsEvalError(f"{args.a} and {args.b} have no evaluation in common")
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print(df.to_string(index=False))
    if args.csv:
        df.to_csv(args.csv, index=False)
    return 0
