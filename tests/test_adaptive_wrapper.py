"""Adaptive sparsity loss: thresholds in Keras, the global budget, strip, TFLite, save/load."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

import tf_gibbs
from helpers import check_strip
from helpers import compile_model
from helpers import digits
from helpers import litert_predict
from helpers import random_data
from helpers import reload
from helpers import small_cnn
from helpers import wrappers
from tf_gibbs.core import adaptive as adaptive_core

STEP = [tf_gibbs.UpdatePruningStep()]


def _wrappers(model):
  return wrappers(model, tf_gibbs.AdaptiveThreshold)


def _zero_fraction(model, names, costs=None):
  kernels = {l.name: l.kernel.numpy() for l in model.layers if l.name in names}
  costs = costs or {n: k.size for n, k in kernels.items()}
  return sum(costs[n] * (k == 0).mean() for n, k in kernels.items()) / sum(costs.values())


def test_small_layers_are_left_dense_and_r_is_trained_by_fit():
  with pytest.warns(UserWarning, match=r"\['conv1', 'conv2', 'logits'\] are left dense"):
    model = tf_gibbs.prune_adaptive(small_cnn(), 0.8, end_step=100)
  assert [w.layer.name for w in _wrappers(model)] == ["dense1"]
  model = compile_model(tf_gibbs.prune_adaptive(small_cnn(), 0.8, min_weights=0, end_step=100,
                                                r_lr_multiplier=1.0))
  wrappers = _wrappers(model)
  assert all(any(v is w.r_parameter for v in model.trainable_weights) for w in wrappers)
  before = [float(w.r) for w in wrappers]
  x, y = random_data(64)
  history = model.fit(x, y, batch_size=16, epochs=2, callbacks=STEP, verbose=0)
  assert all(float(w.r) != b for w, b in zip(wrappers, before))
  # Per-layer r and sparsity are in the Keras logs.
  for name in ("conv1", "conv2", "dense1", "logits"):
    assert f"r_{name}" in history.history and f"sparsity_{name}" in history.history
  w = wrappers[2]
  assert history.history["sparsity_dense1"][-1] == pytest.approx(
      1 - float(tf.reduce_mean(w.mask)), abs=0.05)
  # The budget loss is in model.losses once, from the group's first member.
  values = [float(loss) for loss in model.losses]
  assert sum(v > 0 for v in values) == 1


def test_straight_through_gradient_and_gradient_to_r():
  wrapper = tf_gibbs.AdaptiveThreshold(keras.layers.Dense(4, use_bias=False), initial_r=1.0)
  x = tf.random.stateless_normal([16, 8], seed=[0, 1])
  wrapper(x)
  wrapper.pruning_step.assign(0)
  kernel = wrapper.layer.kernel
  with tf.GradientTape(persistent=True) as tape:
    out = wrapper(x, training=True)
    loss = tf.reduce_sum(tf.square(out))
  pruned = wrapper.mask.numpy() == 0
  assert 0 < pruned.mean() < 1
  # Forward: the hard-thresholded kernel; backward: dŴ/dW = 1 (pruned weights get gradients).
  effective = kernel.numpy() * wrapper.mask.numpy()
  np.testing.assert_allclose(out.numpy(), x.numpy() @ effective, rtol=1e-5, atol=1e-6)
  expected = x.numpy().T @ (2 * out.numpy())
  np.testing.assert_allclose(tape.gradient(loss, kernel).numpy(), expected, rtol=1e-4, atol=1e-5)
  assert np.all(tape.gradient(loss, kernel).numpy()[pruned] != 0)
  # r: −Σ_pruned g·W/b · std(W), times nothing else (scaled_parameter passes it unscaled).
  std = np.std(kernel.numpy())
  b = 1.0 * std
  g = expected
  expected_r = np.sum(-(g * kernel.numpy() / b)[pruned]) * std
  assert float(tape.gradient(loss, wrapper.r_parameter)) == pytest.approx(expected_r, rel=1e-4)


def _train_digits(target, epochs=6, **kwargs):
  keras.utils.set_random_seed(0)
  x, y = digits()
  kwargs.setdefault("end_step", 150)
  model = compile_model(tf_gibbs.prune_adaptive(small_cnn(), target, min_weights=0,
                                                r_lr_multiplier=3.0, **kwargs))
  model.fit(x, y, batch_size=20, epochs=epochs, callbacks=STEP, verbose=0)  # 180 steps
  return model


def test_budget_reached_in_measured_zeros():
  """The exact-budget correction ends at s (± 0.5 %) in real zeros, over the wrapped layers;
  without it the budget loss alone raises every threshold from its start (r₀ = √2 erfinv(0.6 s))
  towards s, without reaching it in this short run."""
  names = ["conv1", "conv2", "dense1", "logits"]
  exact = tf_gibbs.strip_pruning(_train_digits(0.8))
  assert abs(_zero_fraction(exact, names) - 0.8) <= 0.005
  model = _train_digits(0.8, exact_budget=False)
  assert all(float(w.r) > w.initial_r + 0.1 for w in _wrappers(model))
  assert 0.55 <= _zero_fraction(tf_gibbs.strip_pruning(model), names) < 0.8


def test_flop_budget_gives_a_different_split_than_the_parameter_budget():
  """Under a FLOP budget the convolutions (many multiply-accumulates per weight) carry more of
  the sparsity than under a parameter budget; both hit their own weighted target."""
  names = ["conv1", "conv2", "dense1", "logits"]
  splits = {}
  for budget in ("params", "flops"):
    model = _train_digits(0.8, budget=budget)
    wrappers = _wrappers(model)
    costs = {w.layer.name: w.cost[budget] for w in wrappers}
    stripped = tf_gibbs.strip_pruning(model)
    assert abs(_zero_fraction(stripped, names, costs) - 0.8) <= 0.005
    splits[budget] = {n: (l.kernel.numpy() == 0).mean() for n in names
                      for l in stripped.layers if l.name == n}
  conv = lambda s: (s["conv1"] + s["conv2"]) / 2  # noqa: E731
  assert conv(splits["flops"]) > conv(splits["params"]) + 0.05
  assert splits["flops"]["dense1"] < splits["params"]["dense1"]


def _trained(epochs=3, end_step=8):
  model = compile_model(tf_gibbs.prune_adaptive(small_cnn(), 0.7, min_weights=0,
                                                end_step=end_step, r_lr_multiplier=1.0))
  x, y = random_data(64)
  model.fit(x, y, batch_size=16, epochs=epochs, callbacks=STEP, verbose=0, shuffle=False)
  return model, x, y


@pytest.mark.parametrize("strip", [tf_gibbs.strip_pruning, tfmot.sparsity.keras.strip_pruning])
def test_both_strips_return_the_hard_thresholded_kernels(strip):
  model, x, _ = _trained()
  stripped, _ = check_strip(model, strip, x, tf_gibbs.AdaptiveThreshold)
  assert abs(_zero_fraction(stripped, ["conv1", "conv2", "dense1", "logits"]) - 0.7) <= 0.005


def test_strip_before_the_freeze_thresholds_at_the_live_r():
  model, x, _ = _trained(epochs=1, end_step=1000)
  with pytest.warns(UserWarning, match="has not reached its end step"):
    stripped = tf_gibbs.strip_pruning(model)
  np.testing.assert_allclose(stripped.predict(x, verbose=0), model.predict(x, verbose=0),
                             rtol=1e-5, atol=1e-6)
  for w in _wrappers(model):
    kernel = {l.name: l for l in stripped.layers}[w.layer.name].kernel.numpy()
    raw = w.layer.kernel.numpy()
    b = float(np.clip(float(w.r), 0, 5)) * np.std(raw)
    np.testing.assert_array_equal(kernel == 0, np.abs(raw) <= b)


def test_tflite_of_the_stripped_model_predicts_like_keras():
  model, x, _ = _trained()
  lite = litert_predict(tf_gibbs.strip_pruning(model), x)
  np.testing.assert_allclose(lite, model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("filename", [
    "model.keras", "model.h5",
    pytest.param("saved_model", marks=pytest.mark.slow)])  # ~20 s; SavedModel: test_save_load.py
def test_save_load_keeps_thresholds_and_budget_and_resumes(tmp_path, filename):
  model, x, y = _trained(epochs=1, end_step=40)
  loaded, pairs = reload(model, str(tmp_path / filename), x, tf_gibbs.AdaptiveThreshold)
  for original, restored in pairs:
    assert float(restored.r) == float(original.r)
  # The budget group is found again in the loaded model: the same budget loss.
  assert float(tf.add_n(loaded.losses)) == pytest.approx(float(tf.add_n(model.losses)), rel=1e-6)
  assert float(tf.add_n(loaded.losses)) > 0
  for m in (model, loaded):
    m.fit(x, y, batch_size=16, epochs=1, callbacks=STEP, verbose=0, shuffle=False)
  for original, restored in pairs:
    assert int(restored.pruning_step) == int(original.pruning_step) == 8
    if filename != "saved_model":  # tf_keras' SavedModel loader drops the optimizer state
      assert float(restored.r) == pytest.approx(float(original.r), rel=1e-5)


def test_trains_under_jit_compile_through_the_freeze():
  model = compile_model(tf_gibbs.prune_adaptive(small_cnn(), 0.6, min_weights=0, end_step=6),
                        jit_compile=True)
  x, y = random_data(64)
  history = model.fit(x, y, batch_size=16, epochs=2, callbacks=STEP, verbose=0)
  assert np.all(np.isfinite(history.history["loss"]))
  stripped = tf_gibbs.strip_pruning(model)
  assert abs(_zero_fraction(stripped, ["conv1", "conv2", "dense1", "logits"]) - 0.6) <= 0.005


def test_config_round_trip_and_schedule():
  schedule = tf_gibbs.AdaptiveSchedule(0.9, begin_step=3, end_step=30)
  assert [bool(schedule(s)[0]) for s in (2, 3)] == [False, True]
  assert float(schedule(5)[1]) == pytest.approx(0.9)
  assert tf_gibbs.AdaptiveSchedule.from_config(
      schedule.get_config()["config"]).get_config() == schedule.get_config()
  wrapper = tf_gibbs.AdaptiveThreshold(keras.layers.Dense(3), schedule, budget="flops",
                                       estimate="erf", loss_weight=2.0)
  clone = tf_gibbs.AdaptiveThreshold.from_config(wrapper.get_config())
  assert clone.get_config() == wrapper.get_config()
  assert wrapper.initial_r == pytest.approx(adaptive_core.initial_r(0.9))


@pytest.mark.parametrize("kwargs,error,match", [
    ({"target_sparsity": 1.0}, ValueError, "target_sparsity"),
    ({"target_sparsity": -0.2}, ValueError, "target_sparsity"),
    ({"loss_weight": 0.0}, ValueError, "loss_weight"),
    ({"loss_weight": -3.0}, ValueError, "loss_weight"),
    ({"budget": "macs"}, ValueError, "budget"),
    ({"estimate": "gauss"}, ValueError, "estimate"),
    ({"r_lr_multiplier": 0.0}, ValueError, "r_lr_multiplier"),
    ({"min_weights": -1}, ValueError, "min_weights"),
    ({"exact_budget": "yes"}, TypeError, "exact_budget"),
    ({"end_step": 0}, ValueError, "end_step"),
])
def test_bad_arguments(kwargs, error, match):
  kwargs = {"target_sparsity": 0.5, "min_weights": 0, **kwargs}
  with pytest.raises(error, match=match):
    tf_gibbs.prune_adaptive(small_cnn(), **kwargs)


def test_bad_schedule_type():
  with pytest.raises(TypeError, match="AdaptiveSchedule"):
    tf_gibbs.AdaptiveThreshold(keras.layers.Dense(3), tf_gibbs.GibbsSchedule())


def test_pruning_summaries_log_thresholds_and_sparsity(tmp_path):
  model = compile_model(tf_gibbs.prune_adaptive(small_cnn(), 0.7, min_weights=0, end_step=100))
  x, y = random_data(32)
  log_dir = str(tmp_path / "logs")
  model.fit(x, y, batch_size=16, epochs=1, verbose=0,
            callbacks=STEP + [tfmot.sparsity.keras.PruningSummaries(log_dir)])
  tags = set()
  for path in tf.io.gfile.glob(f"{log_dir}/**/events*") + tf.io.gfile.glob(f"{log_dir}/events*"):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  for name in ("conv1", "conv2", "dense1", "logits"):
    assert any(name in t and "sparsity" in t for t in tags), tags
    assert any(name in t and "threshold" in t for t in tags), tags
