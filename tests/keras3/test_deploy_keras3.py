"""Deployment of Keras 3 models on the current backend: shrink, pack_narrow_convs, the sparsity
report and LiteRT export give what they give for tf_keras models (one implementation), and
never modify the user's model."""

import keras
import numpy as np
import pytest

import tf_gibbs

from conftest import to_numpy

L = keras.layers


def residual_cnn():
  """Conv-BN-ReLU, a residual Add, a Concatenate, pooling, a 1×1 conv, Flatten → Dense; c1 and
  c2 have zero filters (c1's become constants 5 through BN and ReLU, so the 'same' conv c2
  needs the border correction), c3 one."""
  inputs = keras.Input((8, 8, 3), name="image")
  x = L.Conv2D(8, 3, padding="same", name="c1")(inputs)
  x = L.BatchNormalization(name="bn1")(x)
  x = L.ReLU(name="r1")(x)
  y = L.Conv2D(8, 3, padding="same", name="c2")(x)
  y = L.BatchNormalization(name="bn2")(y)
  z = L.Add(name="add")([x, y])
  z = L.Concatenate(name="cat")([z, x])
  z = L.MaxPooling2D(name="pool")(z)
  z = L.Conv2D(6, 1, activation="relu", name="c3")(z)
  z = L.Flatten(name="flat")(z)
  model = keras.Model(inputs, L.Dense(4, name="head")(z), name="residual_cnn")
  rng = np.random.RandomState(0)
  for name in ("bn1", "bn2"):
    layer = model.get_layer(name)
    layer.set_weights([w + rng.rand(*w.shape).astype("float32") for w in layer.get_weights()])
  for name, zero in (("c1", [1, 4, 5]), ("c2", [0, 1, 4, 5, 7]), ("c3", [2])):
    kernel = to_numpy(model.get_layer(name).kernel).copy()
    kernel[..., zero] = 0
    model.get_layer(name).kernel.assign(kernel)
  model.get_layer("c1").bias.assign(np.full(8, 5.0, "float32"))
  return model


def images(n=5, seed=1):
  return np.random.RandomState(seed).randn(n, 8, 8, 3).astype("float32")


def weights_of(model):
  return [to_numpy(w).copy() for w in model.weights]


def assert_same_outputs(a, b, x):
  out_a, out_b = to_numpy(a.predict(x, verbose=0)), to_numpy(b.predict(x, verbose=0))
  np.testing.assert_allclose(out_b, out_a, rtol=1e-4, atol=1e-4 * np.abs(out_a).max())


@pytest.mark.parametrize("borders", ["map", "channel"])
def test_shrink_removes_constant_channels_with_equal_outputs(borders, tmp_path):
  model = residual_cnn()
  before = weights_of(model)
  shrunk, report = tf_gibbs.shrink(model, borders=borders)
  assert isinstance(shrunk, keras.Model) and not isinstance(shrunk, type(None))
  assert type(shrunk).__module__.startswith("keras")
  assert_same_outputs(model, shrunk, images())
  # c1's zero filters 1, 4, 5 are constants tied to c2's through the Add: both keep the union of
  # their non-constant channels (plus, with borders="channel", one carrier); c3 loses filter 2.
  layers = report["layers"]
  assert layers["c3"] == {"before": 6, "after": 5, "kept_constant": 0}
  assert layers["head"]["after"] == 4
  if borders == "map":
    assert layers["c1"]["after"] == 5 and report["spatial_bias"] == ["c2_border"]
    assert not report["carrier"]
  else:
    assert layers["c1"]["after"] == 6 and not report["spatial_bias"]
    assert set(report["carrier"]) == {"c2"}
  assert report["params_after"] < report["params_before"] == model.count_params()
  assert shrunk.get_layer("c1").kernel.shape[-1] == layers["c1"]["after"]
  for old, new in zip(before, weights_of(model)):  # the user's model is not modified
    np.testing.assert_array_equal(old, new)
  path = str(tmp_path / "shrunk.keras")
  shrunk.save(path)
  np.testing.assert_allclose(to_numpy(keras.models.load_model(path).predict(images(), verbose=0)),
                             to_numpy(shrunk.predict(images(), verbose=0)), rtol=1e-6)


def test_pack_narrow_convs_folds_batchnorm_and_keeps_outputs():
  inputs = keras.Input((16, 16, 3))
  x = L.Conv2D(4, 3, padding="same", name="c1")(inputs)
  x = L.BatchNormalization(name="bn1")(x)
  x = L.ReLU(name="r1")(x)
  x = L.Conv2D(8, 3, padding="same", activation="relu", name="c2")(x)
  model = keras.Model(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(x)))
  bn = model.get_layer("bn1")
  bn.set_weights([w + np.random.RandomState(0).rand(*w.shape).astype("float32")
                  for w in bn.get_weights()])
  packed, report = tf_gibbs.pack_narrow_convs(model, tile=16)
  assert report["packed"] == {"c1": {"factor": 4, "folded": ["bn1", "r1"]},
                              "c2": {"factor": 2, "folded": []}}
  assert packed.get_layer("c1").kernel.shape == (3, 6, 3, 16)
  x = np.random.RandomState(2).randn(3, 16, 16, 3).astype("float32")
  assert_same_outputs(model, packed, x)


def test_sparsity_report_counts_zeros_filters_and_what_shrink_saves(tmp_path):
  model = residual_cnn()
  plot = tmp_path / "sparsity.png"
  report = tf_gibbs.sparsity_report(model, plot=str(plot), print_fn=None)
  rows = {row["name"]: row for row in report["layers"]}
  assert list(rows) == ["c1", "c2", "c3", "head"]
  for name, row in rows.items():
    kernel = to_numpy(model.get_layer(name).kernel)
    assert row["zeros"] == int((kernel == 0).sum())
    assert row["weights"] == kernel.size
  assert rows["c1"]["zero_filters"] == 3 and rows["c2"]["zero_filters"] == 5
  assert rows["c3"]["zero_filters"] == 1
  assert rows["c1"]["macs"] == 8 * 8 * 3 * 3 * 3 * 8
  assert rows["c1"]["params_shrunk"] == 3 * 3 * 3 * 5 + 5
  assert report["total"]["model_params_shrunk"] == report["shrink"]["params_after"]
  assert plot.exists() and plot.stat().st_size > 0


def test_sparsity_report_of_a_wrapped_model_strips_it_first():
  model = keras.Sequential([keras.Input((6,)), L.Dense(8, name="d1"), L.Dense(2, name="d2")])
  # end_step=0: the schedule has ended, so the report's strip gives the final masks.
  pruned = tf_gibbs.prune_gibbs(model, tf_gibbs.GibbsSchedule(0.5, end_step=0), seed=0)
  report = tf_gibbs.sparsity_report(pruned, print_fn=None)
  stripped = tf_gibbs.strip_pruning(pruned)
  for row in report["layers"]:
    kernel = to_numpy(stripped.get_layer(row["name"]).kernel)
    assert row["zeros"] == int((kernel == 0).sum()) == kernel.size // 2


def test_export_tflite_predicts_what_keras_predicts(tmp_path):
  """One export per backend: in this process on TensorFlow, through a TensorFlow-backend
  process on JAX and PyTorch."""
  model, _ = tf_gibbs.shrink(residual_cnn())
  before = weights_of(model)
  path = tmp_path / "out" / "model.tflite"
  flatbuffer = tf_gibbs.export_tflite(model, str(path), sparse=True)
  assert path.read_bytes() == flatbuffer
  x = images()
  expected = to_numpy(model.predict(x, verbose=0))
  np.testing.assert_allclose(tf_gibbs.run_tflite(flatbuffer, x), expected, rtol=1e-4,
                             atol=1e-4 * np.abs(expected).max())
  for old, new in zip(before, weights_of(model)):
    np.testing.assert_array_equal(old, new)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="backend-specific: the quantization options are the converter's, run "
                           "in-process on TensorFlow; JAX and PyTorch pass them to the same "
                           "converter")
@pytest.mark.parametrize("quantize", ["dynamic", "float16", "int8"])
def test_export_tflite_quantized_stays_close(quantize):
  model = residual_cnn()
  x = images(16)
  flatbuffer = tf_gibbs.export_tflite(model, quantize=quantize,
                                      representative_data=x if quantize == "int8" else None)
  expected = to_numpy(model.predict(x, verbose=0))
  out = tf_gibbs.run_tflite(flatbuffer, x)
  assert np.abs(out - expected).max() < 0.1 * np.abs(expected).max()


class _Subclassed(keras.Model):

  def __init__(self):
    super().__init__()
    self.dense = L.Dense(2)

  def call(self, x):
    return self.dense(x)


def test_deploy_bad_input_is_refused_early(tmp_path):
  model = residual_cnn()
  with pytest.raises(ValueError, match="`quantize` must be one of"):
    tf_gibbs.export_tflite(model, quantize="int4")
  with pytest.raises(ValueError, match="is a directory"):
    tf_gibbs.export_tflite(model, str(tmp_path))
  with pytest.raises(ValueError, match="`borders` must be one of"):
    tf_gibbs.shrink(model, borders="pad")
  subclassed = _Subclassed()
  subclassed(np.zeros((1, 3), "float32"))
  with pytest.raises(ValueError, match="subclassed Keras 3 model"):
    tf_gibbs.shrink(subclassed)
  pruned = tf_gibbs.prune_gibbs(model, tf_gibbs.GibbsSchedule(0.5))
  with pytest.raises(ValueError, match="strip it first"):
    tf_gibbs.pack_narrow_convs(pruned)
