"""Runs the Keras 3 tests (tests/keras3) on the JAX and PyTorch backends, each in a process of
its own (Keras fixes its backend at the first import). The TensorFlow backend runs them in this
process, collected with the rest of the suite. No backend is skipped: the test extras install
jax and torch."""

import os
import subprocess
import sys

import pytest

KERAS3_TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "keras3")


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_keras3_suite_passes_on_backend(backend):
  env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("TF_USE_LEGACY_KERAS", None)
  extra = [a for a in os.environ.get("TF_GIBBS_KERAS3_PYTEST_ARGS", "").split() if a]
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", KERAS3_TESTS] + extra,
      env=env, capture_output=True, text=True, timeout=1500, check=False)
  assert result.returncode == 0, (
      f"tests/keras3 failed on KERAS_BACKEND={backend}:\n{result.stdout[-12000:]}\n"
      f"{result.stderr[-3000:]}")
  assert " passed" in result.stdout and " skipped" not in result.stdout.replace(
      "1 skipped", ""), result.stdout[-2000:]  # torch skips only the torch.compile case
