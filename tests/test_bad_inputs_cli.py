"""Bad inputs through the `tips-eval` CLI: each a one-line error naming the file or key
and what was expected, a non-zero exit code, and nothing partial left marked as done.
(Loader-level cases -- pickled npz, wrong checkpoint, width mismatch, missing tokenizer --
are in test_loader_errors.py; these go through the runner with real dataset layouts.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from layouts_dense import make_voc
from layouts_global import make_imagenet
from tips_eval.cli import main


LAST_OUT = []


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main(["run", "--no-progress", "--quick", "--param", "resolution=28", *map(str, args)])
    captured = capsys.readouterr()
    LAST_OUT[:] = [captured.out]
    return code, captured.err.strip()


def knn_args(data, results, cache, *extra):
    return ["--model", "raw-pixels", "--suite", "paper", "--entries", "imagenet_knn", "--data-root", data,
            "--results", results, "--cache-dir", cache, *extra]


def no_records(results: Path) -> bool:
    return not list(Path(results).rglob("*.json"))


def error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_truncated_jpeg_names_the_file_and_writes_nothing(tmp_path, capsys):
    make_imagenet(tmp_path / "data" / "imagenet", n_classes=2, per_class=3)
    victim = sorted((tmp_path / "data" / "imagenet" / "val").rglob("*.JPEG"))[1]
    victim.write_bytes(victim.read_bytes()[:200])
    code, err = run_cli(capsys, *knn_args(tmp_path / "data", tmp_path / "runs", tmp_path / "cache"))
    assert code == 2 and victim.name in error_line(err) and "--skip-bad-images" in err
    assert no_records(tmp_path / "runs")
    # with the flag the bad image is counted and recorded, and the record is written
    code, _ = run_cli(capsys, *knn_args(tmp_path / "data", tmp_path / "runs", tmp_path / "cache",
                                        "--skip-bad-images"))
    rec = json.loads(next((tmp_path / "runs").rglob("*.json")).read_text())
    assert code == 0 and rec["info"]["bad_images"] == 1


def test_non_image_file_named_like_an_image_is_an_error_and_other_files_are_skipped(tmp_path, capsys):
    root = make_imagenet(tmp_path / "data" / "imagenet", n_classes=2, per_class=3)
    cls = sorted((root / "val").iterdir())[0]
    (cls / "README.txt").write_text("not an image, skipped")  # not an image extension: ignored
    fake = cls / "fake.JPEG"
    fake.write_text("<html>a download error page</html>")
    code, err = run_cli(capsys, *knn_args(tmp_path / "data", tmp_path / "runs", tmp_path / "cache"))
    assert code == 2 and "fake.JPEG" in error_line(err) and no_records(tmp_path / "runs")


def test_grayscale_and_rgba_images_are_converted_not_errors(tmp_path, capsys):
    root = make_imagenet(tmp_path / "data" / "imagenet", n_classes=2, per_class=3, ext=".png")
    files = sorted((root / "val").rglob("*.png"))
    Image.open(files[0]).convert("L").save(files[0])
    Image.open(files[1]).convert("RGBA").save(files[1])
    code, err = run_cli(capsys, *knn_args(tmp_path / "data", tmp_path / "runs", tmp_path / "cache"))
    assert code == 0, err
    rec = json.loads(next((tmp_path / "runs").rglob("*.json")).read_text())
    assert rec["status"] == "done" and rec["info"]["bad_images"] == 0


def test_mask_size_mismatch_names_both_files(tmp_path, capsys):
    make_voc(tmp_path / "data", n=3)
    mask = sorted((tmp_path / "data" / "VOCdevkit" / "VOC2012" / "SegmentationClass").glob("*.png"))[0]
    Image.open(mask).resize((17, 13), Image.NEAREST).save(mask)
    code, err = run_cli(capsys, "--model", "raw-pixels", "--suite", "paper", "--entries", "voc_seg", "--data-root",
                        tmp_path / "data", "--results", tmp_path / "runs", "--cache-dir", tmp_path / "cache")
    line = error_line(err)
    assert code == 2 and mask.stem in line and "17" in line and no_records(tmp_path / "runs")


@pytest.mark.parametrize("level", ["too_high", "too_low"])
def test_dataset_root_one_level_off_suggests_the_right_one(tmp_path, capsys, level):
    make_imagenet(tmp_path / "data" / "imagenet", n_classes=2, per_class=2)
    from tips_eval.data import open_dataset
    from tips_eval.errors import DatasetLayoutError

    wrong = tmp_path / "data" if level == "too_high" else tmp_path / "data" / "imagenet" / "train"
    with pytest.raises(DatasetLayoutError) as e:
        open_dataset("imagenet", wrong, "train")
    assert "did you mean" in str(e.value) and str(tmp_path / "data" / "imagenet") in str(e.value)
    # through the runner the dataset is reported missing (with the hint) and skipped, not fatal
    code, _ = run_cli(capsys, "--model", "raw-pixels", "--suite", "paper", "--entries", "imagenet_knn",
                      "--data", f"imagenet_knn={wrong}", "--data-root", tmp_path / "data",
                      "--results", tmp_path / "runs", "--cache-dir", tmp_path / "cache")
    assert code == 0 and no_records(tmp_path / "runs")
    assert "[missing]" in LAST_OUT[0] and "did you mean" in LAST_OUT[0]


def test_nan_features_are_caught_before_any_metric(tmp_path, monkeypatch, capsys):
    make_imagenet(tmp_path / "data" / "imagenet", n_classes=2, per_class=3)
    from tips_eval.model_zoo.pixels import RawPixelsEncoder

    real = RawPixelsEncoder._encode_image

    def poisoned(self, pixels, layers, kinds):
        f = real(self, pixels, layers, kinds)
        f.global_tokens = f.global_tokens.clone()
        f.global_tokens[0, 0, 0] = float("nan")
        return f

    monkeypatch.setattr(RawPixelsEncoder, "_encode_image", poisoned)
    code, err = run_cli(capsys, *knn_args(tmp_path / "data", tmp_path / "runs", tmp_path / "cache"))
    line = error_line(err)
    assert code == 2 and "non-finite" in line and "imagenet" in line and no_records(tmp_path / "runs")


def test_hand_edited_invalid_record_is_reported_and_the_others_still_load(tmp_path, capsys):
    make_imagenet(tmp_path / "data" / "imagenet", n_classes=2, per_class=3)
    code, _ = run_cli(capsys, "--model", "raw-pixels", "--suite", "paper", "--entries",
                      "imagenet_knn,imagenet_linear", "--data-root", tmp_path / "data",
                      "--results", tmp_path / "runs", "--cache-dir", tmp_path / "cache")
    assert code == 0
    files = sorted((tmp_path / "runs").rglob("*.json"))
    files[0].write_text(files[0].read_text()[:-40] + ", oops")  # broken by hand
    assert main(["table", "--results", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "invalid record" in out and files[0].name in out and "IN linear" in out + "IN kNN"
    # the broken record is not taken as done: a rerun recomputes exactly that one
    code, _ = run_cli(capsys, "--model", "raw-pixels", "--suite", "paper", "--entries",
                      "imagenet_knn,imagenet_linear", "--data-root", tmp_path / "data",
                      "--results", tmp_path / "runs", "--cache-dir", tmp_path / "cache")
    assert code == 0 and json.loads(files[0].read_text())["status"] == "done"
