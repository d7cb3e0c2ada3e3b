"""The gate maths of tf_gibbs.core.l0, against closed forms and independent integrals."""

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import integrate
from scipy import stats

from tf_gibbs.core import l0


def _grad(fn, x):
  x = tf.constant(x, tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = fn(x)
  return y.numpy(), tape.gradient(y, x).numpy()


def test_deterministic_gate_range_exact_zeros_and_ones():
  log_alpha = np.linspace(-8, 8, 2001).astype("float32")
  z = l0.deterministic_gate(log_alpha).numpy()
  assert z.min() == 0.0 and z.max() == 1.0
  closed = log_alpha < l0.CLOSED_LOG_ALPHA - 1e-4
  opened = log_alpha > l0.OPEN_LOG_ALPHA + 1e-4
  assert (z[closed] == 0.0).all() and (z[opened] == 1.0).all()
  middle = ~closed & ~opened & (np.abs(log_alpha - l0.CLOSED_LOG_ALPHA) > 1e-4) & (
      np.abs(log_alpha - l0.OPEN_LOG_ALPHA) > 1e-4)
  assert ((z[middle] > 0) & (z[middle] < 1)).all()
  assert np.all(np.diff(z) >= 0)
  assert l0.CLOSED_LOG_ALPHA == pytest.approx(-math.log(11))


def test_deterministic_gate_gradients_inside_and_straight_through_on_the_clip():
  points = [-5.0, 0.0, 5.0]
  stretch_slope = [(l0.ZETA - l0.GAMMA) * s * (1 - s) for s in 1 / (1 + np.exp(-np.array(points)))]
  _, through = _grad(lambda x: l0.deterministic_gate(x), points)
  np.testing.assert_allclose(through, stretch_slope, rtol=1e-5)
  _, exact = _grad(lambda x: l0.deterministic_gate(x, straight_through=False), points)
  np.testing.assert_allclose(exact, [0.0, stretch_slope[1], 0.0], rtol=1e-5)


@pytest.mark.parametrize("log_alpha", [-2.0, 0.0, 1.5])
def test_stochastic_gate_matches_its_closed_form_distribution(log_alpha):
  n = 200_000
  z = l0.stochastic_gate(tf.fill([n], log_alpha), seed=tf.constant([3, 7])).numpy()
  assert z.min() == 0.0 and z.max() == 1.0
  p0 = float(l0.hard_concrete_cdf(0.0, log_alpha))
  p1 = 1.0 - float(l0.hard_concrete_cdf(1.0 - 1e-12, log_alpha))
  for observed, expected in ((np.mean(z == 0), p0), (np.mean(z == 1), p1)):
    bound = 5 * math.sqrt(expected * (1 - expected) / n)  # 5 sigma
    assert abs(observed - expected) < bound
  # P(z > 0) is the L0 surrogate.
  assert float(l0.probability_nonzero(log_alpha)) == pytest.approx(1 - p0, rel=1e-5)
  # Interior values follow the CDF (Kolmogorov–Smirnov on the continuous part).
  inner = z[(z > 0) & (z < 1)]
  cdf = lambda v: ((np.asarray(l0.hard_concrete_cdf(v, log_alpha)) - p0)
                   / (1 - p0 - p1))
  assert stats.kstest(inner[:20000], cdf).pvalue > 1e-3
  # The expected gate: Monte Carlo vs quadrature vs an independent adaptive integral.
  expected_gate = float(l0.expected_gate(tf.constant(log_alpha)))
  reference, _ = integrate.quad(
      lambda v: 1 - float(l0.hard_concrete_cdf(v, log_alpha)), 0, 1, epsabs=1e-10)
  assert expected_gate == pytest.approx(reference, abs=1e-7)
  assert abs(z.mean() - expected_gate) < 5 * z.std() / math.sqrt(n)


def test_stochastic_gate_is_a_pure_function_of_its_seed():
  a = l0.stochastic_gate(tf.zeros([50]), tf.constant([1, 2]))
  b = l0.stochastic_gate(tf.zeros([50]), tf.constant([1, 2]))
  c = l0.stochastic_gate(tf.zeros([50]), tf.constant([1, 3]))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_stochastic_gate_has_gradients_to_log_alpha():
  _, grads = _grad(lambda x: tf.reduce_sum(l0.stochastic_gate(x, tf.constant([0, 1]))),
                   np.zeros(1000, "float32"))
  assert (grads > 0).mean() > 0.5 and (grads >= 0).all()


def test_scaled_parameter_value_and_unscaled_gradient():
  value, grad = _grad(lambda x: l0.scaled_parameter(x, 10.0) ** 2, [0.3])
  assert value[0] == pytest.approx(9.0)
  assert grad[0] == pytest.approx(2 * 3.0)  # d(r²)/dr at r = 3, not multiplied by 10


@pytest.mark.parametrize("granularity,shape", [
    ("weight", (9, 4, 8)), ("kernel", (1, 4, 8)), ("filter", (1, 1, 8)), ("unit", (1, 1, 8)),
    ("input_unit", (1, 4, 1))])
def test_group_shapes(granularity, shape):
  assert l0.group_shape((9, 4, 8), granularity) == shape


def test_granularity_fit_and_unknown_names():
  assert l0.granularity_misfit("kernel", "conv") is None
  assert "Dense" in l0.granularity_misfit("kernel", "dense")
  assert "unit" in l0.granularity_misfit("filter", "dense")
  assert l0.granularity_misfit("unit", "conv") is not None
  assert l0.granularity_misfit("filter", "depthwise") is None
  with pytest.raises(ValueError, match="accepted values"):
    l0.group_shape((1, 2, 3), "channel")


def test_budget_targets_pick_exactly_the_smallest_importances_even_with_ties():
  importance = tf.constant([[3.0, -1.0, 3.0, 0.5, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]])
  targets = l0.budget_targets(importance, 0.4).numpy()
  assert targets.sum() == 4
  assert targets[0, 1] == 1 and targets[0, 3] == 1
  assert l0.budget_targets(importance, 0.0).numpy().sum() == 0


@pytest.mark.parametrize("granularity,axes", [
    ("weight", ()), ("kernel", (0,)), ("filter", (0, 1)), ("input_unit", (0, 2))])
def test_group_importance_is_the_gated_squared_magnitude_of_each_group(granularity, axes):
  rng = np.random.RandomState(0)
  weight = rng.randn(9, 4, 6).astype("float32")
  gates = rng.rand(*l0.group_shape(weight.shape, granularity)).astype("float32")
  expected = np.sum(np.square(weight * gates), axis=axes, keepdims=True)
  got = l0.group_importance(tf.constant(weight), tf.constant(gates)).numpy()
  assert got.shape == gates.shape
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_closed_fraction():
  assert float(l0.closed_fraction(tf.constant([0.0, 0.0, 0.3, 1.0]))) == 0.5


@pytest.mark.parametrize("budget", [None, 0.5])
def test_group_penalty_is_the_sum_of_the_layer_penalties_with_per_layer_gradient_factors(budget):
  """Value: λ Σ_l c_l Σ_{open targeted gates} σ(log α − T log(−γ/ζ)) (NumPy); gradient of layer
  l: its plain gradient times exp(μ_l) in budget mode; 0 from the end step on."""
  from tf_gibbs.schedule import L0Schedule  # pylint: disable=g-import-not-at-top
  schedule = L0Schedule(l0_strength=0.7, target_sparsity=budget, end_step=100)
  scale = 2.0
  rng = np.random.RandomState(0)
  thetas = [rng.uniform(-3, 3, shape).astype("float32") for shape in ([4, 3], [1, 5])]
  targets = [rng.randint(0, 2, t.shape).astype("float32") for t in thetas]
  mus = [0.0, 1.5] if budget else [0.0, 0.0]
  coefficients = [0.25, 0.125]
  params = [tf.Variable(t) for t in thetas]
  kwargs = dict(schedule=schedule, scale=scale, temperature=l0.TEMPERATURE)
  with tf.GradientTape(persistent=True) as tape:
    group = l0.group_penalty(params, targets, mus, 10, coefficients, **kwargs)
    singles = [l0.penalty(p, t, m, 10, c, **kwargs)
               for p, t, m, c in zip(params, targets, mus, coefficients)]
  expected = 0.0
  for theta, target, c in zip(thetas, targets, coefficients):
    log_alpha = scale * theta.astype("float64")
    nonzero = 1 / (1 + np.exp(-(log_alpha - l0.TEMPERATURE * math.log(-l0.GAMMA / l0.ZETA))))
    if budget:
      nonzero *= (log_alpha > l0.CLOSED_LOG_ALPHA) * target
    expected += 0.7 * c * nonzero.sum()
  assert float(group) == pytest.approx(expected, rel=1e-5)
  assert float(group) == pytest.approx(sum(float(s) for s in singles), rel=1e-6)
  for param, single, mu in zip(params, singles, mus):
    plain = tape.gradient(single, param).numpy() / math.exp(mu)
    np.testing.assert_allclose(tape.gradient(group, param).numpy(), math.exp(mu) * plain,
                               rtol=1e-5)
    assert np.abs(plain).sum() > 0
  assert float(l0.group_penalty(params, targets, mus, 100, coefficients, **kwargs)) == 0.0


@pytest.mark.parametrize("budget", [None, 0.5])
@pytest.mark.parametrize("noisy", [False, True])
def test_training_step_phases_weight_mask_and_gradients(budget, noisy):
  """Before begin_step the kernel passes unchanged (mask of ones, no gate gradient); while live
  it is kernel · z with mask 1[ẑ > 0]; at end_step (budget) the targeted gates close; after it
  the kernel is kernel ⊙ frozen mask. Values and gradients exactly, phase by phase."""
  from tf_gibbs.schedule import L0Schedule
  rng = np.random.default_rng(3)
  schedule = L0Schedule(target_sparsity=budget, begin_step=2, end_step=6, frequency=1)
  weight = tf.constant(rng.normal(size=(3, 4)), tf.float32)
  view, groups = (3, 4), (1, 4)   # one gate per output column
  parameter = tf.constant(rng.normal(size=groups) * 0.3, tf.float32)
  mask = tf.constant((rng.random((3, 4)) > 0.3), tf.float32)
  targets = tf.constant([[0.0, 1.0, 0.0, 1.0]]) if budget else tf.zeros([])
  noise = l0.gate_noise(groups, tf.constant([1, 2], tf.int64)) if noisy else None

  for step in [0, 1, 3, 6, 9]:
    with tf.GradientTape(persistent=True) as tape:
      tape.watch([weight, parameter])
      effective, new_mask, new_targets, _ = l0.training_step(
          weight, mask, parameter, targets, tf.constant(0.0), tf.constant(step, tf.int64), noise,
          schedule=schedule, view=view, scale=2.0, temperature=l0.TEMPERATURE)
      loss = tf.reduce_sum(effective * tf.reshape(tf.range(12, dtype=tf.float32), (3, 4)))
    d_weight = tape.gradient(loss, weight)
    d_parameter = tape.gradient(loss, parameter)
    upstream = np.arange(12, dtype=np.float32).reshape(3, 4)
    log_alpha = 2.0 * parameter
    deterministic = l0.deterministic_gate(log_alpha).numpy()
    if step < 2:
      np.testing.assert_array_equal(effective, weight)
      np.testing.assert_array_equal(new_mask, np.ones((3, 4)))
      np.testing.assert_array_equal(d_weight, upstream)
      assert d_parameter is None or not np.any(d_parameter)
    elif step < 6:
      gates = (l0.hard_concrete(log_alpha, noise) if noisy else
               l0.deterministic_gate(log_alpha)).numpy()
      np.testing.assert_array_equal(effective, weight.numpy() * gates)
      np.testing.assert_array_equal(new_mask, np.broadcast_to(deterministic, (3, 4)))
      np.testing.assert_array_equal(d_weight, upstream * gates)
      assert np.any(d_parameter)
    else:
      frozen = mask.numpy()
      if budget and step == 6:
        frozen = frozen * (1.0 - np.broadcast_to(new_targets.numpy(), (3, 4)))
        assert 0 < np.sum(new_targets) < 4
      np.testing.assert_array_equal(effective, weight.numpy() * frozen)
      np.testing.assert_array_equal(new_mask, frozen)
      np.testing.assert_array_equal(d_weight, upstream * frozen)
      assert d_parameter is None or not np.any(d_parameter)
