"""The main job on Keras 3 (examples/quickstart.py --keras 3) runs on the current backend:
train, prune, strip, shrink, export to LiteRT, check LiteRT against Keras, report."""

import os
import sys

import keras
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
import quickstart  # noqa: E402  pylint: disable=g-import-not-at-top

# On PyTorch the main job is a slow test (`KERAS_BACKEND=torch pytest -m slow tests/keras3`):
# its export runs the same TensorFlow-process conversion as on JAX, tested by default there.
pytestmark = [pytest.mark.slow] if keras.backend.backend() == "torch" else []


def test_quickstart_keras3_short_run(tmp_path):
  backend = keras.backend.backend()
  result = quickstart.main(["--keras", "3", "--backend", backend, "--epochs", "2",
                            "--verbose", "0", "--out_dir", str(tmp_path)])
  assert result["backend"] == backend
  assert result["pruned_accuracy"] == result["wrapped_accuracy"]
  assert result["sparsity"] == pytest.approx(0.9, abs=1e-3)
  assert result["pruned_accuracy"] > 0.3  # 2 epochs: well above chance (0.1)
  # Deployment on this backend: shrunk = stripped, LiteRT = Keras, and smaller files.
  assert result["max_shrink_diff"] < 1e-4
  assert result["max_litert_diff"] < 1e-4
  assert result["litert_accuracy"] == pytest.approx(result["pruned_accuracy"], abs=0.01)
  assert result["gzip_tflite"][1] < 0.5 * result["gzip_tflite"][0]
  assert result["gzip_keras"][1] < result["gzip_keras"][0]
  assert (tmp_path / "pruned.tflite").exists() and (tmp_path / "sparsity.png").exists()
