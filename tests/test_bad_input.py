"""Bad input fails early with an error that names the argument and what is accepted."""

import os
import subprocess
import sys
import textwrap

import keras as keras3  # Keras 3, installed with TensorFlow
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

import tf_gibbs
from helpers import Subclassed
from helpers import small_cnn
from helpers import wrappers


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
    (lambda: tf_gibbs.GibbsPruning(keras3.layers.Dense(2)), TypeError,
     "Keras 3.*tf_gibbs.keras3"),
    (lambda: tf_gibbs.prune_gibbs([keras.layers.Dense(2), keras3.layers.Dense(2)]), TypeError,
     "`to_prune` mixes Keras 3 objects"),
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
    (lambda: tf_gibbs.strip_pruning([_keras3_model(), small_cnn()]), TypeError,
     "`model` mixes Keras 3"),
    (lambda: tf_gibbs.prune_gibbs(keras.Sequential()), ValueError, "found no layer to prune"),
    (lambda: tf_gibbs.prune_l0(small_cnn(), granularity="block"), ValueError, "granularity"),
    (lambda: tf_gibbs.prune_l0(small_cnn(), mode="sampled"), ValueError, "mode"),
    (lambda: tf_gibbs.prune_adaptive(small_cnn(), 1.5), ValueError, "target_sparsity"),
    (lambda: tf_gibbs.prune_adaptive(small_cnn(), 0.5, budget="energy"), ValueError, "budget"),
    (lambda: tf_gibbs.L0Schedule(target_sparsity=-0.1), ValueError, "target_sparsity"),
    (lambda: tf_gibbs.shrink(_model_with_wrapper()), ValueError, "strip it first"),
    (lambda: tf_gibbs.shrink(small_cnn(), borders="none"), ValueError, "`borders`"),
    (lambda: tf_gibbs.export_tflite(small_cnn(), quantize="int4"), ValueError, "`quantize`"),
    (lambda: tf_gibbs.run_tflite(3, np.zeros(3)), TypeError, "flatbuffer bytes"),
    (lambda: tf_gibbs.sparsity_report(_no_prunable_model()), ValueError, "no Conv1D"),
    (lambda: tf_gibbs.prune_gibbs([keras.layers.Dense(2, name="a")], skip=["a", "nope"]),
     ValueError, r"`skip` names layers that are not in the model: \['nope'\]"),
    (lambda: tf_gibbs.prune_adaptive(small_cnn(), 0.5, min_weights=10**6), ValueError,
     r"found no layer to prune.*Layers considered: conv1: they have fewer than min_weights"),
    (lambda: tf_gibbs.GibbsSchedule.reference("filter", 0, 10, sampler="mcmc"), ValueError,
     r"sampler='mcmc'.*chromatic.*exact"),
    (lambda: tf_gibbs.prune_gibbs(small_cnn(), seed=np.float32(1.5)), ValueError,
     r"`seed` must be None or an integer"),
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


# --- numerical edge cases --------------------------------------------------------------------


def _built(model):
  model.build((None,) + tuple(model.input_shape[1:]))
  return model


def _finish(model, step=10):
  """Puts every wrapper past its schedule's end (as after training)."""
  for w in wrappers(model):
    w.pruning_step.assign(step)
  return model


def _set_kernels(model, fn):
  for w in wrappers(model):
    w.layer.kernel.assign(fn(w.layer.kernel.numpy()).astype("float32"))
  return model


def _nan_at_first(kernel, value=np.nan):
  kernel = kernel.copy()
  kernel.flat[0] = value
  return kernel


def _fit_once(model):
  model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
  x = np.random.RandomState(0).randn(16, 8, 8, 1).astype("float32")
  return model.fit(x, np.zeros(16), batch_size=8, epochs=1, verbose=0,
                   callbacks=[tf_gibbs.UpdatePruningStep()])


def _zeros(model):
  """Zero count and size of every stripped kernel of the wrapped layers."""
  names = {w.layer.name for w in wrappers(model)}
  return [(int((l.kernel.numpy() == 0).sum()), l.kernel.numpy().size)
          for l in tf_gibbs.strip_pruning(model).layers if l.name in names]


def _gibbs(sparsity=0.5, **kwargs):
  return _built(tf_gibbs.prune_gibbs(small_cnn(), tf_gibbs.GibbsSchedule(
      sparsity, end_step=4, **kwargs), seed=0))


METHODS = {
    "gibbs": _gibbs,
    "l0": lambda: _built(tf_gibbs.prune_l0(small_cnn(), schedule=tf_gibbs.L0Schedule(
        target_sparsity=0.5, end_step=4))),
    "adaptive": lambda: _built(tf_gibbs.prune_adaptive(small_cnn(), 0.5, end_step=4,
                                                       min_weights=10)),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_weights_stop_training_and_stripping_with_a_clear_error(method, value):
  model = _set_kernels(METHODS[method](), lambda k: _nan_at_first(k, value))
  with pytest.raises(tf.errors.InvalidArgumentError, match="has a NaN or Inf weight"):
    _fit_once(model)
  with pytest.raises(ValueError, match="NaN or Inf weights"):
    tf_gibbs.strip_pruning(_finish(model))


def _state_variable(wrapper, variable):
  return {"r": lambda: wrapper.r_parameter, "gate_parameter": lambda: wrapper.gate_parameter,
          "log_penalty_factor": lambda: wrapper.log_penalty_factor,
          "bias": lambda: wrapper.layer.bias}[variable]()


@pytest.mark.parametrize("method,variable", [("adaptive", "r"), ("l0", "gate_parameter"),
                                             ("l0", "log_penalty_factor"), ("gibbs", "bias")])
def test_nan_in_method_state_or_bias_stops_training_and_stripping_naming_the_variable(
    method, variable):
  model = METHODS[method]()
  wrapper = wrappers(model)[0]
  state = _state_variable(wrapper, variable)
  value = np.array(state.numpy())
  value.flat[0] = np.nan
  state.assign(value)
  pattern = f"layer '{wrapper.layer.name}' has a NaN or Inf weight in variable '{variable}'"
  with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
    _fit_once(model)
  with pytest.raises(ValueError, match=f"'{wrapper.layer.name}'.*NaN or Inf.*'{variable}'"):
    tf_gibbs.strip_pruning(_finish(model))
  with pytest.raises(ValueError, match=f"'{wrapper.layer.name}'.*NaN or Inf.*'{variable}'"):
    tf_gibbs.sparsity_report(model, print_fn=None)


@pytest.mark.parametrize("method", METHODS)
def test_nan_from_the_last_batch_stops_fit_before_either_strip_could_ship_it(method):
  model = METHODS[method]()
  model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
  x = np.random.RandomState(0).randn(16, 8, 8, 1).astype("float32")
  x[8:] = np.nan  # the second (last) batch makes every weight NaN
  with pytest.raises(ValueError, match="NaN or Inf"):
    model.fit(x, np.zeros(16), batch_size=8, epochs=1, verbose=0, shuffle=False,
              callbacks=[tf_gibbs.UpdatePruningStep()])


@pytest.mark.parametrize("call,argument", [
    (lambda: tf_gibbs.prune_adaptive(small_cnn(), 0.5, loss_weight=1e39), "loss_weight"),
    (lambda: tf_gibbs.prune_adaptive(small_cnn(), 0.5, r_lr_multiplier=1e-46),
     "r_lr_multiplier"),
    (lambda: tf_gibbs.GibbsSchedule(beta_end=1e39), "beta_end"),
    (lambda: tf_gibbs.L0Schedule(l0_strength=1e40), "l0_strength"),
])
def test_numbers_that_overflow_or_vanish_in_float32_are_refused(call, argument):
  with pytest.raises(ValueError, match=f"`{argument}`.*float32"):
    call()


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_all_equal_weights_still_give_the_exact_count(sparsity):
  model = _finish(_set_kernels(_gibbs(sparsity), lambda k: np.full_like(k, 0.1)))
  assert _zeros(model) == [(round(sparsity * n), n) for _, n in _zeros(model)]


def test_target_zero_prunes_nothing():
  model = _finish(_gibbs(0.0))
  assert all(zeros == 0 for zeros, _ in _zeros(model))


def test_a_one_weight_layer_keeps_its_weight():
  # round(p·n) capped at n − 1: a per-layer target never prunes a layer's last weight (#19).
  for sparsity, expected in ((0.4, 0), (0.6, 0)):
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, name="one")])
    pruned = _finish(_built(tf_gibbs.prune_gibbs(model, tf_gibbs.GibbsSchedule(
        sparsity, end_step=4))))
    assert _zeros(pruned) == [(expected, 1)]


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_huge_beta_trains_without_overflow_and_samples_the_magnitude_mask(policy):
  keras.mixed_precision.set_global_policy(policy)
  try:
    model = _gibbs(0.5, beta_begin=1e8, beta_end=1e8)
    history = _fit_once(model)
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert np.isfinite(history.history["loss"]).all()
  for w in wrappers(model):  # at β = 1e8 the sampled mask is the magnitude mask
    kernel = np.abs(w.layer.kernel.numpy())
    assert w.mask.numpy().sum() == kernel.size - round(0.5 * kernel.size)


def test_numpy_scalars_are_accepted_wherever_numbers_are():
  import json  # pylint: disable=g-import-not-at-top
  schedule = tf_gibbs.GibbsSchedule(np.float32(0.5), beta_begin=np.float64(1.0),
                                    beta_end=np.float32(100.0), begin_step=np.int64(0),
                                    end_step=np.int32(10))
  pruned = tf_gibbs.prune_gibbs(small_cnn(), schedule, hamiltonian="filter", seed=np.int64(3),
                                c=np.float32(1.0), mcmc_steps=np.int64(5), sampler="chromatic")
  l0 = tf_gibbs.prune_l0(small_cnn(), schedule=tf_gibbs.L0Schedule(
      np.float32(0.5), target_sparsity=np.float64(0.5), end_step=np.int64(8),
      frequency=np.int32(2)), seed=np.int32(1), gate_lr_multiplier=np.float32(20.0))
  adaptive = tf_gibbs.prune_adaptive(small_cnn(), np.float32(0.5), loss_weight=np.float64(5.0),
                                     end_step=np.int64(8), min_weights=np.int32(10),
                                     r_lr_multiplier=np.float32(0.1))
  for model in (pruned, l0, adaptive):
    for w in wrappers(model):
      json.dumps(w.get_config())  # plain Python numbers in the config
  assert wrappers(pruned)[0].seed == 3 and isinstance(wrappers(pruned)[0].seed, int)


def test_adaptive_on_dynamic_spatial_input_works_with_params_and_refuses_flops_clearly():
  inputs = keras.Input((None, None, 1))
  h = keras.layers.Conv2D(16, 3, name="conv")(inputs)
  h = keras.layers.GlobalAveragePooling2D()(h)
  model = keras.Model(inputs, keras.layers.Dense(10, name="fc")(h))
  pruned = tf_gibbs.prune_adaptive(model, 0.5, budget="params", min_weights=10, end_step=4)
  assert len(wrappers(pruned)) == 2
  with pytest.raises(ValueError, match=r"budget='flops'.*spatial size.*'conv'.*budget='params'"):
    tf_gibbs.prune_adaptive(model, 0.5, budget="flops", min_weights=10, end_step=4)


def test_float64_models_get_a_clear_error():
  # dtype per layer: set_floatx alone is ignored once a test has set a global policy.
  inputs = keras.Input((8, 8, 1), dtype="float64")
  h = keras.layers.Conv2D(4, 3, name="conv1", dtype="float64")(inputs)
  model = keras.Model(inputs, keras.layers.Dense(2, dtype="float64")(keras.layers.Flatten(
      dtype="float64")(h)))
  with pytest.raises(TypeError, match=r"conv1.*float64.*float32"):
    tf_gibbs.prune_gibbs(model)


def _tiny_tflite():
  return tf_gibbs.export_tflite(small_cnn(), sparse=False)


@pytest.mark.parametrize("inputs,pattern", [
    (np.zeros((8, 8, 1), np.float32), r"shape \(8, 8, 1\).*expects \(None, 8, 8, 1\).*x\[None\]"),
    (np.zeros((2, 8, 9, 1), np.float32), r"shape \(2, 8, 9, 1\).*expects \(None, 8, 8, 1\)"),
])
def test_run_tflite_names_the_expected_input_shape(inputs, pattern):
  with pytest.raises(ValueError, match=pattern):
    tf_gibbs.run_tflite(_tiny_tflite(), inputs)


def test_run_tflite_falls_back_only_for_the_xnnpack_prepare_failure(monkeypatch):
  from tf_gibbs import export  # pylint: disable=g-import-not-at-top

  def broken(interpreter, inputs):
    raise RuntimeError("delegate: something else went wrong")

  monkeypatch.setattr(export, "_run", broken)
  with pytest.raises(RuntimeError, match="something else"):
    tf_gibbs.run_tflite(_tiny_tflite(), np.zeros((1, 8, 8, 1), np.float32))


def test_export_to_a_directory_fails_before_converting(tmp_path, monkeypatch):
  monkeypatch.setattr(tf.lite.TFLiteConverter, "from_keras_model",
                      lambda *a: pytest.fail("converted before checking the path"))
  with pytest.raises(ValueError, match="`path`.*is a directory"):
    tf_gibbs.export_tflite(small_cnn(), tmp_path)


def test_tf_keras_used_before_import_tf_gibbs_gets_an_error_naming_the_import_order():
  """``tf.keras`` used before ``import tf_gibbs`` stays Keras 3 in that process: the wrapper
  classes of the tf_keras front refuse its layers with an error that names the import order."""
  script = textwrap.dedent("""
      import tensorflow as tf
      layer = tf.keras.layers.Dense(2)   # tf.keras resolves to Keras 3 here
      import tf_gibbs
      try:
        tf_gibbs.GibbsPruning(tf.keras.layers.Dense(2))
      except TypeError as error:
        print("MESSAGE:", error)
      """)
  # A fresh user's process: tfmot set TF_USE_LEGACY_KERAS in this one.
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=env, check=True)
  assert "MESSAGE:" in result.stdout, result.stderr[-2000:]
  assert "Import tf_gibbs before the first use of `tf.keras`" in result.stdout


def test_the_import_order_hint_is_absent_when_tf_keras_is_tf_keras():
  with pytest.raises(TypeError) as caught:
    tf_gibbs.GibbsPruning(keras3.layers.Dense(2))
  assert "import tf_gibbs" not in str(caught.value)
