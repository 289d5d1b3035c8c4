"""``tips-eval run``: evaluate models on a suite; one record per (model, task, dataset, protocol)."""

from __future__ import annotations

import json


def add_compute_args(p) -> None:
    """Options shared by the commands that compute features (run, demo)."""
    g = p.add_argument_group("compute")
    g.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--devices", type=int, default=1, help="processes/GPUs per node for feature extraction (Lightning DDP)")
    g.add_argument("--num-nodes", type=int, default=1, help="nodes for feature extraction (Lightning DDP; torchrun/SLURM)")
    g.add_argument("--strategy", help="Lightning strategy (default: ddp when devices*nodes > 1)")
    g.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    g.add_argument("--num-workers", type=int, help="data-loading workers (default: by machine)")
    g.add_argument("--precision", default="auto", choices=["auto", "32", "bf16", "16"],
                   help="autocast precision for extraction (auto = bf16/fp16 on GPU, fp32 on CPU)")
    g.add_argument("--cache-dir", help="feature cache (default $TIPS_EVAL_HOME/features)")
    g.add_argument("--seed", type=int, default=0, help="seed for probes and splits (default 0)")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="count and record undecodable images instead of failing on the first")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def context_from_args(args):
    from tips_eval.task_api import RunContext

    return RunContext(cache_dir=args.cache_dir, device=args.device, devices=args.devices, num_nodes=args.num_nodes,
                      strategy=args.strategy, batch_size=args.batch_size, num_workers=args.num_workers,
                      precision=args.precision, seed=args.seed, skip_bad_images=args.skip_bad_images,
                      progress=not args.no_progress, quick=getattr(args, "quick", False))


def register(sub) -> None:
    p = sub.add_parser(
        "run", help="evaluate models on a suite (paper, paper-v2, demo, or a YAML file)",
        description="Evaluate one or more models on every entry of a suite. Each (model, task, dataset, "
                    "protocol) writes one JSON record under --results; a rerun skips finished records "
                    "(--force redoes them). Missing datasets are reported and skipped; image-only models "
                    "skip text tasks with a recorded reason.",
        epilog="example: tips-eval run --model tips-v2-b14 --model dinov2-b14 --suite paper --data-root /data")
    p.add_argument("--model", "-m", action="append", metavar="NAME|PATH",
                   help="zoo name (see `tips-eval models`) or a TIPS *_vision.npz (its *_text.npz and "
                        "tokenizer.model beside it are found); repeat for several models")
    p.add_argument("--suite", default="paper", help="suite name or YAML file (default: paper)")
    p.add_argument("--data-root", help="folder holding the datasets in their canonical layouts")
    p.add_argument("--data", action="append", default=[], metavar="ID=PATH",
                   help="root of one suite entry or reader, overriding --data-root (repeatable)")
    p.add_argument("--tasks", help="comma-separated task names to run (default: all)")
    p.add_argument("--entries", help="comma-separated suite entry ids to run (default: all)")
    p.add_argument("--results", default="results/runs", help="results store (default: results/runs)")
    p.add_argument("--force", action="store_true", help="recompute records that already exist")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="override a protocol parameter for every task that has it, e.g. token=cls2 (JSON values)")
    p.add_argument("--quick", action="store_true", help="shortened probe schedules for smoke runs (recorded)")
    p.add_argument("--list", action="store_true", help="list the suite's entries and exit")
    m = p.add_argument_group("checkpoint models")
    m.add_argument("--random-weights", action="store_true", help="zoo models with random weights (no download)")
    m.add_argument("--text-checkpoint", help="text .npz for a checkpoint-path model")
    m.add_argument("--tokenizer", help="tokenizer.model for a checkpoint-path model")
    m.add_argument("--num-heads", type=int, help="image heads for an unseen TIPS width")
    m.add_argument("--text-num-heads", type=int, help="text heads for an unseen TIPS width")
    m.add_argument("--image-size", type=int, help="input resolution of a checkpoint-path model")
    add_compute_args(p)
    p.set_defaults(func=run)


def parse_kv(items, what: str) -> dict:
    from tips_eval.errors import TipsEvalError

    out = {}
    for item in items:
        if "=" not in item:
            raise TipsEvalError(f"{what} {item!r} is not KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def run(args) -> int:
    from tips_eval.runner import ModelRef, is_checkpoint_path, run_suite
    from tips_eval.suites import get_suite

    entries = get_suite(args.suite)
    if not args.list and not args.model:
        from tips_eval.errors import TipsEvalError

        raise TipsEvalError("no --model given", hint="e.g. --model tips-v2-b14 (see `tips-eval models`)")
    if args.list:
        for e in entries:
            print(f"{e.id:22s} {e.task:26s} {e.dataset:20s} {e.reader}:{e.root} {e.splits}")
        return 0
    kw = dict(text_checkpoint=args.text_checkpoint, tokenizer=args.tokenizer, num_heads=args.num_heads,
              text_num_heads=args.text_num_heads, image_size=args.image_size)
    models = [ModelRef.parse(name, **kw) if is_checkpoint_path(name) else
              ModelRef.parse(name, pretrained=False if args.random_weights else None, image_size=args.image_size)
              for name in args.model]
    events = []

    def on_event(kind, info):
        events.append((kind, info))
        if kind in ("missing", "skipped"):
            print(f"[{kind}] {info['model']} / {info['entry']}: {info['reason']}")
        elif kind == "done":
            print(f"[done] {info['model']} / {info['entry']}: {info['headline']} = {info['value']:.4g}")


    records = run_suite(models, entries, args.data_root, results_dir=args.results,
                        tasks=args.tasks.split(",") if args.tasks else None,
                        entries=args.entries.split(",") if args.entries else None, force=args.force,
                        data_overrides=parse_kv(args.data, "--data"), ctx=context_from_args(args),
                        params=parse_kv(args.param, "--param"), on_event=on_event)
    cached = sum(1 for k, _ in events if k == "cached")
    missing = sorted({i["entry"] for k, i in events if k == "missing"})
    print(f"{len(records)} records in {args.results} ({cached} reused); "
          f"missing datasets: {', '.join(missing) if missing else 'none'}")
    print(f"tables: tips-eval table --results {args.results}")
    return 0
