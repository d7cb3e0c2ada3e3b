"""tf_gibbs.export_tflite and run_tflite: LiteRT predicts what Keras predicts."""

import gzip

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tf_gibbs
from helpers import compile_model
from helpers import random_data
from helpers import small_cnn


def _pruned(end_step=4):
  schedule = tf_gibbs.GibbsSchedule(0.9, beta_begin=1.0, beta_end=1e4, end_step=end_step)
  model = compile_model(tf_gibbs.prune_gibbs(small_cnn(), schedule, skip="conv1"))
  x, y = random_data(64)
  model.fit(x, y, batch_size=16, epochs=1, callbacks=[tf_gibbs.UpdatePruningStep()], verbose=0)
  return model, x


@pytest.fixture(scope="module")
def pruned():
  keras.utils.set_random_seed(0)
  return _pruned()


@pytest.mark.parametrize("sparse", [True, False])
def test_export_of_a_wrapped_model_strips_it_and_matches_keras(pruned, tmp_path, sparse):
  model, x = pruned
  path = tmp_path / "sub" / "model.tflite"
  flatbuffer = tf_gibbs.export_tflite(model, path=path, sparse=sparse)
  with open(path, "rb") as f:
    assert f.read() == flatbuffer
  expected = model.predict(x, verbose=0)
  np.testing.assert_allclose(tf_gibbs.run_tflite(flatbuffer, x), expected, rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(tf_gibbs.run_tflite(str(path), x[:3]), expected[:3], rtol=1e-4,
                             atol=1e-4)


def test_sparse_export_is_not_larger_and_quantized_exports_are_smaller_and_close(pruned):
  model, x = pruned
  stripped = tf_gibbs.strip_pruning(model)
  expected = stripped.predict(x, verbose=0)
  dense = tf_gibbs.export_tflite(stripped, sparse=False)
  sparse = tf_gibbs.export_tflite(stripped)
  assert len(gzip.compress(sparse)) <= len(gzip.compress(dense))
  scale = np.abs(expected).max()
  for quantize, kwargs in (("dynamic", {}), ("float16", {}),
                           ("int8", {"representative_data": x})):
    for sparse in (False, True):
      flatbuffer = tf_gibbs.export_tflite(stripped, quantize=quantize, sparse=sparse, **kwargs)
      assert len(flatbuffer) < len(dense), quantize
      if sparse and quantize != "float16":  # XNNPACK cannot prepare sparse int8 weights
        with pytest.warns(UserWarning, match="built-in kernels"):
          got = tf_gibbs.run_tflite(flatbuffer, x)
      else:
        got = tf_gibbs.run_tflite(flatbuffer, x)
      assert got.dtype == np.float32
      assert np.abs(got - expected).max() < 0.1 * scale, quantize
      assert np.mean(got.argmax(-1) == expected.argmax(-1)) > 0.8, quantize


def test_int8_calibration_data_as_a_dataset_or_a_generator(pruned):
  model, x = pruned
  expected = tf_gibbs.strip_pruning(model).predict(x, verbose=0)
  dataset = tf.data.Dataset.from_tensor_slices(x).batch(8)

  def generator():
    for i in range(len(x)):
      yield [x[i:i + 1]]

  for data in (dataset, generator):
    got = tf_gibbs.run_tflite(tf_gibbs.export_tflite(
        model, sparse=False, quantize="int8", representative_data=data), x)
    assert np.mean(got.argmax(-1) == expected.argmax(-1)) > 0.8


def test_shrunk_export_matches_and_multi_input_models_run_by_name():
  a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
  h = keras.layers.Concatenate()([keras.layers.Dense(5, name="da")(a), b])
  model = keras.Model([a, b], [keras.layers.Dense(2, name="o1")(h),
                               keras.layers.Dense(1, name="o2")(h)])
  w = model.get_layer("da").get_weights()
  w[0][:, [1, 3]] = 0
  model.get_layer("da").set_weights(w)
  shrunk, _ = tf_gibbs.shrink(model)
  assert shrunk.get_layer("da").kernel.shape[-1] == 3
  rng = np.random.RandomState(0)
  xa, xb = rng.randn(6, 4).astype("float32"), rng.randn(6, 3).astype("float32")
  outputs = tf_gibbs.run_tflite(tf_gibbs.export_tflite(shrunk), {"a": xa, "b": xb})
  expected = model.predict([xa, xb], verbose=0)
  got = sorted(outputs.values(), key=lambda v: v.shape[-1], reverse=True)
  for g, e in zip(got, expected):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="dict by name"):
    tf_gibbs.run_tflite(tf_gibbs.export_tflite(shrunk), xa)
  with pytest.raises(ValueError, match="exactly the model's inputs"):
    tf_gibbs.run_tflite(tf_gibbs.export_tflite(shrunk), {"a": xa})


@pytest.mark.parametrize("kwargs,error,pattern", [
    ({"quantize": "int4"}, ValueError, "`quantize` must be one of"),
    ({"quantize": "int8"}, ValueError, "needs `representative_data`"),
    ({"representative_data": np.zeros((2, 8, 8, 1))}, ValueError, "only with"),
    ({"quantize": "int8", "representative_data": np.zeros((0, 8, 8, 1))}, ValueError,
     "non-empty"),
    ({"sparse": "yes"}, TypeError, "`sparse`"),
    ({"path": 5}, TypeError, "`path`"),
    ({"model": keras.layers.Dense(3)}, TypeError, r"a Keras model \(tf_keras or Keras 3\)"),
])
def test_export_bad_input(kwargs, error, pattern):
  kwargs.setdefault("model", small_cnn())
  with pytest.raises(error, match=pattern):
    tf_gibbs.export_tflite(**kwargs)


def test_run_tflite_bad_input():
  with pytest.raises(TypeError, match="flatbuffer bytes or a .tflite path"):
    tf_gibbs.run_tflite(small_cnn(), np.zeros((1, 8, 8, 1)))
