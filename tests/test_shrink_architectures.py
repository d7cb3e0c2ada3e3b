"""shrink on the models users have: tf_keras.applications CNNs, a Transformer block, a text CNN.

Zero filters stand in for filter pruning on the applications models (training them, even for a
step, would cost minutes of tracing); the two text models are pruned for real.
"""

import numpy as np
import pytest
import tf_keras as keras

import tf_gibbs
from helpers import random_batchnorm

L = keras.layers
APPLICATIONS = ["MobileNetV2", "MobileNetV3Small", "EfficientNetB0", "ResNet50V2",
                pytest.param("DenseNet121", marks=pytest.mark.slow),  # ~24 s
                pytest.param("NASNetMobile", marks=pytest.mark.slow)]  # ~36 s


def _zero_filters(model, fraction, seed=0):
  """Zeroes ``fraction`` of the filters of every Conv2D / Dense and channels of every
  DepthwiseConv2D, as stripping a filter-pruned model leaves them."""
  rng = np.random.RandomState(seed)
  for layer in model.layers:
    if type(layer) in (L.Conv2D, L.Dense, L.DepthwiseConv2D):
      weights = layer.get_weights()
      depthwise = type(layer) is L.DepthwiseConv2D
      chosen = rng.rand(weights[0].shape[-2 if depthwise else -1]) < fraction
      if depthwise:
        weights[0][..., chosen, :] = 0.0
      else:
        weights[0][..., chosen] = 0.0
      layer.set_weights(weights)


def _assert_shrinks_exactly(model, x):
  shrunk, report = tf_gibbs.shrink(model)
  expected, got = model.predict(x, verbose=0), shrunk.predict(x, verbose=0)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * max(np.abs(expected).max(), 1))
  assert [(t.dtype, tuple(t.shape)) for t in shrunk.inputs] == [
      (t.dtype, tuple(t.shape)) for t in model.inputs]
  for layer in shrunk.layers:  # no layer is rebuilt with zero channels
    for weight in layer.weights:
      assert 0 not in weight.shape, (layer.name, weight.shape)
  return shrunk, report


@pytest.mark.parametrize("name", APPLICATIONS)
def test_applications_shrink_with_equal_outputs(name):
  model = getattr(keras.applications, name)(input_shape=(32, 32, 3), weights=None, classes=10)
  random_batchnorm(model)
  _zero_filters(model, 0.5)
  shrunk, report = _assert_shrinks_exactly(
      model, np.random.RandomState(0).rand(2, 32, 32, 3).astype("float32"))
  if name != "NASNetMobile":  # its cells tie every channel to a live one
    assert shrunk.count_params() < model.count_params()
  assert report["params_before"] == model.count_params()


def test_a_layer_whose_filters_are_all_zero_keeps_one_channel():
  model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, classes=10,
                                         alpha=0.35)
  random_batchnorm(model)
  _zero_filters(model, 1.0)
  _assert_shrinks_exactly(model, np.random.RandomState(0).rand(2, 32, 32, 3).astype("float32"))


def _fit_filter_pruned(model, x, y):
  pruned = tf_gibbs.prune_gibbs(model, tf_gibbs.GibbsSchedule(0.5, end_step=2),
                                hamiltonian="filter", skip=["logits"])
  pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  pruned.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[tf_gibbs.UpdatePruningStep()])
  return tf_gibbs.strip_pruning(pruned)


def test_text_cnn_keeps_its_integer_input_and_shrinks():
  tokens = keras.Input((20,), dtype="int32", name="tokens")
  h = L.Embedding(2000, 16, name="embed")(tokens)
  h = L.Conv1D(32, 3, activation="relu", name="conv")(h)
  h = L.GlobalMaxPooling1D()(h)
  h = L.Dense(16, activation="relu", name="fc")(h)
  model = keras.Model(tokens, L.Dense(3, name="logits")(h))
  rng = np.random.RandomState(0)
  x, y = rng.randint(0, 2000, (16, 20)).astype("int32"), rng.randint(0, 3, 16)
  stripped = _fit_filter_pruned(model, x, y)
  shrunk, _ = _assert_shrinks_exactly(stripped, x)
  assert shrunk.get_layer("conv").filters == 16 and shrunk.inputs[0].dtype == "int32"


def test_transformer_block_shrinks_its_feed_forward_units():
  inputs = keras.Input((10, 16))
  attention = L.MultiHeadAttention(2, 8, name="mha")(inputs, inputs)
  h = L.LayerNormalization(name="norm1")(L.Add()([inputs, attention]))
  ffn = L.Dense(32, activation="relu", name="ffn1")(h)
  ffn = L.Dense(16, name="ffn2")(ffn)
  h = L.LayerNormalization(name="norm2")(L.Add()([h, ffn]))
  h = L.GlobalAveragePooling1D()(h)
  model = keras.Model(inputs, L.Dense(3, name="logits")(h))
  rng = np.random.RandomState(0)
  x, y = rng.randn(16, 10, 16).astype("float32"), rng.randint(0, 3, 16)
  stripped = _fit_filter_pruned(model, x, y)
  shrunk, report = _assert_shrinks_exactly(stripped, x)
  assert shrunk.get_layer("ffn1").units == 16
  assert "mha" in report["left_as_is"]
