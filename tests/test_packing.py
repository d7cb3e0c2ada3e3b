"""tf_gibbs.pack_narrow_convs: narrow convolutions rewritten to fill SIMD tiles, outputs unchanged."""

import numpy as np
import pytest
import tf_keras as keras

import tf_gibbs
from helpers import litert_predict
from helpers import random_batchnorm
from helpers import random_biases
from helpers import Subclassed

L = keras.layers


def _randomize(model, seed=0):
  """Random biases and BatchNormalization statistics (the folds must use all of them)."""
  random_batchnorm(model, seed)
  random_biases(model, seed)


def _packed_and_checked(model, tile, seed):
  """Randomizes ``model``'s biases and statistics, packs it, and checks the outputs on a random
  batch of its input shape."""
  _randomize(model, seed)
  packed, report = tf_gibbs.pack_narrow_convs(model, tile=tile)
  shape = (2,) + tuple(model.input_shape[1:])
  _same(model, packed, np.random.RandomState(seed).randn(*shape).astype("float32"))
  return packed, report


def _same(model, packed, x):
  expected, got = model.predict(x, verbose=0), packed.predict(x, verbose=0)
  for e, g in zip(*(o if isinstance(o, list) else [o] for o in (expected, got))):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * np.abs(e).max())
  return expected


def residual_model(width=12, kernel=3):
  inputs = keras.Input((10, width, 5))
  x = L.Conv2D(16, 3, padding="same", name="stem")(inputs)
  y = L.Conv2D(4, kernel, padding="same", use_bias=False, name="narrow")(x)
  y = L.BatchNormalization(name="narrow_bn")(y)
  y = L.ReLU(name="narrow_relu")(y)
  y = L.Conv2D(16, 3, padding="same", name="wide")(y)
  x = L.Add(name="add")([x, y])
  z = L.Conv2D(3, (3, 1), padding="same", activation="tanh", name="narrow_tanh")(x)  # model output
  return keras.Model(inputs, [L.GlobalAveragePooling2D(name="gap")(x), z])


@pytest.mark.parametrize("tile,factor", [(8, 2), (16, 4)])
def test_packed_model_computes_the_same_outputs(tile, factor):
  packed, report = _packed_and_checked(residual_model(), tile=tile, seed=1)
  # 4 filters: factor tile // 4 (both divide the width 12); 3 filters at tile 8: 2 columns
  assert report["packed"]["narrow"] == {"factor": factor, "folded": ["narrow_bn", "narrow_relu"]}
  assert report["packed"]["narrow_tanh"]["factor"] == {8: 2, 16: 4}[tile] and \
      report["packed"]["narrow_tanh"]["folded"] == []
  assert "stem" not in report["packed"] and "wide" not in report["packed"]
  conv = packed.get_layer("narrow")
  assert conv.filters == 4 * factor and tuple(conv.strides) == (1, factor)
  assert tuple(conv.kernel_size) == (3, 3 + factor - 1) and conv.get_config()["activation"] == "relu"
  names = [layer.name for layer in packed.layers]
  assert "narrow_bn" not in names and "narrow_relu" not in names and "narrow_unpack" in names


def test_factor_falls_back_to_one_that_divides_the_width():
  # tile 16 / 4 filters = 4 columns, but 10 % 4 != 0 -> 2
  _, report = _packed_and_checked(residual_model(width=10), tile=16, seed=2)
  assert report["packed"]["narrow"]["factor"] == 2


def test_even_kernel_width_and_odd_width_left_alone():
  inputs = keras.Input((7, 7, 2))
  y = L.Conv2D(4, (2, 4), padding="same", name="even")(inputs)  # 7 columns: no factor divides
  model = keras.Model(inputs, L.Conv2D(4, 3, padding="same", name="after")(y))
  packed, report = tf_gibbs.pack_narrow_convs(model, tile=8)
  assert report["packed"] == {}
  inputs = keras.Input((6, 8, 2))
  model = keras.Sequential([inputs, L.Conv2D(4, (2, 4), padding="same", name="even")])
  _, report = _packed_and_checked(model, tile=8, seed=3)
  assert report["packed"]["even"]["factor"] == 2


def test_strided_valid_and_wide_convs_left_alone_and_only_sole_consumers_folded():
  inputs = keras.Input((8, 8, 3))
  a = L.Conv2D(4, 3, strides=2, padding="same", name="strided")(inputs)
  b = L.Conv2D(4, 3, padding="valid", name="valid")(inputs)
  c = L.Conv2D(12, 3, padding="same", name="wide")(inputs)
  model = keras.Model(inputs, [a, b, c])
  assert tf_gibbs.pack_narrow_convs(model, tile=16)[1]["packed"] == {}
  # the BatchNormalization is folded (the conv's only consumer), the activations after it are
  # not (two of them); a conv output with two consumers folds nothing
  inputs = keras.Input((8, 8, 3))
  y = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, padding="same", name="conv")(inputs))
  z = L.Conv2D(4, 3, padding="same", name="conv2")(inputs)
  outputs = [L.ReLU(name="r1")(y), L.ReLU(name="r2")(y), L.BatchNormalization(name="bn2")(z), z]
  _, report = _packed_and_checked(keras.Model(inputs, outputs), tile=8, seed=4)
  assert report["packed"] == {"conv": {"factor": 2, "folded": ["bn"]},
                              "conv2": {"factor": 2, "folded": []}}


def test_shrunk_then_packed_model_matches_in_litert():
  """The deployment path: zero filters removed by shrink, the narrow remainder packed."""
  inputs = keras.Input((16, 16, 3))
  x = L.Conv2D(16, 3, padding="same", use_bias=False, name="c1")(inputs)
  x = L.ReLU(name="r1")(L.BatchNormalization(name="b1")(x))
  x = L.Conv2D(16, 3, padding="same", name="c2")(x)
  model = keras.Model(inputs, L.Dense(5, name="out")(L.GlobalAveragePooling2D(name="gap")(x)))
  _randomize(model, 5)
  weights = model.get_layer("c1").get_weights()
  weights[0][..., 1::2] = 0.0  # 8 of 16 filters pruned
  model.get_layer("c1").set_weights(weights)
  shrunk, _ = tf_gibbs.shrink(model)
  assert shrunk.get_layer("c1").filters == 8
  packed, report = tf_gibbs.pack_narrow_convs(shrunk, tile=16)
  assert report["packed"]["c1"] == {"factor": 2, "folded": ["b1", "r1"]}
  x = np.random.RandomState(5).rand(4, 16, 16, 3).astype("float32")
  expected = _same(model, packed, x)
  got = litert_predict(packed, x)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_bad_input():
  model = residual_model()
  with pytest.raises(TypeError, match="`tile` must be an int"):
    tf_gibbs.pack_narrow_convs(model, tile=16.0)
  with pytest.raises(ValueError, match="`tile` must be >= 2"):
    tf_gibbs.pack_narrow_convs(model, tile=1)
  with pytest.raises(ValueError, match="subclassed"):
    sub = Subclassed()
    sub(np.zeros((1, 4), "float32"))
    tf_gibbs.pack_narrow_convs(sub)
  wrapped = tf_gibbs.prune_gibbs(residual_model())
  with pytest.raises(ValueError, match="strip it first"):
    tf_gibbs.pack_narrow_convs(wrapped)
  with pytest.raises(TypeError, match="tf_keras"):
    tf_gibbs.pack_narrow_convs("model")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_packed_model_saves_and_loads(tmp_path, suffix):
  model = residual_model()
  _randomize(model, 6)
  packed, _ = tf_gibbs.pack_narrow_convs(model, tile=8)
  path = str(tmp_path / f"packed{suffix}")
  packed.save(path)
  loaded = keras.models.load_model(path)
  x = np.random.RandomState(6).randn(2, 10, 12, 5).astype("float32")
  _same(packed, loaded, x)
