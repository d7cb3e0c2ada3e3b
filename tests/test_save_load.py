"""Save / load round trips (.keras, .h5, SavedModel) keep predictions, β, the step, and resume."""

import numpy as np
import pytest
import tf_keras as keras

import tf_gibbs
from helpers import compile_model
from helpers import random_data
from helpers import small_cnn
from helpers import wrappers

FORMATS = ["model.keras", "model.h5", "saved_model"]


def _wrappers(model):
  return wrappers(model, tf_gibbs.GibbsPruning)


def _mid_training_model():
  schedule = tf_gibbs.GibbsSchedule(0.8, beta_begin=1.0, beta_end=1e3, begin_step=0, end_step=40)
  model = compile_model(tf_gibbs.prune_gibbs(small_cnn(), schedule, test_mode="magnitude"))
  x, y = random_data(64)
  model.fit(x, y, batch_size=16, epochs=2, callbacks=[tf_gibbs.UpdatePruningStep()], verbose=0,
            shuffle=False)
  return model, x, y


@pytest.mark.parametrize("filename", FORMATS)
@pytest.mark.parametrize("use_scope", [True, False])
def test_round_trip_keeps_predictions_beta_step_and_config(tmp_path, filename, use_scope):
  model, x, _ = _mid_training_model()
  path = str(tmp_path / filename)
  model.save(path)
  if use_scope:
    with tf_gibbs.prune_scope():
      loaded = keras.models.load_model(path)
  else:
    loaded = keras.models.load_model(path)
  np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                             rtol=1e-6, atol=1e-6)
  for original, restored in zip(_wrappers(model), _wrappers(loaded)):
    assert type(restored) is tf_gibbs.GibbsPruning
    assert int(restored.pruning_step) == int(original.pruning_step) == 8
    assert float(restored.beta()) == pytest.approx(float(original.beta()))
    assert restored.get_config() == original.get_config()
    np.testing.assert_array_equal(restored.mask.numpy(), original.mask.numpy())


@pytest.mark.parametrize("filename", FORMATS)
def test_training_resumes_where_it_stopped(tmp_path, filename):
  """One more epoch on the loaded model continues the step counter and the stateless mask
  stream; with .keras and .h5 (which restore Adam's state) it equals one more epoch on the
  original. tf_keras' SavedModel loader does not restore the optimizer's state, for any model,
  so there only the pruning state is compared."""
  model, x, y = _mid_training_model()
  path = str(tmp_path / filename)
  model.save(path)
  loaded = keras.models.load_model(path)
  for m in (model, loaded):
    m.fit(x, y, batch_size=16, epochs=1, callbacks=[tf_gibbs.UpdatePruningStep()], verbose=0,
          shuffle=False)
  for original, restored in zip(_wrappers(model), _wrappers(loaded)):
    assert int(restored.pruning_step) == 12
    assert float(restored.beta()) == pytest.approx(float(original.beta()))
    if filename != "saved_model":
      np.testing.assert_array_equal(restored.mask.numpy(), original.mask.numpy())
      np.testing.assert_allclose(restored.layer.kernel.numpy(), original.layer.kernel.numpy(),
                                 rtol=1e-5, atol=1e-7)


def test_stripped_model_saves_and_loads_as_plain_keras(tmp_path):
  model, x, _ = _mid_training_model()
  stripped = tf_gibbs.strip_pruning(model)
  path = str(tmp_path / "plain.keras")
  stripped.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                             rtol=1e-5, atol=1e-6)
