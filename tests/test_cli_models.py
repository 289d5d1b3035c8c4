"""`tips-eval models` and the CLI's error handling."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from tips_eval.cli import main
from tips_eval.model_zoo import list_models
from tips_eval.preprocess import Preprocess


def test_models_lists_every_zoo_entry_with_its_columns(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in list_models():
        assert name in out
    assert "res" in out and "patch" in out and "text" in out and "storage.googleapis.com" in out


def test_models_json_is_machine_readable(capsys):
    assert main(["models", "--format", "json", "--family", "tips"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(list_models("tips"))
    assert all(r["patch_size"] == 14 and r["has_text"] for r in rows)


def test_console_script_help_and_one_line_errors():
    out = subprocess.run([sys.executable, "-m", "tips_eval.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "models" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "tips_eval.cli", "models", "--family", "nope"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "invalid choice" in bad.stderr


@pytest.mark.parametrize("mode", ["squash", "shortest", "longest"])
def test_preprocess_sizes_and_normalisation(mode):
    pre = Preprocess(image_size=(28, 42), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize=mode)
    img = Image.new("RGBA", (100, 60), (255, 255, 255, 10))  # RGBA converted, not an error
    x = pre(img)
    assert tuple(x.shape) == (3, 28, 42)
    inside = x[:, 14, 21]
    assert inside.tolist() == pytest.approx([2.0, 2.0, 2.0])  # (1 - 0.5) / 0.25
    gray = pre(Image.new("L", (30, 30), 0))
    assert gray.shape == (3, 28, 42) and float(gray.max()) == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="resize"):
        Preprocess(image_size=8, resize="crop")
