"""Edge cases where a deployed model or a learned threshold used to go wrong (issue #19)."""

import math
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tf_gibbs
from tf_gibbs.core import adaptive as adaptive_core
from tf_gibbs.core import gibbs as gibbs_core
from tf_gibbs.core import l0 as l0_core
from tf_gibbs.core import ranking
from tf_gibbs.core import structured

from helpers import wrappers


def _conv_model(filters=32, c_in=3, name="conv"):
  inputs = keras.Input((6, 6, c_in))
  outputs = keras.layers.Conv2D(filters, 3, name=name)(inputs)
  return keras.Model(inputs, outputs)


def _run_steps(model, steps, x=None):
  """``steps`` training steps of a mean-squared loss (the wrappers' step counters advance)."""
  x = np.random.RandomState(0).randn(8, *model.input_shape[1:]).astype("float32") if x is None \
      else x
  y = np.zeros((8,) + tuple(model.output_shape[1:]), "float32")
  model.compile(keras.optimizers.Adam(1e-3), "mse")
  model.fit(x, y, batch_size=8, epochs=steps, verbose=0,
            callbacks=[tf_gibbs.UpdatePruningStep()])
  return model


# --- 1. no layer is pruned away by its per-layer target ------------------------------------------


@pytest.mark.parametrize("n,sparsity,pruned", [(1, 0.9, 0), (32, 0.99, 31), (8, 0.95, 7),
                                               (48, 0.99, 47), (10, 0.9, 9), (2, 0.75, 1)])
def test_pruned_count_keeps_at_least_one_group(n, sparsity, pruned):
  assert int(ranking.pruned_count(n, sparsity)) == pruned
  scores = np.random.RandomState(n).rand(n).astype(np.float32)
  mask = ranking.exact_count_keep_mask(scores, sparsity).numpy()
  assert mask.sum() == n - pruned
  assert mask[np.argmax(scores)] == 1  # the group kept is the largest


@pytest.mark.parametrize("hamiltonian,groups", [("filter", 32), ("kernel", 48)])
def test_gibbs_capped_target_keeps_one_group_warns_and_reports(hamiltonian, groups):
  filters, c_in = (32, 3) if hamiltonian == "filter" else (12, 4)
  model = _conv_model(filters, c_in)
  schedule = tf_gibbs.GibbsSchedule(0.99, begin_step=0, end_step=2)
  with pytest.warns(UserWarning, match=r"conv.*0\.99.*all %d" % groups):
    pruned = tf_gibbs.prune_gibbs(model, schedule, hamiltonian=hamiltonian)
  _run_steps(pruned, 3)
  stripped = tf_gibbs.strip_pruning(pruned)
  kernel = stripped.get_layer("conv").kernel.numpy()
  if hamiltonian == "filter":
    alive = np.any(kernel != 0, axis=(0, 1, 2))
  else:
    alive = np.any(kernel != 0, axis=(0, 1)).reshape(-1)
  assert alive.sum() == 1
  assert np.any(stripped.predict(np.ones((1, 6, 6, c_in), "float32"), verbose=0) != 0)
  report = tf_gibbs.sparsity_report(pruned, print_fn=None)
  row = next(r for r in report["layers"] if r["name"] == "conv")
  assert "capped" in row["note"] and str(groups) in row["note"]


def test_cap_warns_once_per_layer_and_not_when_not_needed():
  model = _conv_model(32)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tf_gibbs.prune_gibbs(model, tf_gibbs.GibbsSchedule(0.9), hamiltonian="filter")
  assert not [w for w in caught if "capped" in str(w.message)]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    pruned = tf_gibbs.prune_gibbs(model, tf_gibbs.GibbsSchedule(0.99), hamiltonian="filter")
    pruned(np.zeros((1, 6, 6, 3), "float32"))
    pruned(np.zeros((1, 6, 6, 3), "float32"), training=False)
  assert len([w for w in caught if "capped" in str(w.message)]) == 1


def test_l0_budget_never_closes_every_gate():
  model = _conv_model(32)
  schedule = tf_gibbs.L0Schedule(target_sparsity=0.99, begin_step=0, end_step=3, frequency=1)
  with pytest.warns(UserWarning, match="capped"):
    pruned = tf_gibbs.prune_l0(model, granularity="filter", schedule=schedule)
  _run_steps(pruned, 5)
  kernel = tf_gibbs.strip_pruning(pruned).get_layer("conv").kernel.numpy()
  assert np.any(kernel != 0, axis=(0, 1, 2)).sum() == 1
  # The controller aims at the capped fraction, 31/32, not at the unreachable 0.99.
  assert abs(float(l0_core.budget_fraction(32, 0.99)) - 31 / 32) < 1e-7


# --- 7. p is the user's Python number, rounded once in float64 -----------------------------------


def test_count_is_round_pn_of_the_python_number_on_every_path():
  assert round(0.35 * 10) == 4 and int(ranking.pruned_count(10, 0.35)) == 4
  inputs = keras.Input((5,))
  model = keras.Model(inputs, keras.layers.Dense(10, name="fc")(inputs))
  schedule = tf_gibbs.GibbsSchedule(0.35, begin_step=0, end_step=1)
  assert schedule.sparsity(5).dtype == tf.float64
  pruned = tf_gibbs.prune_gibbs(model, schedule, hamiltonian="filter")
  _run_steps(pruned, 2)
  wrapper = wrappers(pruned)[0]
  weight = wrapper.read_weight()
  deployed = wrapper.deterministic_mask(weight, wrapper.pruning_step).numpy()
  assert (deployed.sum(axis=0) == 0).sum() == 4
  stripped = tf_gibbs.strip_pruning(pruned)
  assert (np.all(stripped.get_layer("fc").kernel.numpy() == 0, axis=0)).sum() == 4
  report = tf_gibbs.sparsity_report(pruned, print_fn=None)
  assert report["layers"][0]["zero_filters"] == 4
  # L0 budget: 0.35 of 10 unit gates is 4 targets.
  l0_schedule = tf_gibbs.L0Schedule(target_sparsity=0.35, begin_step=0, end_step=2, frequency=1)
  assert l0_schedule.sparsity(10).dtype == tf.float64
  targets = l0_core.budget_targets(tf.range(10, dtype=tf.float32)[None, None],
                                   l0_schedule.sparsity(10))
  assert int(tf.reduce_sum(targets)) == 4
  l0_pruned = tf_gibbs.prune_l0(model, granularity="unit", schedule=l0_schedule)
  _run_steps(l0_pruned, 4)
  l0_kernel = tf_gibbs.strip_pruning(l0_pruned).get_layer("fc").kernel.numpy()
  assert (np.all(l0_kernel == 0, axis=0)).sum() == 4


# --- 2. r recovers from below zero; 3. no weight decay on r and log α --------------------------


def test_adaptive_r_below_zero_recovers():
  inputs = keras.Input((40,))
  model = keras.Model(inputs, keras.layers.Dense(40, name="fc")(inputs))
  pruned = tf_gibbs.prune_adaptive(model, target_sparsity=0.8, min_weights=10, end_step=1000,
                                   r_lr_multiplier=1.0)
  wrapper = wrappers(pruned)[0]
  wrapper.r_parameter.assign(-0.05 / wrapper.r_lr_multiplier)
  x = np.random.RandomState(0).randn(32, 40).astype("float32")
  pruned.compile(keras.optimizers.SGD(0.05), "mse")
  pruned.fit(x, x, batch_size=32, epochs=5, verbose=0, callbacks=[tf_gibbs.UpdatePruningStep()])
  r = float(wrapper.r)
  assert 0.0 < r <= adaptive_core.R_MAX
  assert float(tf.reduce_mean(wrapper.mask)) < 1.0  # the layer is pruned again


def test_r_is_projected_into_its_range_after_each_update():
  inputs = keras.Input((40,))
  model = keras.Model(inputs, keras.layers.Dense(40, name="fc")(inputs))
  pruned = tf_gibbs.prune_adaptive(model, target_sparsity=0.8, min_weights=10, end_step=1000)
  wrapper = wrappers(pruned)[0]
  constraint = wrapper.r_parameter.constraint
  m = wrapper.r_lr_multiplier
  np.testing.assert_allclose(float(constraint(tf.constant(-1.0 / m))) * m, 0.0)
  np.testing.assert_allclose(float(constraint(tf.constant(9.0 / m))) * m, adaptive_core.R_MAX,
                             rtol=1e-6)
  np.testing.assert_allclose(float(constraint(tf.constant(2.0 / m))) * m, 2.0, rtol=1e-6)


def test_threshold_and_erf_density_pass_a_gradient_outside_the_range():
  r = tf.Variable(-0.05)
  w = tf.constant(np.random.RandomState(0).randn(50).astype("float32"))
  with tf.GradientTape(persistent=True) as tape:
    b = adaptive_core.threshold(w, r)
    d = adaptive_core.erf_density(r)
  assert float(b) == 0.0
  assert float(tape.gradient(b, r)) > 0.0
  assert float(tape.gradient(d, r)) < 0.0


def _decay_model():
  inputs = keras.Input((40,))
  h = keras.layers.Dense(40, name="a")(inputs)
  return keras.Model(inputs, keras.layers.Dense(40, name="b")(h))


@pytest.mark.parametrize("method", ["adaptive", "l0"])
def test_weight_decay_does_not_reach_thresholds_or_gates(method):
  # begin_step far ahead: r and log α get no gradient, so only weight decay could move them.
  if method == "adaptive":
    pruned = tf_gibbs.prune_adaptive(
        _decay_model(), target_sparsity=0.5, min_weights=10, begin_step=1000, end_step=2000)
    variables = [w.r_parameter for w in wrappers(pruned)]
  else:
    pruned = tf_gibbs.prune_l0(_decay_model(), granularity="unit",
                               schedule=tf_gibbs.L0Schedule(begin_step=1000, end_step=2000))
    variables = [w.gate_parameter for w in wrappers(pruned)]
  before = [v.numpy().copy() for v in variables]
  kernel_before = wrappers(pruned)[0].layer.kernel.numpy().copy()
  x = np.random.RandomState(0).randn(16, 40).astype("float32")
  pruned.compile(keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.5), "mse")
  pruned.fit(x, x, batch_size=16, epochs=3, verbose=0, callbacks=[tf_gibbs.UpdatePruningStep()])
  for b, v in zip(before, variables):
    np.testing.assert_array_equal(v.numpy(), b)
  # The kernels are still decayed (the exclusion is precise).
  assert np.abs(wrappers(pruned)[0].layer.kernel.numpy()).sum() < np.abs(kernel_before).sum()


# --- 4. the reference's unbiased std ---------------------------------------------------------------


def test_threshold_uses_the_unbiased_std_of_the_reference():
  w = np.random.RandomState(1).randn(7, 3).astype("float32")
  b = float(adaptive_core.threshold(tf.constant(w), tf.constant(1.5)))
  np.testing.assert_allclose(b, 1.5 * np.std(w, ddof=1), rtol=1e-6)


# --- 5. the exact filter sampler's reference ramp reaches the ground state ---------------------


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_exact_filter_sampler_reference_ramp_reaches_the_target(sparsity):
  schedule = tf_gibbs.GibbsSchedule.reference("filter", 0, 100, target_sparsity=sparsity,
                                              sampler="exact")
  chromatic = tf_gibbs.GibbsSchedule.reference("filter", 0, 100, target_sparsity=sparsity)
  assert schedule.beta_end > chromatic.beta_end
  inputs = keras.Input((8, 8, 16))
  model = keras.Model(inputs, keras.layers.Conv2D(64, 3, name="conv")(inputs))
  pruned = tf_gibbs.prune_gibbs(model, schedule, hamiltonian="filter", sampler="exact")
  wrapper = wrappers(pruned)[0]
  pruned(np.zeros((1, 8, 8, 16), "float32"))
  fractions = []
  for step in range(100, 105):
    wrapper.pruning_step.assign(step - 1)
    pruned(np.zeros((1, 8, 8, 16), "float32"), training=True)
    fractions.append(1.0 - float(tf.reduce_mean(wrapper.mask)))
  # The training masks' sparsity (mean over five steps, one filter is 1/64) is p within 1 %.
  assert abs(np.mean(fractions) - sparsity) <= 0.01


# --- 6. uniforms in (0, 1): a probability-0 event never happens -------------------------------


def test_forced_zero_uniforms_never_draw_a_probability_zero_event(monkeypatch):
  zeros = lambda shape, seed, dtype=tf.float32, **kw: tf.zeros(shape, dtype)  # noqa: E731
  monkeypatch.setattr(tf.random, "stateless_uniform", zeros)
  u = structured.stateless_open_uniform([4], tf.constant([1, 2], tf.int64))
  assert float(tf.reduce_min(u)) > 0.0
  # Unstructured: a weight whose keep probability is 1e-30 is pruned, the others kept.
  weights = tf.constant([0.0, 1.0, 1.0, 1.0])
  mask, _ = gibbs_core.sample_unstructured_mask(weights, 0.25, 1e2, tf.constant([1, 2]))
  assert mask.numpy()[0] == 0.0
  # Sampling a count: index 0 has probability 0 and is never chosen.
  log_weights = tf.constant([[structured._NEG, 0.0, 0.0]], tf.float64)  # pylint: disable=protected-access
  assert int(structured._sample_count(log_weights, u[:1])[0]) == 1  # pylint: disable=protected-access


def test_hash_uniforms_are_in_the_open_interval(monkeypatch):
  monkeypatch.setattr(structured, "_mix32", lambda x: tf.zeros_like(x))
  u = structured.hash_uniform(tf.constant([1, 2], tf.int64), 0, [3]).numpy()
  assert np.all(u > 0.0) and np.all(u < 1.0)
  monkeypatch.setattr(structured, "_mix32", lambda x: tf.fill(tf.shape(x), tf.constant(
      0xFFFFFFFF, tf.uint32)))
  u = structured.hash_uniform(tf.constant([1, 2], tf.int64), 0, [3]).numpy()
  assert np.all(u < 1.0)


def test_open_uniforms_are_uniform():
  u = structured.stateless_open_uniform([200000], tf.constant([3, 4], tf.int64)).numpy()
  assert u.min() > 0.0 and u.max() < 1.0
  assert abs(u.mean() - 0.5) < 0.005
  assert math.isclose(float((u < 0.25).mean()), 0.25, abs_tol=0.005)


# --- 8. the conventions are where a user reads them ----------------------------------------------


def test_conventions_are_documented_where_users_read_them():
  import os  # pylint: disable=g-import-not-at-top
  root = os.path.join(os.path.dirname(__file__), "..")
  with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
    assert "docs/methods.md" in f.read()  # the README sends readers to the conventions
  with open(os.path.join(root, "docs", "methods.md"), encoding="utf-8") as f:
    methods = f.read()
  for text in (tf_gibbs.prune_gibbs.__doc__, tf_gibbs.GibbsPruning.__doc__, methods):
    assert "σ(2β(w² − Q_p))" in text and "twice the β" in text  # kernel energy's ±1 spins
    assert "⌊C_in/2⌋·n" in text  # the chromatic sampler's true colour size
