"""The README's Keras 3 example runs exactly as printed on the current backend, and does what it
says."""

import keras
import numpy as np
import pytest

import tf_gibbs
from conftest import to_numpy
from helpers import readme_block

# On PyTorch the export converts in a TensorFlow process (as on JAX, tested by default there):
# a slow test there (`KERAS_BACKEND=torch pytest -m slow tests/keras3`).
pytestmark = [pytest.mark.slow] if keras.backend.backend() == "torch" else []


def test_readme_keras3_example_runs_as_printed(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(readme_block("import keras  "), "README.md", "exec"), namespace)  # pylint: disable=exec-used
  deployable, pruned, x = namespace["deployable"], namespace["pruned"], namespace["x"]
  kernels = [to_numpy(layer.kernel) for layer in deployable.layers if hasattr(layer, "kernel")]
  assert len(kernels) == 2
  for kernel in kernels:  # the budget: exactly round(0.9 n) closed gates per layer
    assert (kernel == 0).sum() == round(0.9 * kernel.size)
  expected = to_numpy(pruned.predict(x[:64], verbose=0))
  np.testing.assert_allclose(to_numpy(deployable.predict(x[:64], verbose=0)), expected,
                             rtol=1e-5, atol=1e-5)
  loaded = keras.models.load_model(tmp_path / "pruned_l0.keras")
  np.testing.assert_allclose(to_numpy(loaded.predict(x[:64], verbose=0)), expected,
                             rtol=1e-6, atol=1e-6)
  litert = tf_gibbs.run_tflite((tmp_path / "digits_l0.tflite").read_bytes(), x[:64])
  np.testing.assert_allclose(litert, expected, rtol=1e-4, atol=1e-4)
  # The deployed model learned while pruning to 90 %: accuracy on fit's validation split.
  split = int(0.8 * len(x))
  predicted = np.argmax(to_numpy(deployable.predict(x[split:], verbose=0)), axis=-1)
  assert np.mean(predicted == namespace["y"][split:]) > 0.8
