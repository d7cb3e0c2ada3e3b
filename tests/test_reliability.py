"""No shared state with the user's model, one step per training step, no silent results (#20)."""

import warnings

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tf_gibbs
from helpers import compile_model
from helpers import random_data
from helpers import small_cnn
from helpers import wrappers

L = keras.layers

PRUNE = {
    "gibbs": lambda m: tf_gibbs.prune_gibbs(m, tf_gibbs.GibbsSchedule(0.5, end_step=4)),
    "l0": lambda m: tf_gibbs.prune_l0(m, schedule=tf_gibbs.L0Schedule(target_sparsity=0.5,
                                                                      end_step=4)),
    "adaptive": lambda m: tf_gibbs.prune_adaptive(m, 0.5, min_weights=10, end_step=4),
}


def _fit(model, epochs=2, x=None, y=None):
  if x is None:
    x, y = random_data(16)
  compile_model(model)
  model.fit(x, y, batch_size=8, epochs=epochs, verbose=0,
            callbacks=[tf_gibbs.UpdatePruningStep()])
  return model


# --- 2. the user's model never changes ---------------------------------------------------------


@pytest.mark.parametrize("method", sorted(PRUNE))
def test_pruning_training_and_stripping_leave_the_original_model_unchanged(method):
  model = small_cnn()
  before = [w.copy() for w in model.get_weights()]
  x, _ = random_data(4)
  expected = model.predict(x, verbose=0)
  pruned = _fit(PRUNE[method](model), epochs=3)  # past end_step: the epoch-end write ran
  tf_gibbs.strip_pruning(pruned)
  for b, a in zip(before, model.get_weights()):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(model.predict(x, verbose=0), expected)
  # The pruned model starts from the original's weights.
  fresh = PRUNE[method](model)
  own = {id(v) for v in model.weights}
  assert not [v.name for v in fresh.weights if id(v) in own]


def test_pruning_one_model_twice_gives_independent_models():
  model = small_cnn()
  first, second = PRUNE["gibbs"](model), PRUNE["gibbs"](model)
  ids = {id(v) for v in first.weights}
  assert not [v.name for v in second.weights if id(v) in ids]
  _fit(first)
  np.testing.assert_array_equal(wrappers(second)[0].layer.kernel.numpy(),
                                model.get_layer("conv1").kernel.numpy())


def test_activity_regularizer_keeps_working_in_the_pruned_model():
  inputs = keras.Input((8,))
  h = L.Dense(6, name="fc", activity_regularizer=keras.regularizers.L2(0.5))(inputs)
  model = keras.Model(inputs, L.Dense(2, name="out")(h))
  pruned = tf_gibbs.prune_gibbs(model, tf_gibbs.GibbsSchedule(0.5, end_step=4), skip=["out"])
  x = np.random.RandomState(0).randn(4, 8).astype("float32")
  pruned(x, training=False)
  fc = pruned.get_layer(wrappers(pruned)[0].name)
  expected = 0.5 * np.sum(np.square(fc(x, training=False).numpy())) / 4
  pruned(x, training=False)
  np.testing.assert_allclose(sum(float(l) for l in pruned.losses), expected, rtol=1e-5)
  pruned.compile("adam", "mse")
  pruned.fit(x, np.zeros((4, 2)), epochs=1, verbose=0, callbacks=[tf_gibbs.UpdatePruningStep()])


# --- 3. a shared layer counts one step per training step and uses one mask ---------------------


def test_shared_wrapper_counts_one_step_and_uses_one_mask_per_step():
  shared = tf_gibbs.prune_gibbs(L.Dense(6, name="shared"),
                                tf_gibbs.GibbsSchedule(0.5, beta_begin=1e-3, beta_end=1e-3,
                                                       end_step=100))
  a, b = keras.Input((8,)), keras.Input((8,))
  ha, hb = shared(a), shared(b)
  model = keras.Model([a, b], L.Subtract()([ha, hb]))
  x = np.random.RandomState(0).randn(8, 8).astype("float32")
  model.compile("sgd", "mse")
  model.fit([x, x], np.zeros((8, 6)), batch_size=8, epochs=3, verbose=0,
            callbacks=[tf_gibbs.UpdatePruningStep()])
  assert int(shared.pruning_step) == 3
  # Identical inputs through one mask give identical outputs: the difference is exactly 0 in
  # training mode too (at β = 1e-3 two masks would differ almost surely). In a traced step,
  # as in fit; called eagerly, every call of a wrapper is a step of its own.
  out = tf.function(lambda a, b: model([a, b], training=True))(x, x).numpy()
  assert int(shared.pruning_step) == 4
  np.testing.assert_array_equal(out, np.zeros_like(out))


# --- 5. tfmot's strip_pruning before end_step is loud -------------------------------------------


@pytest.mark.parametrize("method", sorted(PRUNE))
def test_tfmot_strip_before_the_end_warns_and_after_it_is_exact_and_quiet(method):
  import tensorflow_model_optimization as tfmot  # pylint: disable=g-import-not-at-top
  pruned = _fit(PRUNE[method](small_cnn()), epochs=1)  # 2 steps of 4
  if method == "l0":  # two steps leave every gate open (z = 1): close one, as training would
    gates = wrappers(pruned)[0].gate_parameter
    gates.assign(tf.tensor_scatter_nd_update(tf.reshape(gates, [-1]), [[0]], [-1.0]).numpy()
                 .reshape(gates.shape))
  with pytest.warns(UserWarning, match=r"tfmot.*strip_pruning.*\['conv1'.*tf_gibbs.strip_pruning"):
    tfmot.sparsity.keras.strip_pruning(pruned)
  _fit(pruned, epochs=2)  # past end_step; the epoch-end write makes the kernels deployable
  x, _ = random_data(4)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
  np.testing.assert_allclose(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0),
                             rtol=1e-5, atol=1e-6)


# --- 6. layers left dense are named, with the reason --------------------------------------------


def _zoo():
  tokens = keras.Input((6,), dtype="int32", name="tokens")
  e = L.Embedding(20, 8, name="embed")(tokens)
  r = L.LSTM(4, return_sequences=True, name="lstm")(e)
  t = L.TimeDistributed(L.Dense(3), name="td")(r)
  a = L.MultiHeadAttention(2, 4, name="mha")(t, t)
  image = keras.Input((8, 8, 2), name="image")
  s = L.SeparableConv2D(4, 3, name="sep")(image)
  s = L.Conv2DTranspose(3, 3, name="deconv")(s)
  s = L.Flatten()(s)
  v = L.Conv3D(2, 1, name="conv3d")(L.Reshape((8, 8, 2, 1))(image))
  h = L.Concatenate()([L.Flatten()(a), s, L.Flatten()(v)])
  return keras.Model([tokens, image], L.Dense(2, name="head")(h))


def test_unsupported_layers_are_named_with_their_reason_in_a_warning_and_the_report():
  with pytest.warns(UserWarning) as caught:
    pruned = tf_gibbs.prune_gibbs(_zoo(), tf_gibbs.GibbsSchedule(0.5))
  text = "\n".join(str(w.message) for w in caught)
  for name, kind in [("embed", "Embedding"), ("lstm", "LSTM"), ("td", "TimeDistributed"),
                     ("mha", "MultiHeadAttention"), ("sep", "SeparableConv2D"),
                     ("deconv", "Conv2DTranspose"), ("conv3d", "Conv3D")]:
    assert f"  {name}: " in text and kind in text
  report = tf_gibbs.sparsity_report(pruned, print_fn=None)
  assert set(report["left_dense"]) == {"embed", "lstm", "td", "mha", "sep", "deconv", "conv3d"}
  assert "not supported" in report["left_dense"]["sep"]


def test_unknown_skip_name_is_an_error_for_a_list_of_layers_too():
  with pytest.raises(ValueError, match=r"`skip` names layers.*\['nope'\]"):
    tf_gibbs.prune_gibbs([L.Dense(2, name="a"), L.Dense(2, name="b")], skip=["a", "nope"])


def test_found_no_layer_names_the_real_reason_and_the_layers():
  with pytest.raises(ValueError, match=r"found no layer.*conv1: .*min_weights=5000.*dense1"):
    tf_gibbs.prune_adaptive(small_cnn(), 0.5, min_weights=5000)
  inputs = keras.Input((8,))
  dense_only = keras.Model(inputs, L.Dense(3, name="fc")(inputs))
  with pytest.raises(ValueError, match=r"found no layer.*fc: .*kernel Hamiltonian"):
    tf_gibbs.prune_gibbs(dense_only, hamiltonian="kernel")


# --- 14. a pruning wrapper inside TimeDistributed ------------------------------------------------


def test_time_distributed_pruning_wrapper_trains_counts_steps_and_strips_exactly():
  inputs = keras.Input((5, 8))
  inner = tf_gibbs.prune_gibbs(L.Dense(6, name="fc"), tf_gibbs.GibbsSchedule(0.5, end_step=4))
  h = L.TimeDistributed(inner, name="td")(inputs)
  model = keras.Model(inputs, L.Dense(2, name="out")(L.Flatten()(h)))
  x = np.random.RandomState(0).randn(8, 5, 8).astype("float32")
  model.compile("adam", "mse")
  model.fit(x, np.zeros((8, 2)), batch_size=8, epochs=6, verbose=0,
            callbacks=[tf_gibbs.UpdatePruningStep()])
  assert int(inner.pruning_step) == 6
  stripped = tf_gibbs.strip_pruning(model)
  kernel = stripped.get_layer("td").layer.kernel.numpy()
  assert type(stripped.get_layer("td").layer) is L.Dense and (kernel == 0).sum() == 24
  np.testing.assert_allclose(stripped.predict(x, verbose=0), model.predict(x, verbose=0),
                             rtol=1e-6, atol=1e-6)


_LOAD_WITHOUT_TF_GIBBS = """
import sys, numpy as np, tf_keras as keras
path, x_path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
assert "tf_gibbs" not in sys.modules
try:
  model = keras.models.load_model(path)
except Exception as error:  # the h5 case: print what the user sees
  print("ERROR", type(error).__name__, error)
  sys.exit(0)
print("LOADED", type(model).__module__, "tf_gibbs" in sys.modules)
np.save(x_path + ".out.npy", model.predict(np.load(x_path), verbose=0))
"""


@pytest.mark.parametrize("kind", [pytest.param("sequential", marks=pytest.mark.slow),  # ~30 s
                                  "functional"])
def test_load_keras_file_in_a_process_that_never_imported_tf_gibbs(kind, tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  if kind == "sequential":
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="d1"),
                              keras.layers.Dense(2, name="d2")])
  else:
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="d")(keras.layers.Dense(4)(inputs)))
  pruned = tf_gibbs.prune_gibbs(model, tf_gibbs.GibbsSchedule(0.5, end_step=4), seed=1)
  assert isinstance(pruned, keras.Sequential) == (kind == "sequential")
  x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
  np.save(tmp_path / "x.npy", x)
  script = tmp_path / "load.py"
  script.write_text(_LOAD_WITHOUT_TF_GIBBS)
  pruned.save(tmp_path / "m.keras")
  out = subprocess.run([sys.executable, str(script), str(tmp_path / "m.keras"),
                        str(tmp_path / "x.npy"), "keras"], capture_output=True, text=True,
                       check=True).stdout
  assert "LOADED tf_gibbs.prune True" in out, out  # the file's model class imported tf_gibbs
  np.testing.assert_allclose(np.load(tmp_path / "x.npy.out.npy"),
                             pruned.predict(x, verbose=0), atol=1e-6)
  # .h5 (the legacy format reads classes by name only): an error that names tf_gibbs' class.
  pruned.save(tmp_path / "m.h5")
  out = subprocess.run([sys.executable, str(script), str(tmp_path / "m.h5"),
                        str(tmp_path / "x.npy"), "h5"], capture_output=True, text=True,
                       check=True).stdout
  assert "ERROR" in out and "Unknown layer: 'TfGibbsPruned" in out, out
  # A stripped model is Keras' own class again: it loads without tf_gibbs, like any model.
  stripped = tf_gibbs.strip_pruning(pruned)
  assert type(stripped).__module__.startswith("tf_keras")
