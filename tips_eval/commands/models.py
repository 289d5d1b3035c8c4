"""``tips-eval models``: list the zoo."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("models", help="list the model zoo",
                       description="List every zoo entry with its resolution, patch size, width, "
                                   "whether it has a text tower, and where its weights come from.")
    p.add_argument("--family", choices=["tips", "timm", "open_clip", "pixels"], help="only this family")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format")
    p.set_defaults(func=run)


def run(args) -> int:
    import pandas as pd

    from tips_eval.model_zoo import get_card, list_models

    rows = [get_card(n).to_row() for n in list_models(args.family)]
    df = pd.DataFrame(rows)[["name", "family", "image_size", "patch_size", "embed_dim", "has_text",
                             "description", "weights"]]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    elif args.format == "csv":
        print(df.to_csv(index=False), end="")
    else:
        df["has_text"] = df["has_text"].map({True: "yes", False: "no"})
        with pd.option_context("display.max_colwidth", 90, "display.width", 250):
            print(df.rename(columns={"image_size": "res", "patch_size": "patch", "embed_dim": "dim",
                                     "has_text": "text"}).to_string(index=False))
    return 0
