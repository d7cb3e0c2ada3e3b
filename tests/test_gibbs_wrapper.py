"""GibbsPruning inside Keras: masks per step, gradients, inference, XLA and tfmot's callbacks."""

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


def _dense_wrapper(schedule, units=6, inputs=10, **kwargs):
  wrapper = tf_gibbs.prune_gibbs(keras.layers.Dense(units, use_bias=False), schedule, **kwargs)
  wrapper.build((None, inputs))
  wrapper.pruning_step.assign(0)
  return wrapper


def test_wrapper_is_a_tfmot_wrapper_named_like_tfmot():
  wrapper = tf_gibbs.prune_gibbs(keras.layers.Dense(3, name="fc"))
  assert isinstance(wrapper, pruning_wrapper.PruneLowMagnitude)
  assert wrapper.name == "gibbs_pruning_fc"


def test_training_call_uses_one_fresh_mask_per_batch_without_gradient_through_it():
  wrapper = _dense_wrapper(tf_gibbs.GibbsSchedule(0.5, beta_begin=1.0, beta_end=1.0))
  x = tf.constant(np.random.RandomState(0).randn(32, 10).astype("float32"))
  kernel = wrapper.layer.kernel
  with tf.GradientTape() as tape:
    out = wrapper(x, training=True)
    loss = tf.reduce_sum(out)
  grad = tape.gradient(loss, kernel).numpy()
  mask = wrapper.mask.numpy()
  # every row of the batch was computed with the same recorded mask
  np.testing.assert_allclose(out.numpy(), x.numpy() @ (kernel.numpy() * mask), rtol=1e-5,
                             atol=1e-6)
  # no gradient reaches pruned weights, and kept weights get the plain gradient
  assert 0 < mask.sum() < mask.size
  np.testing.assert_array_equal(grad[mask == 0], 0.0)
  np.testing.assert_allclose(grad[mask == 1],
                             np.broadcast_to(x.numpy().sum(0)[:, None], mask.shape)[mask == 1],
                             rtol=1e-5)
  # the variable itself stays unmasked: pruned weights keep their values
  assert np.all(kernel.numpy() != 0)
  assert int(wrapper.pruning_step) == 1
  first = mask.copy()
  wrapper(x, training=True)
  assert (wrapper.mask.numpy() != first).any(), "a new mask must be sampled every step"


def test_mask_of_a_step_depends_only_on_seed_step_and_weights():
  schedule = tf_gibbs.GibbsSchedule(0.5, beta_begin=1.0, beta_end=1.0)
  a = _dense_wrapper(schedule, seed=11)
  b = _dense_wrapper(schedule, seed=11)
  b.layer.kernel.assign(a.layer.kernel)
  x = tf.ones((2, 10))
  for _ in range(3):
    a(x, training=True)
    b(x, training=True)
    np.testing.assert_array_equal(a.mask.numpy(), b.mask.numpy())


def test_before_begin_step_the_layer_trains_dense():
  wrapper = _dense_wrapper(tf_gibbs.GibbsSchedule(0.9, begin_step=5, end_step=10))
  x = tf.ones((2, 10))
  out = wrapper(x, training=True)
  np.testing.assert_allclose(out.numpy(), x.numpy() @ wrapper.layer.kernel.numpy(), rtol=1e-5)
  np.testing.assert_allclose(wrapper(x, training=False).numpy(), out.numpy(), rtol=1e-6)


def test_inference_uses_the_exact_count_magnitude_mask():
  wrapper = _dense_wrapper(tf_gibbs.GibbsSchedule(0.75, begin_step=0, end_step=10), units=8,
                           inputs=10)
  x = tf.constant(np.eye(10, dtype="float32"))
  effective = wrapper(x, training=False).numpy()  # identity input exposes the kernel
  kernel = wrapper.layer.kernel.numpy()
  assert (effective == 0).sum() == round(0.75 * kernel.size)
  kept = np.abs(kernel[effective != 0])
  assert kept.min() >= np.abs(kernel[effective == 0]).max()
  np.testing.assert_array_equal(effective, wrapper(x, training=False).numpy())


def test_sample_test_mode_is_stochastic():
  wrapper = _dense_wrapper(tf_gibbs.GibbsSchedule(0.5, beta_begin=1.0, beta_end=1.0),
                           test_mode="sample")
  x = tf.constant(np.eye(10, dtype="float32"))
  outs = [wrapper(x, training=False).numpy() for _ in range(3)]
  assert any((o != outs[0]).any() for o in outs[1:])


def test_fit_without_the_step_callback_fails_before_tracing_with_a_clear_message():
  model = compile_model(tf_gibbs.prune_gibbs(small_cnn()))
  x, y = random_data(16)
  with pytest.raises(ValueError, match=r"add `tf_gibbs.UpdatePruningStep\(\)`"):
    model.fit(x, y, epochs=1, verbose=0, callbacks=[keras.callbacks.History()])
  assert model.train_function is None  # raised before Keras traced the train step


def test_a_plain_model_holding_wrappers_fails_in_the_step_with_a_clear_message():
  layer = tf_gibbs.prune_gibbs(keras.layers.Dense(10), tf_gibbs.GibbsSchedule(0.5))
  model = compile_model(keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), layer]))
  x, y = random_data(16)
  with pytest.raises(tf.errors.InvalidArgumentError, match="UpdatePruningStep"):
    model.fit(x, y, epochs=1, verbose=0)


@pytest.mark.parametrize("callback", [tf_gibbs.UpdatePruningStep,
                                      tfmot.sparsity.keras.UpdatePruningStep])
def test_fit_counts_steps_with_either_callback(callback):
  model = compile_model(tf_gibbs.prune_gibbs(small_cnn(), tf_gibbs.GibbsSchedule(end_step=100)))
  x, y = random_data(64)
  model.fit(x, y, batch_size=16, epochs=2, callbacks=[callback()], verbose=0)
  steps = {int(l.pruning_step) for l in model.layers if isinstance(l, tf_gibbs.GibbsPruning)}
  assert steps == {8}


def test_fit_with_jit_compile_prunes_exactly():
  schedule = tf_gibbs.GibbsSchedule(0.8, begin_step=0, end_step=4)
  model = compile_model(tf_gibbs.prune_gibbs(small_cnn(), schedule), jit_compile=True)
  x, y = random_data(64)
  history = model.fit(x, y, batch_size=16, epochs=2, callbacks=[tf_gibbs.UpdatePruningStep()],
                      verbose=0)
  assert np.isfinite(history.history["loss"]).all()
  assert history.history["beta"][-1] == pytest.approx(1e4)
  for layer in model.layers:
    if isinstance(layer, tf_gibbs.GibbsPruning):
      kernel = layer.layer.kernel.numpy()
      assert (kernel == 0).sum() == round(0.8 * kernel.size)


def test_tfmot_pruning_summaries_accept_gibbs_wrappers(tmp_path):
  model = compile_model(tf_gibbs.prune_gibbs(small_cnn(), tf_gibbs.GibbsSchedule(0.9, end_step=4)))
  x, y = random_data(32)
  model.fit(x, y, batch_size=16, epochs=3, verbose=0,
            callbacks=[tf_gibbs.UpdatePruningStep(),
                       tfmot.sparsity.keras.PruningSummaries(log_dir=str(tmp_path))])
  event_files = list(tmp_path.rglob("events.out.tfevents.*"))
  assert event_files
  # after the schedule the recorded masks are the deployed ones: exactly the target
  for layer in model.layers:
    if isinstance(layer, tf_gibbs.GibbsPruning):
      mask = layer.mask.numpy()
      assert mask.size - mask.sum() == round(0.9 * mask.size)


def test_skip_by_name_and_by_predicate():
  model = small_cnn()
  by_name = tf_gibbs.prune_gibbs(model, skip=["conv1", "logits"])
  wrapped = {l.layer.name for l in by_name.layers if isinstance(l, tf_gibbs.GibbsPruning)}
  assert wrapped == {"conv2", "dense1"}
  by_predicate = tf_gibbs.prune_gibbs(model, skip=lambda l: isinstance(l, keras.layers.Dense))
  wrapped = {l.layer.name for l in by_predicate.layers if isinstance(l, tf_gibbs.GibbsPruning)}
  assert wrapped == {"conv1", "conv2"}


def test_sequential_model_list_of_layers_and_depthwise():
  model = keras.Sequential([
      keras.layers.Conv1D(4, 3, input_shape=(12, 2)),
      keras.layers.Flatten(),
      keras.layers.Dense(3),
  ])
  pruned = tf_gibbs.prune_gibbs(model)
  assert isinstance(pruned, keras.Sequential)
  assert sum(isinstance(l, tf_gibbs.GibbsPruning) for l in pruned.layers) == 2
  layers = tf_gibbs.prune_gibbs([keras.layers.DepthwiseConv2D(3), keras.layers.ReLU()],
                                skip=lambda l: not isinstance(l, keras.layers.DepthwiseConv2D))
  assert isinstance(layers[0], tf_gibbs.GibbsPruning) and isinstance(layers[1], keras.layers.ReLU)
  depthwise = keras.Sequential([keras.Input((6, 6, 4)), layers[0]])
  depthwise.compile("adam", "mse")
  depthwise.fit(np.ones((4, 6, 6, 4), "float32"), np.ones((4, 4, 4, 4), "float32"), verbose=0,
                callbacks=[tf_gibbs.UpdatePruningStep()])
  assert layers[0].weight_name == "depthwise_kernel"


def test_seed_argument_gives_reproducible_distinct_layer_seeds():
  a = tf_gibbs.prune_gibbs(small_cnn(), seed=5)
  b = tf_gibbs.prune_gibbs(small_cnn(), seed=5)
  seeds_a = [l.seed for l in a.layers if isinstance(l, tf_gibbs.GibbsPruning)]
  seeds_b = [l.seed for l in b.layers if isinstance(l, tf_gibbs.GibbsPruning)]
  assert seeds_a == seeds_b and len(set(seeds_a)) == len(seeds_a)


@pytest.mark.parametrize("api", ["gibbs", "l0", "adaptive"])
def test_wrapping_a_functional_model_infers_shapes_without_building_masks(api, monkeypatch):
  # tf_keras calls each layer once in a throwaway "<layer>_scratch_graph" to learn its output's
  # shape; the masks are not built there (on MobileNetV2 they made wrapping 2x slower), but
  # every later call (inference, training) applies them.
  calls = []
  for cls in (tf_gibbs.GibbsPruning, tf_gibbs.L0Gates, tf_gibbs.AdaptiveThreshold):
    for method in ("training_weight", "inference_weight", "deterministic_weight"):
      original = getattr(cls, method)
      monkeypatch.setattr(cls, method, lambda self, *a, _o=original, _m=method, **k: (
          calls.append(_m), _o(self, *a, **k))[1])
  model = small_cnn()
  prune = {"gibbs": lambda m: tf_gibbs.prune_gibbs(m, tf_gibbs.GibbsSchedule(0.5, end_step=4)),
           "l0": lambda m: tf_gibbs.prune_l0(m, target_sparsity=0.5),
           "adaptive": lambda m: tf_gibbs.prune_adaptive(m, 0.5, min_weights=1)}[api]
  pruned = prune(model)
  assert calls == []
  assert pruned.output_shape == model.output_shape
  wrapper = next(layer for layer in pruned.layers if isinstance(layer, tf_gibbs.PruningWrapper))
  assert wrapper.compute_output_shape(wrapper.input_shape) == wrapper.output_shape
  assert calls == []
  x, _ = random_data(4)
  pruned(x, training=False)
  assert "inference_weight" in calls or "deterministic_weight" in calls


def test_the_wrapper_call_is_not_converted_by_autograph():
  # Autograph's rewriting of tf_gibbs' code cost a third of an edge model's first step
  # (benchmarks/step_profile.py --first_step); the wrappers branch with tf.cond only.
  from tensorflow.python.autograph.impl import api as autograph_api  # pylint: disable=g-import-not-at-top
  assert autograph_api.is_autograph_artifact(tf_gibbs.PruningWrapper.call)
  model = compile_model(tf_gibbs.prune_gibbs(small_cnn(), tf_gibbs.GibbsSchedule(0.5, end_step=4)))
  x, y = random_data(8)
  model.fit(x, y, epochs=1, batch_size=4, verbose=0, callbacks=[tf_gibbs.UpdatePruningStep()])
  wrapper = next(layer for layer in model.layers if isinstance(layer, tf_gibbs.GibbsPruning))
  assert 0.0 < float(tf.reduce_mean(wrapper.mask)) < 1.0
