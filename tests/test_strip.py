"""Stripping: exact sparsity, equal predictions, both strip functions, TFLite parity."""

import warnings

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

import tf_gibbs
from helpers import compile_model
from helpers import random_data
from helpers import small_cnn

TARGET = 0.9


def _trained_pruned_model(callback=tf_gibbs.UpdatePruningStep, epochs=3, end_step=8):
  schedule = tf_gibbs.GibbsSchedule(TARGET, beta_begin=1.0, beta_end=1e4, begin_step=0,
                                    end_step=end_step)
  model = compile_model(tf_gibbs.prune_gibbs(small_cnn(), schedule, skip="conv1"))
  x, y = random_data(64)
  model.fit(x, y, batch_size=16, epochs=epochs, callbacks=[callback()], verbose=0)
  return model, x


def _assert_plain_and_exact(stripped, wrapped, x):
  layers = {layer.name: layer for layer in stripped.layers}
  assert not any(isinstance(l, pruning_wrapper.PruneLowMagnitude) for l in stripped.layers)
  for name in ("conv2", "dense1", "logits"):
    kernel = layers[name].kernel.numpy()
    assert (kernel == 0).sum() == round(TARGET * kernel.size), name
  assert (layers["conv1"].kernel.numpy() != 0).all()  # skipped layer stays dense
  np.testing.assert_allclose(stripped.predict(x, verbose=0), wrapped.predict(x, verbose=0),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("callback", [tf_gibbs.UpdatePruningStep,
                                      tfmot.sparsity.keras.UpdatePruningStep])
@pytest.mark.parametrize("strip", [tf_gibbs.strip_pruning, tfmot.sparsity.keras.strip_pruning])
def test_both_strips_give_exact_sparsity_and_equal_predictions(callback, strip):
  model, x = _trained_pruned_model(callback)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # the schedule is finished: no warning expected
    stripped = strip(model)
  _assert_plain_and_exact(stripped, model, x)


def test_tf_gibbs_strip_is_exact_before_the_schedule_ends_and_does_not_touch_the_model():
  model, x = _trained_pruned_model(epochs=1, end_step=1000)
  kernels_before = [l.layer.kernel.numpy().copy() for l in model.layers
                    if isinstance(l, tf_gibbs.GibbsPruning)]
  with pytest.warns(UserWarning, match="has not reached its end step"):
    stripped = tf_gibbs.strip_pruning(model)
  _assert_plain_and_exact(stripped, model, x)
  kernels_after = [l.layer.kernel.numpy() for l in model.layers
                   if isinstance(l, tf_gibbs.GibbsPruning)]
  for before, after in zip(kernels_before, kernels_after):
    np.testing.assert_array_equal(before, after)
    assert (after != 0).all()  # the training variable is still raw


def test_strip_before_training_says_plainly_that_nothing_was_pruned_yet():
  schedule = tf_gibbs.GibbsSchedule(TARGET, begin_step=0, end_step=100)
  model = compile_model(tf_gibbs.prune_gibbs(small_cnn(), schedule, skip="conv1"))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tf_gibbs.strip_pruning(model)
  messages = [str(w.message) for w in caught]
  assert len(messages) == 1, messages
  assert "nothing has been pruned yet" in messages[0]
  assert all(name in messages[0] for name in ("conv2", "dense1", "logits"))
  assert "UpdatePruningStep" in messages[0]


def test_strip_a_single_wrapper():
  wrapper = tf_gibbs.prune_gibbs(keras.layers.Dense(8), tf_gibbs.GibbsSchedule(0.5, end_step=0))
  x = tf.constant(np.random.RandomState(0).randn(4, 6).astype("float32"))
  wrapper(x)  # builds it
  wrapper.pruning_step.assign(0)
  expected = wrapper(x, training=False)
  layer = tf_gibbs.strip_pruning(wrapper)
  assert type(layer) is keras.layers.Dense
  np.testing.assert_allclose(layer(x).numpy(), expected.numpy(), rtol=1e-6)
  assert (layer.kernel.numpy() == 0).sum() == 24


def test_tflite_predictions_equal_keras(tmp_path):
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  model, x = _trained_pruned_model()
  stripped = tf_gibbs.strip_pruning(model)
  converter = tf.lite.TFLiteConverter.from_keras_model(stripped)
  flatbuffer = converter.convert()
  interpreter = Interpreter(model_content=flatbuffer)
  runner = interpreter.get_signature_runner()
  input_name = list(runner.get_input_details())[0]
  outputs = runner(**{input_name: x[:16]})
  tflite_out = next(iter(outputs.values()))
  np.testing.assert_allclose(tflite_out, stripped.predict(x[:16], verbose=0), rtol=1e-4,
                             atol=1e-5)
