"""The papers' reported numbers (``results/paper/*.csv``, copied from ../shared/paper).

Reference values for tables only: never used in any computation. Each row keeps
its ``source_table`` column (exact TIPS v1 Tables 2-3, or a secondary
transcription marked UNCONFIRMED), shown beside the value it came from.
"""

from __future__ import annotations

import functools
from pathlib import Path

#: priority of the CSV files when several report the same (model, dataset, task)
_PRIORITY = ("tips_v1_table2_image_only", "tips_v1_table3_image_text", "tips_v2_table7_image_only",
             "tips_v2_table6_image_text", "tips_v2_table5_zeroshot_seg", "tips_v2_table8_vs_dinov3",
             "tips_v1_readme_released_models", "tips_v2_readme_released_models",
             "tips_v2_tables1to4_analysis_ablation", "tips_v1_table1_ablation_partial_secondary")


def paper_dir() -> Path:
    """Where the reference CSVs live (the repo's results/paper, or the installed copy)."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "results" / "paper", here / "paper_results"):
        if any(cand.glob("*.csv")):
            return cand
    try:
        from importlib import resources

        cand = Path(str(resources.files("tips_eval.paper_results")))
        if any(cand.glob("*.csv")):
            return cand
    except (ModuleNotFoundError, TypeError):
        pass
    return here.parent / "results" / "paper"


@functools.lru_cache(maxsize=4)
def load_paper_table(directory: str | None = None):
    """All reference rows as one DataFrame (columns of the CSVs + ``file`` + ``priority``)."""
    import pandas as pd

    d = Path(directory) if directory else paper_dir()
    frames = []
    for p in sorted(d.glob("*.csv")):
        df = pd.read_csv(p)
        df["file"] = p.stem
        df["priority"] = _PRIORITY.index(p.stem) if p.stem in _PRIORITY else len(_PRIORITY)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["model", "dataset", "task", "metric", "value", "higher_is_better",
                                     "source_table", "file", "priority"])
    out = pd.concat(frames, ignore_index=True)
    out["dataset_key"] = out["dataset"].map(_dataset_key)
    return out.sort_values("priority", kind="stable").reset_index(drop=True)


def _dataset_key(name: str) -> str:
    """'COCO (5k test, Karpathy ...)' -> 'coco'; 'UnED (8 domains)' -> 'uned'."""
    return str(name).split(" (")[0].strip().lower()


def lookup(paper_names, paper_dataset: str, paper_task: str, table=None) -> dict | None:
    """The highest-priority reference row for one of ``paper_names`` (or None)."""
    df = load_paper_table() if table is None else table
    if not paper_names or not paper_dataset:
        return None
    key = _dataset_key(paper_dataset)
    hit = df[df["model"].isin(list(paper_names)) & (df["dataset_key"] == key) & (df["task"] == paper_task)]
    if hit.empty:
        return None
    row = hit.iloc[0]
    return {"value": float(row["value"]), "model": row["model"], "source": row["source_table"],
            "metric": row["metric"], "file": row["file"]}


def rows_for(paper_dataset: str, paper_task: str, files: tuple[str, ...] | None = None):
    """Every reference row for one table column (for the paper's own rows in our tables)."""
    df = load_paper_table()
    sel = (df["dataset_key"] == _dataset_key(paper_dataset)) & (df["task"] == paper_task)
    if files:
        sel &= df["file"].isin(files)
    return df[sel]
