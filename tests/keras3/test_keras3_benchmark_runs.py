"""The Keras 3 rows of the overhead benchmark run on the current backend (tiny settings; the
figures are not asserted)."""

import os
import sys

import keras
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import keras3_overhead  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.mark.slow  # ~60 s on JAX (compiles ResNet-8 twice)
def test_keras3_overhead_rows_run():
  rows = keras3_overhead.main(["--batch_sizes", "4", "--steps", "2", "--depth", "8",
                               "--modes", "gibbs_unstructured"])
  backend = keras.backend.backend()
  assert rows[(backend, "dense", 4)] == 1.0
  assert rows[(backend, "gibbs_unstructured", 4)] > 0
  assert rows[(backend, "dense", "first_step")] == 1.0
  assert set(rows) == {(backend, name, key) for name in ("dense", "gibbs_unstructured")
                       for key in (4, "first_step")}


@pytest.mark.slow  # ~1-2 min: builds and compiles two MobileNetV2s
def test_keras3_overhead_rows_run_on_an_edge_model(capsys):
  rows = keras3_overhead.main(["--model", "mobilenetv2", "--input_size", "32", "--batch_sizes",
                               "2", "--steps", "1", "--modes", "gibbs_unstructured"])
  backend = keras.backend.backend()
  assert rows[(backend, "gibbs_unstructured", "first_step")] > 0
  assert rows[(backend, "gibbs_unstructured", 2)] > 0
  assert "MobileNetV2 32x32, time to the end of the first step" in capsys.readouterr().out
  with pytest.raises(ValueError, match="Unknown `model` 'vgg'"):
    keras3_overhead.model_makers(20, model="vgg")


@pytest.mark.slow  # ~3 min: trains, shrinks and exports two ResNet-20s
def test_keras3_deploy_rows_run_and_shrunk_models_match():
  import deploy  # pylint: disable=g-import-not-at-top
  results = deploy.main(["--keras", "3", "--steps", "4", "--runs", "20"])
  assert results["filter"]["parity"] < 1e-4
  assert 0.3 < results["filter"]["kept_mac_fraction"] < 0.8
  assert results["unstructured"]["parity"] < 1e-4
  assert abs(results["unstructured"]["sparsity"] - 0.9) < 0.01
  assert "conv_latency_ms" not in results  # part 3 does not depend on Keras: tf_keras runs it
