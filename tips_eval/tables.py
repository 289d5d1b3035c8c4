"""Result tables from records, in the paper's layouts (Table 2 image-only, Table 3
image-text, TIPSv2 Table 5 zero-shot segmentation): models as rows, datasets as
columns with direction arrows, the best measured value in bold, and the
paper's reference value and the delta beside each measured one. Markdown, CSV
and LaTeX; pandas underneath.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from . import paper

#: which paper CSVs provide the reference rows of each table
PAPER_FILES = {
    "image-only": ("tips_v1_table2_image_only", "tips_v2_table7_image_only"),
    "image-text": ("tips_v1_table3_image_text", "tips_v2_table6_image_text"),
    "zeroshot-seg": ("tips_v2_table5_zeroshot_seg",),
}
TITLES = {"image-only": "Image-only tasks (TIPS Table 2 layout)",
          "image-text": "Image-text tasks (TIPS Table 3 layout)",
          "zeroshot-seg": "Zero-shot segmentation (TIPSv2 Table 5 layout)",
          "demo": "Synthetic demo benchmark (all 8 tasks)"}


@dataclass
class ResultTable:
    kind: str
    columns: list[dict]  # Column dicts in order
    rows: list[dict] = field(default_factory=list)  # {"label", "kind": measured|paper, "cells": {col: cell}}
    sources: dict[str, str] = field(default_factory=dict)  # footnote mark -> source text

    @property
    def title(self) -> str:
        return TITLES.get(self.kind, self.kind)


def _paper_names(model: str) -> tuple[str, ...]:
    try:
        from .model_zoo import get_card

        return get_card(model).paper_names
    except Exception:  # a checkpoint path or an unknown name: no reference
        return ()


def build_table(records: list[dict], kind: str, paper_rows: bool = True) -> ResultTable:
    recs = [r for r in records if r.get("table") == kind]
    columns: dict[str, dict] = {}
    for r in recs:
        for c in r.get("columns", []):
            columns.setdefault(c["label"], c)
    table = ResultTable(kind, list(columns.values()))
    marks: dict[str, str] = {}

    def mark(source: str) -> str:
        if source not in marks:
            marks[source] = chr(ord("a") + len(marks)) if len(marks) < 26 else str(len(marks))
        return marks[source]

    for model in dict.fromkeys(r["model"] for r in recs):
        cells = {}
        for r in (x for x in recs if x["model"] == model):
            for c in r.get("columns", []):
                if r["status"] == "skipped":
                    cells[c["label"]] = {"value": None, "note": r.get("reason", "skipped")}
                    continue
                v = r["metrics"].get(c["metric"])
                if v is None:
                    continue
                cell = {"value": float(v) * c.get("scale", 1.0), "quick": r.get("quick", False)}
                ref = paper.lookup(_paper_names(model), c["paper_dataset"], c["paper_task"])
                if ref is not None:
                    cell.update(paper=ref["value"], delta=cell["value"] - ref["value"], mark=mark(ref["source"]))
                cells[c["label"]] = cell
        table.rows.append({"label": model, "kind": "measured", "cells": cells})
    if paper_rows and kind in PAPER_FILES and table.columns:
        by_model: dict[str, dict] = {}
        for c in table.columns:
            for _, row in paper.rows_for(c["paper_dataset"], c["paper_task"], PAPER_FILES[kind]).iterrows():
                cells = by_model.setdefault(row["model"], {})
                if c["label"] not in cells:
                    cells[c["label"]] = {"value": float(row["value"]), "mark": mark(row["source_table"])}
        for model, cells in by_model.items():
            table.rows.append({"label": f"{model} (paper)", "kind": "paper", "cells": cells})
    table.sources = {m: s for s, m in marks.items()}
    _mark_best(table)
    return table


def _mark_best(table: ResultTable) -> None:
    for c in table.columns:
        vals = [(r["cells"][c["label"]]["value"], r) for r in table.rows
                if r["kind"] == "measured" and c["label"] in r["cells"] and r["cells"][c["label"]]["value"] is not None]
        if not vals:
            continue
        best = max(v for v, _ in vals) if c["higher_is_better"] else min(v for v, _ in vals)
        for v, r in vals:
            r["cells"][c["label"]]["best"] = math.isclose(v, best, rel_tol=1e-9, abs_tol=1e-12)


#: metrics shown with 3 decimals (metres, ratios); everything else is a percentage or degrees
_FINE = ("rmse", "abs_rel", "log10", "sq_rel")


def fmt(v: float | None, metric: str = "") -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if metric.split("/")[-1] in _FINE else f"{v:.1f}"


def _header(c: dict) -> str:
    return f"{c['label']} {'↑' if c['higher_is_better'] else '↓'}"


def _cell_text(cell: dict | None, bold, sup, metric: str = "") -> str:
    if cell is None:
        return ""
    if cell["value"] is None:
        return "-"
    text = fmt(cell["value"], metric)
    if cell.get("best"):
        text = bold(text)
    if "paper" in cell:
        sign = "+" if cell["delta"] >= 0 else "−"
        text += f" ({fmt(cell['paper'], metric)}{sup(cell['mark'])}, {sign}{fmt(abs(cell['delta']), metric)})"
    elif "mark" in cell:
        text += sup(cell["mark"])
    return text


def to_markdown(table: ResultTable) -> str:
    bold = lambda s: f"**{s}**"  # noqa: E731
    sup = lambda m: f"<sup>{m}</sup>"  # noqa: E731
    head = ["model"] + [_header(c) for c in table.columns]
    lines = [f"### {table.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.rows:
        label = r["label"] if r["kind"] == "measured" else f"*{r['label']}*"
        lines.append("| " + " | ".join([label] + [_cell_text(r["cells"].get(c["label"]), bold, sup, c["metric"])
                                                 for c in table.columns]) + " |")
    lines.append("")
    has_ref = any("paper" in c for r in table.rows for c in r["cells"].values() if isinstance(c, dict))
    has_paper_rows = any(r["kind"] == "paper" for r in table.rows)
    lines.append("Measured values: best in bold." + (" In brackets: the paper's value for the same checkpoint and "
                 "the difference (measured − paper)." if has_ref else "") +
                 (" Rows in italics are the papers' own numbers." if has_paper_rows else ""))
    if any(c.get("quick") for r in table.rows for c in r["cells"].values() if isinstance(c, dict)):
        lines.append("Some values come from quick (shortened) protocols; see each record's `quick` field.")
    for m, s in table.sources.items():
        lines.append(f"<sup>{m}</sup> {s}  ")
    return "\n".join(lines) + "\n"


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "−": "-",
          "→": r"$\rightarrow$", "↑": r"$\uparrow$", "↓": r"$\downarrow$"}


def _latex_escape(s: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(s))


def to_latex(table: ResultTable) -> str:
    bold = lambda s: rf"\textbf{{{s}}}"  # noqa: E731
    sup = lambda m: rf"\textsuperscript{{{m}}}"  # noqa: E731
    head = ["Model"] + [_latex_escape(c["label"]) + (r" $\uparrow$" if c["higher_is_better"] else r" $\downarrow$")
                        for c in table.columns]
    out = [r"\begin{tabular}{l" + "c" * len(table.columns) + "}", r"\toprule", " & ".join(head) + r" \\",
           r"\midrule"]
    for r in table.rows:
        label = _latex_escape(r["label"]) if r["kind"] == "measured" else rf"\textit{{{_latex_escape(r['label'])}}}"
        cells = [_cell_text(r["cells"].get(c["label"]), bold, sup, c["metric"]).replace("−", "-")
                 for c in table.columns]
        out.append(" & ".join([label] + cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    notes = [rf"\textsuperscript{{{m}}} {_latex_escape(s)}" for m, s in table.sources.items()]
    return "\n".join(out + ([""] + notes if notes else [])) + "\n"


def to_frame(table: ResultTable) -> pd.DataFrame:
    """Wide numeric frame (CSV): per column the value, the paper value and the delta."""
    rows = []
    for r in table.rows:
        row = {"model": r["label"], "row": r["kind"]}
        for c in table.columns:
            cell = r["cells"].get(c["label"]) or {}
            row[_header(c)] = cell.get("value")
            if r["kind"] == "measured":
                row[f"{c['label']} (paper)"] = cell.get("paper")
                row[f"{c['label']} (delta)"] = cell.get("delta")
        rows.append(row)
    return pd.DataFrame(rows)


def compare(records: list[dict], a: str, b: str) -> pd.DataFrame:
    """Per-dataset differences B − A for every metric both models have (same suite entry)."""
    def index(model):
        return {(r["suite_entry"], m): (v, r) for r in records if r["model"] == model and r["status"] == "done"
                for m, v in r["metrics"].items() if isinstance(v, (int, float))}

    ia, ib = index(a), index(b)
    rows = []
    for key in sorted(set(ia) & set(ib)):
        (va, ra), (vb, rb) = ia[key], ib[key]
        higher = next((c["higher_is_better"] for c in ra.get("columns", []) if c["metric"] == key[1]), None)
        delta = vb - va
        better = None if higher is None or delta == 0 else (b if (delta > 0) == higher else a)
        rows.append({"entry": key[0], "dataset": ra["dataset"], "metric": key[1], a: va, b: vb, "delta (B-A)": delta,
                     "better": better, "same protocol": ra["protocol"]["digest"] == rb["protocol"]["digest"]})
    return pd.DataFrame(rows)
