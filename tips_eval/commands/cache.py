"""``tips-eval cache ls|rm|verify``: inspect and clean the feature cache."""

from __future__ import annotations

import argparse
import json

_DIR_HELP = "feature cache directory (default: $TIPS_EVAL_HOME/features, i.e. ~/.cache/tips_eval/features)"


def register(sub) -> None:
    p = sub.add_parser(
        "cache", help="list, remove or verify cached features",
        description="Every (model, dataset, split, transform, feature spec, precision) extraction is cached "
                    "once on disk as memory-mapped .npy arrays plus a manifest with per-shard checksums. "
                    "An entry is complete once its manifest is sealed; unfinished entries resume on the next run.",
        epilog="examples:\n  tips-eval cache ls\n  tips-eval cache verify\n"
               "  tips-eval cache rm --incomplete\n  tips-eval cache rm dinov2-s14-imagenet-val-3f2a",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="cache_command", metavar="<ls|rm|verify>")

    ls = verbs.add_parser("ls", help="list entries (key, model, dataset, split, items, size, complete?)",
                          description="List the entries of the feature cache, largest last.")
    ls.add_argument("--dir", help=_DIR_HELP)
    ls.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format")
    ls.set_defaults(func=run_ls)

    rm = verbs.add_parser("rm", help="remove entries", description="Remove cache entries by key (or key prefix), "
                          "or all / all unfinished / all of one model or dataset. Entries being written are kept.")
    rm.add_argument("keys", nargs="*", help="entry keys or unique key prefixes (see `tips-eval cache ls`)")
    rm.add_argument("--all", action="store_true", help="remove every entry")
    rm.add_argument("--incomplete", action="store_true", help="remove unfinished entries only")
    rm.add_argument("--model", help="remove the entries of this model name")
    rm.add_argument("--dataset", help="remove the entries of this dataset name")
    rm.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    rm.add_argument("--dir", help=_DIR_HELP)
    rm.set_defaults(func=run_rm)

    ver = verbs.add_parser("verify", help="re-hash every shard of entries against their manifests",
                           description="Recompute every shard checksum of each entry (or the given ones). "
                                       "Exits 1 if any complete-looking entry fails; a failing entry is "
                                       "repaired by the next extraction that needs it.")
    ver.add_argument("keys", nargs="*", help="entry keys or prefixes (default: all)")
    ver.add_argument("--dir", help=_DIR_HELP)
    ver.set_defaults(func=run_verify)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run_ls(args) -> int:
    from tips_eval.features import CacheIndex

    index = CacheIndex(args.dir)
    rows = sorted((e.to_row() for e in index.entries()), key=lambda r: r["size_bytes"])
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    import pandas as pd

    cols = ["key", "model", "dataset", "split", "n", "size_bytes", "complete", "shards_done", "shards_total"]
    df = pd.DataFrame(rows, columns=cols)
    if args.format == "csv":
        print(df.to_csv(index=False), end="")
        return 0
    if df.empty:
        print(f"no cached features in {index.root}")
        return 0
    df["size"] = df.pop("size_bytes").map(_human)
    df["complete"] = [("yes" if c else f"no ({d}/{t} shards)") for c, d, t in
                      zip(df["complete"], df.pop("shards_done"), df.pop("shards_total"))]
    print(df.to_string(index=False))
    print(f"{len(df)} entries, {_human(sum(r['size_bytes'] for r in rows))} in {index.root}")
    return 0


def run_rm(args) -> int:
    from tips_eval.errors import TipsEvalError
    from tips_eval.features import CacheIndex

    index = CacheIndex(args.dir)
    chosen = {index.find(k).name for k in args.keys}
    if args.all or args.incomplete or args.model or args.dataset:
        for e in index.entries():
            if ((args.all or (args.incomplete and not e.complete)) or (args.model and e.model == args.model)
                    or (args.dataset and e.dataset == args.dataset)):
                chosen.add(e.key)
    elif not chosen:
        raise TipsEvalError("nothing to remove: give entry keys, or --all / --incomplete / --model / --dataset",
                            hint="see `tips-eval cache ls` for the keys")
    freed = 0
    for key in sorted(chosen):
        if args.dry_run:
            print(f"would remove {key}")
            continue
        freed += index.remove(key)
        print(f"removed {key}")
    if not args.dry_run:
        print(f"{len(chosen)} entries removed, {_human(freed)} freed")
    return 0


def run_verify(args) -> int:
    from tips_eval.features import CacheIndex

    index = CacheIndex(args.dir)
    results = {}
    for key in args.keys or [None]:
        results.update(index.verify(key))
    if not results:
        print(f"no cached features in {index.root}")
    for key, status in results.items():
        print(f"{status:>10}  {key}" if status in ("ok", "incomplete") else f"FAILED  {key}: {status}")
    return 1 if any(s.startswith("invalid") for s in results.values()) else 0
