"""Kill-anywhere harness: a real ``tips-eval run`` subprocess, SIGKILLed at chosen and
random points, rerun until done; then every record must be present exactly once,
every cache entry must verify, and the metrics must equal an uninterrupted run.

Kill points come from ``tips_eval.faults`` (``TIPS_EVAL_FAULT=point:n``: mid-shard
during extraction, during probe training, between a record's temp file and its
rename) plus kills after a random delay. Run it directly for the figures:

    python tests/fault_harness.py --random-kills 6
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ENTRIES = ("imagenet_knn", "imagenet_linear", "voc_seg", "coco_retrieval")
MODELS = ("raw-pixels", "tips-v1-s14-hr:random")
#: (point, n): the n-th passage of each fault point, spread over the phases of a run
PLANNED_KILLS = (("extract_batch", 1), ("extract_batch", 3), ("record_write", 1), ("sweep_step", 2),
                 ("train_step", 2), ("extract_batch", 2), ("train_step", 7), ("record_write", 2),
                 ("sweep_step", 3), ("train_step", 15))


def build_world(root: Path) -> tuple[Path, Path]:
    from layouts_dense import make_voc
    from layouts_global import make_coco_karpathy, make_imagenet

    data = root / "data"
    if not data.exists():
        make_imagenet(data / "imagenet", n_classes=3, per_class=8)
        make_voc(data, n=6)
        make_coco_karpathy(data / "coco", n_test=4)
    suite = root / "suite.yaml"
    suite.write_text("extends: paper\nonly: [" + ", ".join(ENTRIES) + "]\n")
    return data, suite


def _cmd(data: Path, suite: Path, results: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "tips_eval.cli", "run", "--model", "raw-pixels", "--model", "tips-v1-s14-hr",
            "--random-weights", "--suite", str(suite), "--data-root", str(data), "--results", str(results),
            "--cache-dir", str(cache), "--quick", "--no-progress", "--param", "resolution=56", "--batch-size", "4"]


def _env(root: Path, fault: str | None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TIPS_EVAL_HOME": str(root / "home")}
    env.pop("TIPS_EVAL_FAULT", None)
    if fault:
        env["TIPS_EVAL_FAULT"] = fault
    return env


def run_once(cmd, env, kill_after: float | None = None, timeout: float = 900) -> int:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        if kill_after is not None:
            try:
                proc.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"run failed ({proc.returncode}): {err[-1500:]}")
    return proc.returncode


def records(results: Path) -> dict[tuple[str, str], dict]:
    out = {}
    for p in sorted(results.rglob("*.json")):
        rec = json.loads(p.read_text())  # a half-written record would fail here
        key = (rec["model"], rec["suite_entry"])
        if key in out:
            raise AssertionError(f"record {key} present twice")
        out[key] = rec
    return out


def verify_cache(cache: Path) -> dict[str, int]:
    from tips_eval.features import CacheIndex

    states = CacheIndex(cache).verify()
    bad = {k: v for k, v in states.items() if v not in ("ok", "incomplete")}
    if bad:
        raise AssertionError(f"cache entries that do not verify: {bad}")
    return {"ok": sum(v == "ok" for v in states.values()), "incomplete": sum(v == "incomplete" for v in states.values())}


def run_harness(root: Path, random_kills: int = 2, seed: int = 0, planned=PLANNED_KILLS) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    data, suite = build_world(root)
    ref_dir, run_dir = root / "reference", root / "faulty"
    run_once(_cmd(data, suite, ref_dir / "results", ref_dir / "cache"), _env(root, None))
    reference = records(ref_dir / "results")
    rng = random.Random(seed)
    results, cache = run_dir / "results", run_dir / "cache"
    kills = survived_checks = 0
    plan = [("fault", f"{p}:{n}") for p, n in planned] + [("timer", rng.uniform(2.0, 15.0)) for _ in range(random_kills)]
    outcomes = []
    for kind, arg in plan:
        code = run_once(_cmd(data, suite, results, cache), _env(root, arg if kind == "fault" else None),
                        kill_after=arg if kind == "timer" else None)
        kills += code == -signal.SIGKILL
        outcomes.append(f"{arg if kind == 'fault' else f'after {arg:.1f}s'}: {'killed' if code else 'finished first'}")
        records(results)  # every record on disk parses and appears once
        verify_cache(cache)  # no shard that fails its checksum is marked valid
        survived_checks += 1
    run_once(_cmd(data, suite, results, cache), _env(root, None))
    final = records(results)
    cache_state = verify_cache(cache)
    expected = {(m, e) for m in MODELS for e in ENTRIES}
    lost = sorted(expected - set(final))
    mismatched = [k for k in expected & set(final) if final[k]["metrics"] != reference[k]["metrics"]]
    return {"kills_delivered": kills, "kill_attempts": len(plan), "attempts": outcomes,
            "checks_passed_after_kills": survived_checks,
            "records_expected": len(expected), "records_present": len(final), "records_lost": len(lost),
            "lost": lost, "metrics_different_from_uninterrupted": mismatched, "cache_entries": cache_state}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/tips-eval-faults", help="scratch folder (reused data)")
    ap.add_argument("--random-kills", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.time()
    res = run_harness(Path(args.workdir) / f"run-{int(t0)}", args.random_kills, args.seed)
    for k, v in res.items():
        print(f"{k:38s} {v}")
    print(f"{'wall time (s)':38s} {time.time() - t0:.0f}")


if __name__ == "__main__":
    main()
