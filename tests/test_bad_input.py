"""Bad input fails early with an error that names the argument and what is accepted."""

import keras as keras3  # Keras 3, installed with TensorFlow
import numpy as np
import pytest
import tensorflow_model_optimization as tfmot
import tf_keras as keras

import tf_gibbs
from helpers import small_cnn


class Subclassed(keras.Model):

  def __init__(self):
    super().__init__()
    self.fc = keras.layers.Dense(2)

  def call(self, x):
    return self.fc(x)


def _keras3_model():
  return keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)])


def _no_prunable_model():
  return keras.Sequential([keras.Input((4, 4)), keras.layers.Flatten(), keras.layers.ReLU()])


def _model_with_wrapper():
  return keras.Sequential([keras.Input((4,)), tf_gibbs.prune_gibbs(keras.layers.Dense(2))])


CASES = [
    # (callable, exception, pattern)
    (lambda: tf_gibbs.prune_gibbs(small_cnn(), schedule=tfmot.sparsity.keras.ConstantSparsity(
        0.5, 0)), TypeError, "`schedule`.*GibbsSchedule"),
    (lambda: tf_gibbs.prune_gibbs(small_cnn(), hamiltonian="ising"), ValueError,
     "hamiltonian='ising'.*unstructured"),
    (lambda: tf_gibbs.prune_gibbs(small_cnn(), test_mode="gibbs"), ValueError,
     "test_mode='gibbs'.*magnitude.*sample"),
    (lambda: tf_gibbs.prune_gibbs("dense"), TypeError, "`to_prune`"),
    (lambda: tf_gibbs.prune_gibbs(np.zeros(3)), TypeError, "`to_prune`"),
    (lambda: tf_gibbs.prune_gibbs([]), ValueError, "`to_prune` is an empty list"),
    (lambda: tf_gibbs.prune_gibbs(_keras3_model()), TypeError, "Keras 3.*tf_keras"),
    (lambda: tf_gibbs.prune_gibbs(keras3.layers.Dense(2)), TypeError, "Keras 3.*tf_keras"),
    (lambda: tf_gibbs.prune_gibbs([keras.layers.Dense(2), keras3.layers.Dense(2)]), TypeError,
     r"`to_prune\[1\]` is a Keras 3"),
    (lambda: tf_gibbs.prune_gibbs(tf_gibbs.prune_gibbs(keras.layers.Dense(2))), ValueError,
     "already wrapped"),
    (lambda: tf_gibbs.prune_gibbs(tfmot.sparsity.keras.prune_low_magnitude(
        keras.layers.Dense(2))), ValueError, "already wrapped"),
    (lambda: tf_gibbs.prune_gibbs(_model_with_wrapper()), ValueError,
     "already contains pruning wrappers"),
    (lambda: tf_gibbs.prune_gibbs(Subclassed()), ValueError, "subclassed model"),
    (lambda: tf_gibbs.prune_gibbs(keras.layers.Flatten()), ValueError,
     "not a supported layer.*Conv2D.*Dense"),
    (lambda: tf_gibbs.prune_gibbs(keras.layers.Conv2DTranspose(2, 3)), ValueError,
     "not a supported layer"),
    (lambda: tf_gibbs.prune_gibbs(_no_prunable_model()), ValueError, "found no layer to prune"),
    (lambda: tf_gibbs.prune_gibbs(small_cnn(), skip=["conv1", "nope"]), ValueError,
     r"`skip` names layers that are not in the model: \['nope'\]"),
    (lambda: tf_gibbs.prune_gibbs(small_cnn(), skip=3), TypeError, "`skip`"),
    (lambda: tf_gibbs.prune_gibbs(small_cnn(), skip=lambda layer: True), ValueError,
     "found no layer to prune.*after `skip`"),
    (lambda: tf_gibbs.prune_gibbs(small_cnn(), seed=-1), ValueError, "`seed`"),
    (lambda: tf_gibbs.prune_gibbs(small_cnn(), seed="1"), ValueError, "`seed`"),
    (lambda: tf_gibbs.GibbsPruning(keras.layers.Dense(2), pruning_schedule=object()), TypeError,
     "`pruning_schedule`"),
    (lambda: tf_gibbs.GibbsSchedule(beta_begin=0), ValueError, "`beta_begin`"),
    (lambda: tf_gibbs.GibbsSchedule(begin_step=10, end_step=2), ValueError, "`end_step`"),
    (lambda: tf_gibbs.GibbsSchedule(target_sparsity=1.0), ValueError, r"`target_sparsity`.*\[0"),
    (lambda: tf_gibbs.strip_pruning("model"), TypeError, "`model`"),
    (lambda: tf_gibbs.strip_pruning(Subclassed()), ValueError, "subclassed model"),
    (lambda: tf_gibbs.strip_pruning(_keras3_model()), TypeError, "Keras 3"),
]


@pytest.mark.parametrize("call,error,pattern", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_bad_input_raises_clear_error(call, error, pattern):
  with pytest.raises(error, match=pattern):
    call()


def test_update_pruning_step_warns_when_there_is_nothing_to_update():
  model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
  model.compile("sgd", "mse")
  with pytest.warns(UserWarning, match="no pruning wrapper"):
    model.fit(np.ones((4, 4)), np.ones((4, 1)), verbose=0,
              callbacks=[tf_gibbs.UpdatePruningStep()])
