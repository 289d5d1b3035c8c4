"""End to end through the CLI: a tiny suite over test-built datasets in their real
layouts and two random-weight zoo models; killed mid-run, rerun (resumes), then
tables in Markdown, CSV and LaTeX with the paper's reference rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from layouts_dense import make_voc
from layouts_global import make_coco_karpathy, make_imagenet, make_uned

ENTRIES = ["imagenet_knn", "imagenet_linear", "uned", "coco_retrieval", "voc_seg", "imagenet_zeroshot"]
MODELS = ["raw-pixels", "tips-v1-s14-hr:random"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = root / "data"
    make_imagenet(data / "imagenet", n_classes=3, per_class=4)
    make_coco_karpathy(data / "coco", n_test=4)
    make_uned(data / "uned")
    make_voc(data, n=4)
    suite = root / "suite.yaml"
    suite.write_text("extends: paper\nonly: [" + ", ".join(ENTRIES) + "]\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TIPS_EVAL_HOME": str(root / "home"),
           "PYTHONUNBUFFERED": "1"}
    return root, data, suite, env


def cli(*args, env, **kw):
    return subprocess.run([sys.executable, "-m", "tips_eval.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, **kw)


def run_args(root, data, suite):
    return ["run", "--model", "raw-pixels", "--model", "tips-v1-s14-hr", "--random-weights", "--suite", suite,
            "--data-root", data, "--results", root / "runs", "--quick", "--no-progress", "--param", "resolution=56"]


def record_files(root):
    return sorted((root / "runs").rglob("*.json"))


@pytest.mark.slow
def test_run_killed_then_resumed_then_tables(world):
    root, data, suite, env = world
    # 1. start a real run and SIGKILL it as soon as the first record lands
    proc = subprocess.Popen([sys.executable, "-m", "tips_eval.cli", *map(str, run_args(root, data, suite))],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not record_files(root) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p: p.stat().st_mtime_ns for p in record_files(root)}
    assert 1 <= len(before) < len(ENTRIES) * len(MODELS), "the kill should land mid-suite"
    # 2. rerun: finishes the rest, reuses what was done (same files, untouched)
    out = cli(*run_args(root, data, suite), env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"({len(before)} reused)" in out.stdout
    files = record_files(root)
    assert len(files) == len(ENTRIES) * len(MODELS)
    for p, mtime in before.items():
        assert p.stat().st_mtime_ns == mtime
    recs = [json.loads(p.read_text()) for p in files]
    keys = [(r["model"], r["suite_entry"]) for r in recs]
    assert sorted(keys) == sorted((m, e) for m in MODELS for e in ENTRIES)  # each exactly once
    by = {(r["model"], r["suite_entry"]): r for r in recs}
    skipped = by[("raw-pixels", "coco_retrieval")]
    assert skipped["status"] == "skipped" and "image-only" in skipped["reason"]
    done = by[("tips-v1-s14-hr:random", "imagenet_knn")]
    assert done["status"] == "done" and done["headline"] == "top1" and 0 <= done["metrics"]["top1"] <= 100
    for field in ("model_fingerprint", "env", "seed", "wall_time_s", "device", "protocol", "data"):
        assert field in done
    assert done["env"]["versions"]["torch"] and done["protocol"]["params"]["resolution"] == 56
    assert by[("tips-v1-s14-hr:random", "uned")]["metrics"]["R@1"] >= 0
    # 3. a third run recomputes nothing
    again = cli(*run_args(root, data, suite), env=env, timeout=600)
    assert f"({len(files)} reused)" in again.stdout
    # 4. tables in three formats, with the paper's reference rows and arrows
    tables = root / "tables"
    out = cli("table", "--results", root / "runs", "--out", tables, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    for kind in ("image-only", "image-text"):
        md = (tables / f"{kind}.md").read_text()
        assert "tips-v1-s14-hr:random" in md and "(paper)" in md
        assert ("↑" in md) and ("TIPS" in md)
        assert (tables / f"{kind}.tex").read_text().startswith("\\begin{tabular}")
        assert "model" in (tables / f"{kind}.csv").read_text().splitlines()[0]
    assert "**" in (tables / "image-only.md").read_text()  # best value in bold
    # 5. compare two models
    cmp_ = cli("compare", "raw-pixels", "tips-v1-s14-hr:random", "--results", root / "runs", env=env, timeout=300)
    assert cmp_.returncode == 0 and "imagenet_knn" in cmp_.stdout and "delta" in cmp_.stdout


def test_every_subcommand_has_complete_help():
    from tips_eval.cli import COMMANDS

    for cmd in COMMANDS:
        out = subprocess.run([sys.executable, "-m", "tips_eval.cli", cmd, "--help"], capture_output=True, text=True)
        assert out.returncode == 0, cmd
        assert "usage: tips-eval " + cmd in out.stdout and len(out.stdout.splitlines()) > 4


def test_errors_are_one_line_with_a_hint(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TIPS_EVAL_HOME": str(tmp_path)}
    out = cli("run", "--model", "tips-v2-b99", "--suite", "paper", "--data-root", tmp_path, env=env)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines[0].startswith("error: unknown model") and lines[1].startswith("hint:") and len(lines) == 2
    out = cli("table", "--results", tmp_path / "none", env=env)
    assert out.returncode == 2 and "no result records" in out.stderr
    dbg = cli("--debug", "table", "--results", tmp_path / "none", env=env)
    assert "Traceback" in dbg.stderr
