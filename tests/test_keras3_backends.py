"""Runs the Keras 3 tests (tests/keras3) on the JAX and PyTorch backends, each in a process of
its own (Keras fixes its backend at the first import): under xdist, one test per backend that
a worker runs while the other runs the rest; without it (-n 0), in the background from collection
on (tests/keras3_runner.py). The TensorFlow backend runs them in the main pytest processes,
collected with the rest of the suite. No backend is skipped: the test extras install
jax and torch."""

import subprocess

import pytest

import keras3_runner


@pytest.mark.parametrize("backend", keras3_runner.BACKENDS)
def test_keras3_suite_passes_on_backend(backend):
  result = keras3_runner.result(backend)
  assert not isinstance(result, subprocess.TimeoutExpired), f"{backend}: timed out"
  assert result.returncode == 0, (
      f"tests/keras3 failed on KERAS_BACKEND={backend}:\n{result.stdout[-12000:]}\n"
      f"{result.stderr[-3000:]}")
  assert " passed" in result.stdout, result.stdout[-2000:]
  # A test may skip only where it is about one backend by design ("backend-specific: ..."),
  # never because a backend or a package is missing.
  skips = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
  unexpected = [line for line in skips if "backend-specific:" not in line]
  assert not unexpected, "\n".join(unexpected)
