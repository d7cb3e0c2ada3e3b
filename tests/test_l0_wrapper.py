"""L0 gates: training, gradients, groups, the budget, stripping, TFLite, save/load, bad input."""

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
from tf_gibbs.core import l0 as l0_core

STEP = [tf_gibbs.UpdatePruningStep()]


def _gates(model):
  return wrappers(model, tf_gibbs.L0Gates)


def test_gates_are_trained_by_fit_and_the_penalty_is_in_the_loss():
  model = compile_model(tf_gibbs.prune_l0(small_cnn(), l0_strength=1.0))
  wrappers = _gates(model)
  gate_vars = [w.gate_parameter for w in wrappers]
  assert all(any(v is g for v in model.trainable_weights) for g in gate_vars)
  before = [g.numpy().copy() for g in gate_vars]
  x, y = random_data(64)
  model.fit(x, y, batch_size=16, epochs=1, callbacks=STEP, verbose=0)
  for b, g in zip(before, gate_vars):
    assert not np.allclose(b, g.numpy())
  penalties = [float(w.penalty()) for w in wrappers]
  assert all(p > 0 for p in penalties)
  assert len(model.losses) == len(wrappers)
  # The penalty is λ times the model's expected fraction of nonzero gated weights.
  total = sum(w.gated_weights for w in wrappers)
  assert all(w.normalizer() == total for w in wrappers)
  expected = sum(float(tf.reduce_sum(l0_core.probability_nonzero(w.log_alpha)))
                 * w.gated_weights / int(np.prod(w.gate_parameter.shape)) for w in wrappers)
  assert sum(penalties) == pytest.approx(expected / total, rel=1e-5)
  # The group's first member adds the whole group's penalty to the loss, the others 0.
  losses = [float(loss) for loss in model.losses]
  assert losses[0] == pytest.approx(sum(penalties), rel=1e-5) and not any(losses[1:])


@pytest.mark.parametrize("mode", ["deterministic", "stochastic"])
def test_task_gradient_reaches_the_gate_parameters(mode):
  wrapper = tf_gibbs.L0Gates(keras.layers.Dense(3), granularity="weight", mode=mode,
                             initial_log_alpha=0.0, seed=1)
  x = tf.random.stateless_normal([8, 5], seed=[0, 1])
  wrapper(x)
  wrapper.pruning_step.assign(0)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.square(wrapper(x, training=True)))
  grad = tape.gradient(loss, wrapper.gate_parameter)
  assert grad is not None and np.abs(grad.numpy()).sum() > 0
  with tf.GradientTape() as tape:
    penalty = wrapper.penalty()
  assert np.all(tape.gradient(penalty, wrapper.gate_parameter).numpy() > 0)


def test_deterministic_mode_is_deterministic_and_stochastic_mode_is_not():
  x = tf.random.stateless_normal([4, 6], seed=[1, 2])
  outs = {}
  for mode in ("deterministic", "stochastic"):
    wrapper = tf_gibbs.L0Gates(keras.layers.Dense(5), mode=mode, initial_log_alpha=0.0, seed=3)
    wrapper(x)
    wrapper.pruning_step.assign(0)
    outs[mode] = [wrapper(x, training=True).numpy() for _ in range(2)]
    inference = [wrapper(x, training=False).numpy() for _ in range(2)]
    np.testing.assert_array_equal(*inference)
  np.testing.assert_array_equal(*outs["deterministic"])
  assert not np.array_equal(*outs["stochastic"])


@pytest.mark.parametrize("granularity,layer,axes", [
    ("kernel", keras.layers.Conv2D(6, 3), (0, 1)),
    ("filter", keras.layers.Conv2D(6, 3), (0, 1, 2)),
    ("filter", keras.layers.DepthwiseConv2D(3, depth_multiplier=2), (0, 1)),
    ("unit", keras.layers.Dense(6), (0,)),
    ("input_unit", keras.layers.Dense(6), (1,)),
])
def test_group_granularities_zero_whole_groups(granularity, layer, axes):
  wrapper = tf_gibbs.L0Gates(layer, granularity=granularity, seed=0)
  x = np.random.RandomState(0).randn(2, 5, 5, 4).astype("float32")
  x = x.reshape(2, -1)[:, :7] if isinstance(layer, keras.layers.Dense) else x
  wrapper(x)
  rng = np.random.RandomState(1)
  closed = rng.rand(*wrapper.gate_parameter.shape) < 0.5
  wrapper.gate_parameter.assign(np.where(closed, -5.0, 5.0) / wrapper.gate_lr_multiplier)
  wrapper.pruning_step.assign(1)
  kernel = tf_gibbs.strip_pruning(wrapper).get_weights()[0]
  zero_groups = np.all(kernel == 0, axis=axes)
  view_zero = np.all(kernel.reshape(wrapper._view) == 0, axis=tuple(  # pylint: disable=protected-access
      i for i, d in enumerate(wrapper.gate_parameter.shape) if d == 1))
  np.testing.assert_array_equal(view_zero.reshape(-1), closed.reshape(-1))
  assert zero_groups.sum() > 0 and (kernel != 0).sum() > 0


@pytest.mark.parametrize("mode", ["deterministic", "stochastic"])
def test_budget_mode_reaches_its_target_in_measured_zeros(mode):
  """Every wrapped layer ends with s ± 2 % exactly-zero weights (the model with s ± 1 %) with no
  tuning of the penalty (150 gate steps; at Adam's 1e-3 and the default gate_lr_multiplier a
  gate needs ~100 steps to close)."""
  keras.utils.set_random_seed(0)
  x, y = digits()
  target = 0.8
  schedule = tf_gibbs.L0Schedule(target_sparsity=target, end_step=150)
  model = compile_model(tf_gibbs.prune_l0(small_cnn(), mode=mode, schedule=schedule, seed=0))
  model.fit(x, y, batch_size=20, epochs=6, callbacks=STEP, verbose=0)  # 180 steps
  stripped = tf_gibbs.strip_pruning(model)
  kernels = [l.kernel.numpy() for l in stripped.layers if hasattr(l, "kernel")]
  zeros = sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels)
  assert abs(zeros - target) <= 0.01
  for k in kernels:
    assert abs((k == 0).mean() - target) <= 0.02
  # The gates alone (before the freeze-step projection) already carry the budget.
  for w in _gates(model):
    closed = float(l0_core.closed_fraction(l0_core.deterministic_gate(w.log_alpha)))
    assert abs(closed - target) <= 0.05


def _trained(epochs=3, end_step=8, **kwargs):
  schedule = tf_gibbs.L0Schedule(1.0, target_sparsity=0.5, end_step=end_step)
  model = compile_model(tf_gibbs.prune_l0(small_cnn(), schedule=schedule, seed=0, **kwargs))
  x, y = random_data(64)
  model.fit(x, y, batch_size=16, epochs=epochs, callbacks=STEP, verbose=0, shuffle=False)
  return model, x, y


@pytest.mark.parametrize("strip", [tf_gibbs.strip_pruning, tfmot.sparsity.keras.strip_pruning])
def test_both_strips_return_kernel_times_gate(strip):
  model, x, _ = _trained()
  stripped, gates = check_strip(model, strip, x, tf_gibbs.L0Gates)
  layers = {l.name: l for l in stripped.layers}
  for w in gates:  # folding is idempotent: more epoch ends changed nothing (checked above)
    assert (layers[w.layer.name].kernel.numpy() == 0).mean() >= 0.45


def test_strip_before_the_freeze_uses_the_deterministic_gates():
  model, x, _ = _trained(epochs=1, end_step=1000)
  with pytest.warns(UserWarning, match="has not reached its end step"):
    stripped = tf_gibbs.strip_pruning(model)
  np.testing.assert_allclose(stripped.predict(x, verbose=0), model.predict(x, verbose=0),
                             rtol=1e-5, atol=1e-6)


def test_tflite_of_the_stripped_model_predicts_like_keras():
  model, x, _ = _trained()
  lite = litert_predict(tf_gibbs.strip_pruning(model), x)
  np.testing.assert_allclose(lite, model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("filename", [
    "model.keras", "model.h5",
    pytest.param("saved_model", marks=pytest.mark.slow)])  # ~28 s; SavedModel: test_save_load.py
def test_save_load_keeps_gates_and_resumes(tmp_path, filename):
  model, x, y = _trained(epochs=1, end_step=40)
  loaded, pairs = reload(model, str(tmp_path / filename), x, tf_gibbs.L0Gates)
  for original, restored in pairs:
    np.testing.assert_array_equal(restored.gate_parameter.numpy(),
                                  original.gate_parameter.numpy())
    assert float(restored.log_penalty_factor) == float(original.log_penalty_factor)
  for m in (model, loaded):
    m.fit(x, y, batch_size=16, epochs=1, callbacks=STEP, verbose=0, shuffle=False)
  for original, restored in pairs:
    assert int(restored.pruning_step) == int(original.pruning_step) == 8
    if filename != "saved_model":  # tf_keras' SavedModel loader drops the optimizer state
      np.testing.assert_allclose(restored.gate_parameter.numpy(),
                                 original.gate_parameter.numpy(), rtol=1e-5, atol=1e-7)
      assert float(restored.log_penalty_factor) == pytest.approx(
          float(original.log_penalty_factor))


def test_trains_under_jit_compile():
  schedule = tf_gibbs.L0Schedule(1.0, target_sparsity=0.5, end_step=6)
  model = compile_model(tf_gibbs.prune_l0(small_cnn(), schedule=schedule, mode="stochastic",
                                          granularity="weight"), jit_compile=True)
  x, y = random_data(64)
  history = model.fit(x, y, batch_size=16, epochs=2, callbacks=STEP, verbose=0)
  assert np.all(np.isfinite(history.history["loss"]))
  assert int(_gates(model)[0].pruning_step) == 8


def test_unfit_layers_are_left_dense_with_a_warning():
  with pytest.warns(UserWarning, match=r"\['dense1', 'logits'\] are left dense"):
    model = tf_gibbs.prune_l0(small_cnn(), granularity="kernel")
  assert [w.layer.name for w in _gates(model)] == ["conv1", "conv2"]


def test_strength_ramp_and_budget_ramp():
  schedule = tf_gibbs.L0Schedule(2.0, target_sparsity=0.6, begin_step=10, end_step=50,
                                 ramp_steps=10)
  assert float(schedule.strength(5)) == 0.0
  assert float(schedule.strength(15)) == pytest.approx(1.0)
  assert float(schedule.strength(30)) == pytest.approx(2.0)
  assert float(schedule.sparsity(10)) == 0.0
  assert float(schedule.sparsity(40)) == pytest.approx(0.6)  # reached at ¾ of [begin, end]
  assert float(schedule.sparsity(25)) == pytest.approx(0.6 * (1 - 0.5**3))
  restored = tf_gibbs.L0Schedule.from_config(schedule.get_config()["config"])
  assert restored.get_config() == schedule.get_config()
  # The budget's target set is re-ranked every `frequency` steps from begin_step and at end_step.
  reranked = [step for step in range(60) if bool(schedule.rerank(step))]
  assert reranked == [10, 20, 30, 40, 50]
  assert [s for s in range(60) if bool(tf_gibbs.L0Schedule(begin_step=3, end_step=18,
                                                            frequency=4).rerank(s))] == [
                                                                3, 7, 11, 15, 18]


def test_budget_target_set_is_the_smallest_gated_magnitudes_and_refreshes_on_schedule():
  schedule = tf_gibbs.L0Schedule(target_sparsity=0.5, end_step=8, frequency=3, power=1)
  wrapper = tf_gibbs.L0Gates(keras.layers.Dense(4), pruning_schedule=schedule,
                             initial_log_alpha=5.0, seed=0)
  x = tf.random.stateless_normal([3, 6], seed=[4, 2])
  wrapper(x)
  wrapper.pruning_step.assign(0)
  history = []
  for _ in range(4):  # steps 1..4: ranked at 3 only (and at begin_step 0, never run)
    kernel = wrapper.layer.kernel.numpy()
    wrapper(x, training=True)
    history.append((int(wrapper.pruning_step), wrapper.budget_targets.numpy().copy(), kernel))
  assert history[0][1].sum() == 0 and history[1][1].sum() == 0  # nothing ranked yet
  step, targets, kernel = history[2]
  assert step == 3
  count = round(float(schedule.sparsity(3)) * kernel.size)
  assert targets.sum() == count > 0
  # All gates are open and equal (z = 1), so the set is the smallest |w|.
  order = np.argsort(np.abs(kernel).reshape(-1), kind="stable")
  np.testing.assert_array_equal(np.flatnonzero(targets.reshape(-1)), np.sort(order[:count]))
  np.testing.assert_array_equal(history[3][1], targets)  # kept until the next ranking


@pytest.mark.parametrize("kwargs,error,match", [
    ({"granularity": "channel"}, ValueError, "granularity"),
    ({"mode": "random"}, ValueError, "mode"),
    ({"l0_strength": -1.0}, ValueError, "l0_strength"),
    ({"target_sparsity": 1.0}, ValueError, "target_sparsity"),
    ({"target_sparsity": -0.1}, ValueError, "target_sparsity"),
    ({"temperature": 0.0}, ValueError, "temperature"),
    ({"gate_lr_multiplier": -2.0}, ValueError, "gate_lr_multiplier"),
    ({"schedule": tf_gibbs.GibbsSchedule()}, TypeError, "L0Schedule"),
    ({"schedule": tf_gibbs.L0Schedule(), "l0_strength": 1.0}, ValueError, "either"),
    ({"hamiltonian": "kernel"}, TypeError, "unexpected"),
    ({"seed": -1}, ValueError, "seed"),
])
def test_bad_arguments(kwargs, error, match):
  with pytest.raises(error, match=match):
    tf_gibbs.prune_l0(small_cnn(), **kwargs)


def test_granularity_that_does_not_fit_a_single_layer():
  with pytest.raises(ValueError, match="granularity='kernel' does not fit"):
    tf_gibbs.prune_l0(keras.layers.Dense(3), granularity="kernel")
  with pytest.raises(ValueError, match="use 'unit'"):
    tf_gibbs.L0Gates(keras.layers.Dense(3), granularity="filter")
  with pytest.raises(ValueError, match="`end_step` must be >"):
    tf_gibbs.L0Schedule(begin_step=5, end_step=5)
  with pytest.raises(ValueError, match="frequency"):
    tf_gibbs.L0Schedule(frequency=0)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_gates_in_float32_and_reaches_the_budget(policy):
  keras.mixed_precision.set_global_policy(policy)
  try:
    schedule = tf_gibbs.L0Schedule(target_sparsity=0.5, end_step=6, frequency=2)
    model = compile_model(tf_gibbs.prune_l0(small_cnn(), schedule=schedule, seed=0,
                                            mode="stochastic"))
    x, y = random_data(64)
    history = model.fit(x, y, batch_size=16, epochs=2, callbacks=STEP, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    for w in _gates(model):
      for variable in (w.gate_parameter, w.mask, w.budget_targets, w.log_penalty_factor):
        assert variable.dtype == tf.float32 and not hasattr(variable, "_variable")
      assert w.log_alpha.dtype == tf.float32
    kernels = [l.kernel.numpy() for l in tf_gibbs.strip_pruning(model).layers
               if hasattr(l, "kernel")]
    assert all((k == 0).mean() == pytest.approx(0.5, abs=1 / k.size) for k in kernels)
  finally:
    keras.mixed_precision.set_global_policy("float32")
