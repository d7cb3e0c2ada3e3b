"""The README's tf_keras example runs exactly as printed, and does what it says."""

import numpy as np
import pytest

import tf_gibbs
from helpers import readme_block


def test_readme_tf_keras_example_runs_as_printed(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(readme_block("import tf_keras as keras"), "README.md", "exec"), namespace)  # pylint: disable=exec-used
  assert "Epoch 10/10" in capsys.readouterr().out  # one line per epoch, as `verbose=2` says
  deployable, pruned, x = namespace["deployable"], namespace["pruned"], namespace["x"]
  assert namespace["report"]["total"]["sparsity"] == pytest.approx(0.9, abs=1e-3)
  for layer in deployable.layers:
    if hasattr(layer, "kernel"):
      assert (layer.kernel.numpy() == 0).sum() == round(0.9 * layer.kernel.numpy().size)
  np.testing.assert_allclose(deployable.predict(x, verbose=0), pruned.predict(x, verbose=0),
                             rtol=1e-5, atol=1e-5)
  litert = tf_gibbs.run_tflite((tmp_path / "digits.tflite").read_bytes(), x[:64])
  np.testing.assert_allclose(litert, deployable.predict(x[:64], verbose=0), rtol=1e-4, atol=1e-4)
  # The deployed model learned while pruning to 90 %: accuracy on fit's validation split.
  split = int(0.8 * len(x))
  predicted = np.argmax(deployable.predict(x[split:], verbose=0), axis=-1)
  assert np.mean(predicted == namespace["y"][split:]) > 0.8
