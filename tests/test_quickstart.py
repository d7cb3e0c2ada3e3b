"""The main job (examples/quickstart.py) runs end to end offline."""

import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import quickstart  # noqa: E402  pylint: disable=g-import-not-at-top


def _check(result):
  assert result["max_litert_diff"] < 1e-4
  assert result["max_shrink_diff"] < 1e-4
  assert result["litert_accuracy"] == pytest.approx(result["pruned_accuracy"], abs=1 / 360)
  assert result["pruned_accuracy"] == result["wrapped_accuracy"]
  assert result["sparsity"] == pytest.approx(0.9, abs=1e-3)
  dense_gz, pruned_gz = result["gzip_tflite"]
  assert pruned_gz < 0.3 * dense_gz


def test_quickstart_short_run(tmp_path, capsys):
  _check(quickstart.main(["--epochs", "2", "--out_dir", str(tmp_path)]))
  assert (tmp_path / "pruned.tflite").exists() and (tmp_path / "sparsity.png").exists()
  out = capsys.readouterr().out
  # By default one line per epoch, a line before each stage, a summary.
  assert len(re.findall(r"^dense  epoch [12]/2  loss [0-9.]+  accuracy ", out, re.M)) == 2
  assert len(re.findall(r"^pruned  epoch [12]/2  loss [0-9.]+  accuracy ", out, re.M)) == 2
  assert "Epoch 1/2" not in out and "====" not in out  # no Keras progress output
  stages = ["== Strip", "== Shrink", "== Export", "== LiteRT check", "== Summary"]
  positions = [out.index(stage) for stage in stages]
  assert positions == sorted(positions)
  summary = out[positions[-1]:]
  for line in ("accuracy ", "sparsity ", "gzipped ", "LiteRT ", "time "):
    assert re.search("^" + line, summary, re.M), line


@pytest.mark.slow
def test_quickstart_full_run_keeps_accuracy(tmp_path):
  result = quickstart.main(["--verbose", "0", "--out_dir", str(tmp_path)])
  _check(result)
  assert result["pruned_accuracy"] > result["dense_accuracy"] - 0.03
