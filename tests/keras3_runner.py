"""Runs tests/keras3 on the JAX and PyTorch backends, each in a pytest process of its own (Keras
fixes its backend at the first import).

Under pytest-xdist (the default: pytest.ini has ``-n 2``) each backend's run is a test that an
xdist worker runs while the other worker runs the rest of the suite; tests/conftest.py moves
those tests to the front. Without xdist (``-n 0``) both runs start in a background thread
as soon as the tests are collected, so that they overlap the rest of the suite.
"""

import os
import subprocess
import sys
import threading

BACKENDS = ("jax", "torch")
KERAS3_TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "keras3")
_results = {}
_done = {backend: threading.Event() for backend in BACKENDS}
_started = threading.Lock()


def _run(backend):
  env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("TF_USE_LEGACY_KERAS", None)
  env.pop("PYTEST_XDIST_WORKER", None)
  extra = [a for a in os.environ.get("TF_GIBBS_KERAS3_PYTEST_ARGS", "").split() if a]
  try:
    _results[backend] = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-n", "0",
         KERAS3_TESTS] + extra,
        env=env, capture_output=True, text=True, timeout=1500, check=False)
  except subprocess.TimeoutExpired as error:
    _results[backend] = error
  _done[backend].set()


def start():
  """Starts the runs of every backend in a background thread (later calls do nothing)."""
  if _started.acquire(blocking=False):
    threading.Thread(target=lambda: [_run(b) for b in BACKENDS], daemon=True).start()


def result(backend):
  """The finished run of ``backend`` (a CompletedProcess, or TimeoutExpired): waits for the
  background run if one was started, else runs it now."""
  if not _started.locked():  # no background run: run this backend alone
    _run(backend)
  _done[backend].wait()
  return _results[backend]
