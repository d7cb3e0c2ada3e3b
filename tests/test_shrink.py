"""tf_gibbs.shrink: pruned channels physically removed, outputs unchanged."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tf_gibbs
from helpers import compile_model
from helpers import litert_predict
from helpers import random_batchnorm
from helpers import random_biases
from helpers import random_data
from helpers import Subclassed
from helpers import small_cnn

L = keras.layers


def _zero_outputs(model, name, channels):
  """Zeroes output channels ``channels`` of layer ``name``'s kernel (not its bias)."""
  layer = model.get_layer(name)
  weights = layer.get_weights()
  weights[0][..., channels] = 0.0
  layer.set_weights(weights)


def _assert_same_outputs(model, shrunk, x):
  expected, got = model.predict(x, verbose=0), shrunk.predict(x, verbose=0)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def _filters(model, name):
  layer = model.get_layer(name)
  return layer.kernel.shape[-1]


def sequential_cnn(padding="same"):
  return keras.Sequential([
      keras.Input((8, 8, 1)),
      L.Conv2D(6, 3, activation="relu", name="conv1"),
      L.BatchNormalization(name="bn1"),
      L.MaxPooling2D(name="pool"),
      L.Conv2D(8, 3, padding=padding, name="conv2"),
      L.ReLU(name="relu2"),
      L.Flatten(name="flatten"),
      L.Dropout(0.5, name="dropout"),
      L.Dense(10, name="logits"),
  ], name="sequential_cnn")


@pytest.mark.parametrize("borders", ["map", "channel"])
def test_sequential_cnn_loses_its_zero_filters_and_keeps_its_outputs(borders, tmp_path):
  model = sequential_cnn()
  random_batchnorm(model)
  random_biases(model)
  _zero_outputs(model, "conv1", [0, 2, 5])
  _zero_outputs(model, "conv2", [1, 4, 6, 7])
  shrunk, report = tf_gibbs.shrink(model, borders=borders)
  assert _filters(shrunk, "conv2") == 4
  assert report["layers"]["conv2"] == {"before": 8, "after": 4, "kept_constant": 0}
  # conv1's zero filters become nonzero constants after ReLU(bias) and BatchNormalization and
  # reach the 'same' conv2, where zero padding makes their contribution vary near the borders.
  if borders == "map":  # ... which a SpatialBias adds back before conv2's activation
    assert _filters(shrunk, "conv1") == 3 and report["carrier"] == {}
    assert report["spatial_bias"] == ["conv2_border"]
    border = shrunk.get_layer("conv2_border")
    assert border.input.node.layer.name == "conv2"
    assert np.count_nonzero(border.bias.numpy()[1:-1, 1:-1]) == 0  # zero inside the image
  else:  # ... or one of them stays and carries the others
    assert _filters(shrunk, "conv1") == 4 and report["spatial_bias"] == []
    assert report["carrier"] == {"conv2": int(report["carrier"]["conv2"])}
  assert shrunk.get_layer("logits").kernel.shape == (3 * 3 * 4, 10)
  assert report["params_after"] < report["params_before"] == model.count_params()
  x, _ = random_data(32)
  _assert_same_outputs(model, shrunk, x)
  np.testing.assert_allclose(litert_predict(shrunk, x), model.predict(x, verbose=0),
                             rtol=1e-4, atol=1e-4)
  for filename in ("shrunk.keras", "shrunk.h5"):
    shrunk.save(tmp_path / filename)
    _assert_same_outputs(shrunk, keras.models.load_model(tmp_path / filename), x)


def test_zero_filters_whose_constants_fold_into_the_bias_all_go():
  model = sequential_cnn(padding="valid")  # constants of removed inputs: same everywhere
  random_batchnorm(model)
  random_biases(model)
  _zero_outputs(model, "conv1", [0, 2, 5])
  shrunk, report = tf_gibbs.shrink(model)
  assert _filters(shrunk, "conv1") == 3 and report["carrier"] == {}
  assert shrunk.get_layer("conv2").kernel.shape.as_list() == [3, 3, 3, 8]
  _assert_same_outputs(model, shrunk, random_data(16)[0])


def resnet_block():
  inputs = keras.Input((8, 8, 3))
  h = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inputs)
  h = L.ReLU()(L.BatchNormalization(name="bn1")(h))
  h = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="conv2")(h)
  h = L.BatchNormalization(name="bn2")(h)
  shortcut = L.Conv2D(8, 1, strides=2, use_bias=False, name="proj")(inputs)
  shortcut = L.BatchNormalization(name="proj_bn")(shortcut)
  h = L.ReLU()(L.Add()([h, shortcut]))
  h = L.GlobalAveragePooling2D()(h)
  return keras.Model(inputs, L.Dense(5, name="logits")(h), name="resnet_block")


@pytest.mark.parametrize("borders", ["map", "channel"])
def test_resnet_block_with_projection_shortcut(borders):
  model = resnet_block()
  random_batchnorm(model, seed=1)
  _zero_outputs(model, "conv1", [1, 3, 4, 6])
  # Add ties conv2's and proj's channels: only channels zero in both can go.
  _zero_outputs(model, "conv2", [0, 2, 5])
  _zero_outputs(model, "proj", [2, 5, 7])
  shrunk, report = tf_gibbs.shrink(model, borders=borders)
  assert _filters(shrunk, "conv2") == _filters(shrunk, "proj") == 6    # 2 and 5 go
  assert report["layers"]["conv2"]["kept_constant"] == 1                # channel 0
  assert report["layers"]["proj"]["kept_constant"] == 1                 # channel 7
  assert "conv2" in report["left_as_is"] and "proj" in report["left_as_is"]
  if borders == "map":
    assert _filters(shrunk, "conv1") == 4
    # conv2's map moved past bn2 and the Add (both affine), where it costs one addition
    # after the BatchNormalization, which TFLite folds into conv2.
    assert report["spatial_bias"] == ["conv2_border"]
    assert isinstance(shrunk.get_layer("conv2_border").input.node.layer, L.Add)
  else:
    assert _filters(shrunk, "conv1") == 5 and list(report["carrier"]) == ["conv2"]
  _assert_same_outputs(model, shrunk, np.random.RandomState(0).randn(16, 8, 8, 3))


def test_mlp_units():
  model = keras.Sequential([keras.Input((12,)), L.Dense(16, activation="tanh", name="d1"),
                            L.Dropout(0.2), L.Dense(10, activation="relu", name="d2"),
                            L.Dense(3, name="out")])
  random_biases(model)
  _zero_outputs(model, "d1", list(range(0, 16, 2)))
  _zero_outputs(model, "d2", [9])
  shrunk, report = tf_gibbs.shrink(model)
  assert [l.kernel.shape.as_list() for l in shrunk.layers if isinstance(l, L.Dense)] == [
      [12, 8], [8, 9], [9, 3]]
  assert report["carrier"] == {} and not report["left_as_is"]
  _assert_same_outputs(model, shrunk, np.random.RandomState(0).randn(20, 12))


def test_a_zero_unit_under_softmax_is_not_constant():
  model = keras.Sequential([keras.Input((6,)), L.Dense(5, activation="softmax", name="soft"),
                            L.Dense(3, name="out")])
  random_biases(model)
  _zero_outputs(model, "soft", [1, 2])  # softmax output 1 still varies with the others
  shrunk, _ = tf_gibbs.shrink(model)
  assert _filters(shrunk, "soft") == 5
  _assert_same_outputs(model, shrunk, np.random.RandomState(0).randn(10, 6))


@pytest.mark.parametrize("activation", [
    tf.nn.softmax, lambda z: tf.math.l2_normalize(z, axis=-1), tf.nn.log_softmax,
    lambda z: z / tf.reduce_sum(tf.abs(z), axis=-1, keepdims=True)],
    ids=["tf.nn.softmax", "l2_normalize", "tf.nn.log_softmax", "custom"])
@pytest.mark.parametrize("where", ["dense", "layer"])
def test_channels_stay_through_activations_that_may_mix_them(activation, where):
  inputs = keras.Input((6,))
  if where == "dense":
    h = L.Dense(5, activation=activation, name="fc")(inputs)
  else:
    h = L.Activation(activation, name="act")(L.Dense(5, name="fc")(inputs))
  model = keras.Model(inputs, L.Dense(3, name="out")(h))
  random_biases(model)
  _zero_outputs(model, "fc", [1, 2])
  shrunk, report = tf_gibbs.shrink(model)
  assert _filters(shrunk, "fc") == 5
  _assert_same_outputs(model, shrunk, np.random.RandomState(0).randn(10, 6))
  reason = report["left_as_is"]["fc" if where == "dense" else "act"]
  assert "not known to be element-wise" in reason


@pytest.mark.parametrize("activation", ["relu", "gelu", "swish", tf.nn.relu6, tf.nn.leaky_relu,
                                        "hard_sigmoid", "selu"])
def test_zero_units_go_through_elementwise_activations(activation):
  inputs = keras.Input((6,))
  h = L.Activation(activation, name="act")(L.Dense(5, name="fc")(inputs))
  model = keras.Model(inputs, L.Dense(3, name="out")(h))
  random_biases(model)
  _zero_outputs(model, "fc", [1, 2])
  shrunk, report = tf_gibbs.shrink(model)
  assert _filters(shrunk, "fc") == 3 and not report["left_as_is"]
  _assert_same_outputs(model, shrunk, np.random.RandomState(0).randn(10, 6))


def test_concatenate_and_depthwise_and_reshape():
  inputs = keras.Input((6, 6, 2))
  a = L.Conv2D(4, 1, name="a")(inputs)
  b = L.Conv2D(5, 3, padding="same", activation="relu", name="b")(inputs)
  h = L.Concatenate(name="concat")([a, b])
  h = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(h)
  h = L.Reshape((16, 18), name="reshape")(h)
  h = L.Conv1D(7, 2, name="c1d")(h)
  h = L.Flatten()(h)
  model = keras.Model(inputs, L.Dense(3, name="out")(h))
  random_biases(model)
  _zero_outputs(model, "a", [1])
  _zero_outputs(model, "b", [0, 4])
  _zero_outputs(model, "c1d", [2, 3])
  weights = model.get_layer("dw").get_weights()
  weights[0][..., 6, :] = 0.0          # input channel 6 (b's filter 2): both outputs dead
  model.get_layer("dw").set_weights(weights)
  shrunk, report = tf_gibbs.shrink(model)
  assert _filters(shrunk, "a") == 3 and _filters(shrunk, "b") == 3
  # dw's outputs of channel 6 are constant, but its input (b's filter 2) is not: they stay.
  assert shrunk.get_layer("dw").depthwise_kernel.shape.as_list() == [3, 3, 6, 2]
  assert report["layers"]["dw"] == {"before": 18, "after": 12, "kept_constant": 2}
  assert _filters(shrunk, "c1d") == 5
  assert shrunk.get_layer("out").kernel.shape[0] == 15 * 5
  _assert_same_outputs(model, shrunk, np.random.RandomState(0).randn(8, 6, 6, 2))


def test_dynamic_spatial_size_unsupported_and_shared_layers():
  inputs = keras.Input((None, None, 3))
  shared = L.Conv2D(6, 1, name="shared")
  h = L.Conv2D(6, 3, padding="same", name="conv")(inputs)
  h = L.LayerNormalization(name="norm")(h)           # mixes channels: left as is
  h = L.Conv2D(6, 3, padding="same", activation="relu", name="conv2")(h)
  h = L.Add()([shared(h), shared(h)])
  h = L.GlobalMaxPooling2D()(h)
  model = keras.Model(inputs, L.Dense(2, name="out")(h))
  random_biases(model)
  for name in ("conv", "conv2", "shared"):
    _zero_outputs(model, name, [0, 1])
  shrunk, report = tf_gibbs.shrink(model)
  assert _filters(shrunk, "conv") == 6 and _filters(shrunk, "conv2") == 6
  assert _filters(shrunk, "shared") == 6
  assert "not a layer shrink knows" in report["left_as_is"]["norm"]
  assert "shared layer" in report["left_as_is"]["shared"]
  for size in (5, 9):
    _assert_same_outputs(model, shrunk, np.random.RandomState(size).randn(4, size, size, 3))


def test_carrier_without_static_size():
  inputs = keras.Input((None, None, 2))
  h = L.Conv2D(6, 3, padding="same", activation="relu", name="conv1")(inputs)
  h = L.Conv2D(4, 3, padding="same", name="conv2")(h)
  model = keras.Model(inputs, L.GlobalAveragePooling2D()(h))
  model.get_layer("conv1").bias.assign(np.linspace(0.5, 1.0, 6).astype("float32"))
  _zero_outputs(model, "conv1", [0, 1, 2, 3])
  shrunk, report = tf_gibbs.shrink(model)
  assert _filters(shrunk, "conv1") == 3 and report["carrier"] == {"conv2": 3}
  for size in (3, 7):
    _assert_same_outputs(model, shrunk, np.random.RandomState(size).randn(4, size, size, 2))


def test_pruned_filters_from_gibbs_training_are_removed_and_saved_model_reloads(tmp_path):
  schedule = tf_gibbs.GibbsSchedule(0.5, beta_begin=1.0, beta_end=1e4, end_step=6)
  model = compile_model(tf_gibbs.prune_gibbs(small_cnn(), schedule, hamiltonian="filter",
                                             sampler="exact", skip="logits"))
  x, y = random_data(64)
  model.fit(x, y, batch_size=16, epochs=2, callbacks=[tf_gibbs.UpdatePruningStep()],
            verbose=0)
  stripped = tf_gibbs.strip_pruning(model)
  shrunk, report = tf_gibbs.shrink(stripped)
  assert [_filters(shrunk, n) for n in ("conv1", "conv2", "dense1", "logits")] == [2, 4, 8, 10]
  _assert_same_outputs(model, shrunk, x)
  shrunk.save(tmp_path / "shrunk.keras")
  loaded = keras.models.load_model(tmp_path / "shrunk.keras")
  _assert_same_outputs(shrunk, loaded, x)


@pytest.mark.parametrize("make,error,pattern", [
    (lambda: tf_gibbs.prune_gibbs(small_cnn()), ValueError, "strip it first"),
    (lambda: Subclassed(), ValueError, "subclassed"),
    (lambda: L.Dense(3), TypeError, "Sequential or functional model"),
    (lambda: keras.Sequential([L.Dense(3)]), ValueError, "not built"),
])
def test_shrink_bad_input(make, error, pattern):
  with pytest.raises(error, match=pattern):
    tf_gibbs.shrink(make())
  with pytest.raises(ValueError, match="`borders` must be one of"):
    tf_gibbs.shrink(small_cnn(), borders="pad")

