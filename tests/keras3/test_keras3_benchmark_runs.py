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
  assert set(rows) == {(backend, "dense", 4), (backend, "gibbs_unstructured", 4)}
