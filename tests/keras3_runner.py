"""Runs tests/keras3 on the JAX and PyTorch backends in the background, one process at a time,
started as soon as pytest has collected tests/test_keras3_backends.py (tests/conftest.py), so
that those runs overlap the rest of the suite instead of adding to its wall time."""

import os
import subprocess
import sys
import threading

BACKENDS = ("jax", "torch")
KERAS3_TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "keras3")
_results = {}
_done = {backend: threading.Event() for backend in BACKENDS}
_started = threading.Lock()
_thread = []


def _run_all():
  for backend in BACKENDS:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_USE_LEGACY_KERAS", None)
    extra = [a for a in os.environ.get("TF_GIBBS_KERAS3_PYTEST_ARGS", "").split() if a]
    try:
      _results[backend] = subprocess.run(
          [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", KERAS3_TESTS]
          + extra,
          env=env, capture_output=True, text=True, timeout=1500, check=False)
    except subprocess.TimeoutExpired as error:
      _results[backend] = error
    _done[backend].set()


def start():
  """Starts the background runs once per session (later calls do nothing)."""
  if _started.acquire(blocking=False):
    thread = threading.Thread(target=_run_all, daemon=True)
    thread.start()
    _thread.append(thread)


def result(backend):
  """The finished run of ``backend`` (a CompletedProcess, or TimeoutExpired)."""
  start()
  _done[backend].wait()
  return _results[backend]
