"""``tips-eval table``: the paper's table layouts from result records."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "table", help="build result tables (Markdown, CSV, LaTeX) with the paper's numbers beside yours",
        description="Build the TIPS paper's Table 2 (image-only) and Table 3 (image-text) layouts, and "
                    "TIPSv2's Table 5 (zero-shot segmentation), from the records in --results: models as "
                    "rows, datasets as columns with direction arrows, best in bold, the paper's reference "
                    "value and the delta beside each measured one.")
    p.add_argument("--results", default="results/runs", help="results store (default: results/runs)")
    p.add_argument("--kind", default="all", choices=["all", "image-only", "image-text", "zeroshot-seg", "demo"],
                   help="which table (default: every table that has records)")
    p.add_argument("--out", help="write <kind>.md/.csv/.tex into this folder")
    p.add_argument("--format", default="md,csv,tex", help="formats to write with --out (default md,csv,tex)")
    p.add_argument("--models", help="comma-separated models to include (default: all)")
    p.add_argument("--no-paper-rows", action="store_true", help="leave out the papers' own rows")
    p.set_defaults(func=run)


def write_tables(records, out: str | None, kinds=("all",), formats=("md", "csv", "tex"), paper_rows=True) -> list:
    from tips_eval import tables

    present = [k for k in dict.fromkeys(r.get("table") for r in records) if k]
    wanted = present if "all" in kinds else [k for k in kinds if k in present]
    built = []
    for kind in wanted:
        t = tables.build_table(records, kind, paper_rows=paper_rows)
        built.append(t)
        if out:
            d = Path(out)
            d.mkdir(parents=True, exist_ok=True)
            if "md" in formats:
                (d / f"{kind}.md").write_text(tables.to_markdown(t))
            if "csv" in formats:
                tables.to_frame(t).to_csv(d / f"{kind}.csv", index=False)
            if "tex" in formats:
                (d / f"{kind}.tex").write_text(tables.to_latex(t))
    return built


def run(args) -> int:
    from tips_eval import tables
    from tips_eval.errors import TipsEvalError
    from tips_eval.records import ResultStore

    store = ResultStore(Path(args.results))
    records = store.load_all()
    if args.models:
        keep = set(args.models.split(","))
        records = [r for r in records if r["model"] in keep]
    for msg in store.invalid:
        print(f"warning: {msg}")
    if not records:
        raise TipsEvalError(f"no result records in {args.results}", hint="run `tips-eval run ...` or `tips-eval demo` first")
    built = write_tables(records, args.out, [args.kind], args.format.split(","), not args.no_paper_rows)
    for t in built:
        print(tables.to_markdown(t))
    if args.out:
        print(f"wrote {len(built)} table(s) to {args.out}")
    return 0
