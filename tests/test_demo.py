"""The README's main command, `tips-eval demo`, end to end on a fresh output folder:
all 8 tasks in the tables, plots written, a rerun reuses everything; and the
suite measures something: the pretrained encoder beats raw pixels and random
weights on the dense tasks and kNN, and a DPT trained on depth beats predicting
the mean depth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tips_eval.cli import main

N_SCENES = 150
PRETRAINED, BASELINES = "imgfocus-vits14", ("raw-pixels", "tips-v2-b14:random")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--n-scenes", str(N_SCENES), "--no-progress"]) == 0
    return out


def records(out: Path) -> dict[tuple[str, str], dict]:
    recs = [json.loads(p.read_text()) for p in (out / "results").rglob("*.json")]
    return {(r["model"], r["suite_entry"]): r for r in recs}


@pytest.mark.slow
def test_demo_writes_all_8_tasks_tables_and_plots(demo):
    md = (demo / "tables" / "demo.md").read_text()
    for column in ("Seg mIoU", "Depth RMSE", "Normals RMSE", "Instance R@1", "kNN top-1", "Linear top-1",
                   "I->T R@1", "T->I R@1", "0-shot top-1"):
        assert column in md
    for fmt in ("csv", "tex"):
        assert (demo / "tables" / f"demo.{fmt}").stat().st_size > 0
    pngs = sorted(p.name for p in (demo / "plots").glob("*.png"))
    assert "demo_pca.png" in pngs and "demo_comparison.png" in pngs
    assert sum(name.endswith("__demo_depth.png") for name in pngs) == 3
    recs = records(demo)
    assert len(recs) == 3 * 8
    assert recs[("raw-pixels", "demo_retrieval")]["status"] == "skipped"
    tips = recs[("tips-v2-b14:random", "demo_zeroshot")]
    assert tips["status"] == "done" and "random weights" in tips["model_info"]["weights"]


@pytest.mark.slow
def test_demo_rerun_reuses_data_features_and_records(demo, capsys):
    before = {p: p.stat().st_mtime_ns for p in (demo / "results").rglob("*.json")}
    data_before = sorted((demo / "data").iterdir())
    assert main(["demo", "--out", str(demo), "--n-scenes", str(N_SCENES), "--no-progress"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (demo / "results").rglob("*.json")} == before
    assert sorted((demo / "data").iterdir()) == data_before
    assert "evaluating" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("entry,metric,higher", [
    ("demo_seg", "mIoU", True), ("demo_depth", "rmse", False), ("demo_normals", "angular_rmse", False),
    ("demo_knn", "top1", True)])
def test_pretrained_beats_raw_pixels_and_random_weights(demo, entry, metric, higher):
    recs = records(demo)
    ours = recs[(PRETRAINED, entry)]["metrics"][metric]
    for base in BASELINES:
        theirs = recs[(base, entry)]["metrics"][metric]
        assert (ours > theirs) if higher else (ours < theirs), (entry, base, ours, theirs)


@pytest.mark.slow
def test_dpt_depth_beats_the_mean_depth(demo):
    import dataclasses

    from tips_eval.data import open_dataset
    from tips_eval.metrics import depth_metrics
    from tips_eval.runner import ModelRef, run_suite
    from tips_eval.suites import get_suite
    from tips_eval.task_api import RunContext

    data = next(p for p in (demo / "data").iterdir() if p.name.startswith("synthetic-"))
    entry = next(e for e in get_suite("demo") if e.id == "demo_depth")
    dpt = dataclasses.replace(entry, id="demo_depth_dpt", params={**entry.params, "head": "dpt", "lr": 2e-3,
                                                                  "dpt_channels": 32,
                                                                  "dpt_post_process_channels": (16, 32, 64, 128)})
    rec = run_suite([ModelRef(PRETRAINED)], [dpt], demo / "data", results_dir=demo / "dpt_results",
                    data_overrides={"synthetic": str(data)}, ctx=RunContext(cache_dir=str(demo / "cache"),
                                                                            progress=False))[0]
    assert rec["protocol"]["resolved"]["head"] == "dpt"
    train, test = open_dataset("synthetic", data, "train"), open_dataset("synthetic", data, "test")
    mean = np.concatenate([train.target(i)["depth"][train.target(i)["valid"]] for i in range(len(train))]).mean()
    const = depth_metrics(np.stack([np.full_like(test.target(i)["depth"], mean) for i in range(len(test))]),
                          np.stack([test.target(i)["depth"] for i in range(len(test))]),
                          np.stack([test.target(i)["valid"] for i in range(len(test))]))["rmse"]
    assert rec["metrics"]["rmse"] < 0.75 * const, (rec["metrics"]["rmse"], const)
