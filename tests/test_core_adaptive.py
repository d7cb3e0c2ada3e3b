"""The maths of tf_gibbs.core.adaptive: thresholds, straight-through gradients, estimates."""

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import special

from tf_gibbs.core import adaptive


def test_threshold_is_clipped_r_times_std_with_gradient_to_r_only():
  w = tf.constant(np.random.RandomState(0).randn(100).astype("float32"))
  r = tf.Variable(0.7)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(w)
    b = adaptive.threshold(w, r)
  std = np.std(w.numpy(), ddof=1)  # the reference code's unbiased torch.std
  assert float(b) == pytest.approx(0.7 * std, rel=1e-5)
  assert float(tape.gradient(b, r)) == pytest.approx(std, rel=1e-5)
  assert tape.gradient(b, w) is None
  assert float(adaptive.threshold(w, 9.0)) == pytest.approx(5.0 * std, rel=1e-5)
  assert float(adaptive.threshold(w, -1.0)) == 0.0


def test_hard_threshold_forward_and_straight_through_gradients():
  w = tf.constant([-2.0, -0.5, 0.2, 0.9, 1.5])
  b = tf.Variable(1.0)
  upstream = tf.constant([1.0, 2.0, 3.0, 4.0, 5.0])
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(w)
    out = adaptive.hard_threshold(w, b)
    loss = tf.reduce_sum(out * upstream)
  np.testing.assert_array_equal(out.numpy(), [-2.0, 0.0, 0.0, 0.0, 1.5])
  np.testing.assert_allclose(tape.gradient(loss, w).numpy(), upstream.numpy())  # dŴ/dW = 1
  # dŴ/db = −W/b for pruned weights, 0 for kept ones.
  expected = sum(-wi * ui for wi, ui in zip([-0.5, 0.2, 0.9], [2.0, 3.0, 4.0]))
  assert float(tape.gradient(loss, b)) == pytest.approx(expected, rel=1e-6)
  assert np.all(adaptive.hard_threshold(w, 0.0).numpy() == w.numpy())  # b = 0: nothing pruned


def test_masked_straight_through_frozen_gradients_and_xla():
  w = tf.constant([-2.0, -0.5, 0.2, 0.9, 1.5])
  mask = tf.constant([1.0, 0.0, 0.0, 0.0, 1.0])
  upstream = tf.constant([1.0, 2.0, 3.0, 4.0, 5.0])

  def gradients(straight_through):
    b = tf.constant(1.0)
    with tf.GradientTape() as tape:
      tape.watch([w, b])
      out = adaptive.masked_straight_through(w, mask, b, straight_through)
      loss = tf.reduce_sum(out * upstream)
    return (out,) + tuple(tape.gradient(loss, [w, b]))

  expected_b = -(-0.5 * 2.0 + 0.2 * 3.0 + 0.9 * 4.0)
  for fn in (gradients, tf.function(gradients, jit_compile=True)):
    out, d_w, d_b = fn(tf.constant(False))  # fine-tuning under a frozen mask: g · m to W
    np.testing.assert_array_equal(out.numpy(), [-2.0, 0.0, 0.0, 0.0, 1.5])
    np.testing.assert_allclose(d_w.numpy(), [1.0, 0.0, 0.0, 0.0, 5.0])
    assert float(d_b) == pytest.approx(expected_b, rel=1e-6)
    _, d_w, _ = fn(tf.constant(True))
    np.testing.assert_allclose(d_w.numpy(), upstream.numpy())


def test_erf_density_is_the_gaussian_kept_fraction():
  rng = np.random.RandomState(1)
  w = rng.randn(400_000).astype("float32")
  for r in (0.5, 1.0, 1.645):
    measured = float(np.mean(np.abs(w) > r * w.std()))
    assert float(adaptive.erf_density(r)) == pytest.approx(1 - special.erf(r / math.sqrt(2)),
                                                           rel=1e-5)
    assert float(adaptive.erf_density(r)) == pytest.approx(measured, abs=3e-3)


def test_measured_density_has_the_real_value_and_the_erf_gradient():
  w = tf.constant(np.random.RandomState(2).laplace(size=50_000).astype("float32"))
  r = tf.Variable(2.0)
  with tf.GradientTape() as tape:
    d = adaptive.density(w, r, "measured")
  real = float(np.mean(np.abs(w.numpy()) > 2.0 * np.std(w.numpy(), ddof=1)))
  assert float(d) == pytest.approx(real, abs=1e-6)
  # Laplace weights: the erf estimate is off, the measured one is not.
  assert abs(float(adaptive.density(w, r, "erf")) - real) > 0.005
  slope = -math.sqrt(2 / math.pi) * math.exp(-2.0)  # d/dr (1 − erf(r/√2)) at r = 2
  assert float(tape.gradient(d, r)) == pytest.approx(slope, rel=1e-5)
  with pytest.raises(ValueError, match="estimate"):
    adaptive.density(w, r, "gaussian")


def test_budget_loss_weights_densities_by_cost():
  loss = adaptive.budget_loss([tf.constant(0.5), tf.constant(0.1)], [100, 300], 0.8)
  assert float(loss) == pytest.approx(((0.5 * 100 + 0.1 * 300) / 400 - 0.2) ** 2)


def test_initial_r_matches_the_reference_formula():
  assert adaptive.initial_r(0.9) == pytest.approx(math.sqrt(2) * special.erfinv(0.54))


@pytest.mark.parametrize("target", [0.0, 0.5, 0.9, 0.95])
def test_common_scale_hits_the_weighted_zero_fraction(target):
  rng = np.random.RandomState(3)
  ratios = [np.abs(rng.randn(3000)), np.abs(rng.laplace(size=500)) * 3, rng.rand(40)]
  costs = [3000 * 4, 500 * 64, 40]  # a FLOP-like weighting
  k = float(adaptive.common_scale([tf.constant(r, tf.float32) for r in ratios], costs, target))
  shares = np.array(costs, float) / sum(costs)

  def fraction(scale):
    return sum(s * np.mean(r.astype("float32") <= scale) for s, r in zip(shares, ratios))

  assert fraction(k) >= target - 1e-6
  below = [v for r in ratios for v in r.astype("float32") if v < k]
  if below:
    assert fraction(max(below)) < target  # k is the smallest such value


@pytest.mark.parametrize("estimate", ["erf", "measured"])
def test_group_budget_loss_equals_the_per_layer_formula_with_its_gradients(estimate):
  theta = tf.Variable([0.5, 1.2, 2.0])
  multipliers = tf.constant([2.0, 1.0, 0.5])
  kept = tf.constant([0.3, 0.2, 0.05])
  costs = tf.constant([100.0, 400.0, 2500.0])
  with tf.GradientTape(persistent=True) as tape:
    fused = adaptive.group_budget_loss[estimate](theta, multipliers, kept, costs,
                                                 tf.constant(0.8), tf.constant(10.0))
    r = [m * tf.stop_gradient(t) + (t - tf.stop_gradient(t))
         for m, t in zip(tf.unstack(multipliers), tf.unstack(theta))]
    densities = [adaptive.erf_density(ri) if estimate == "erf"
                 else adaptive.corrected_density(k, ri) for ri, k in zip(r, tf.unstack(kept))]
    reference = 10.0 * adaptive.budget_loss(densities, costs.numpy().tolist(), 0.8)
  assert float(fused) == pytest.approx(float(reference), rel=1e-5)
  np.testing.assert_allclose(tape.gradient(fused, theta).numpy(),
                             tape.gradient(reference, theta).numpy(), rtol=1e-5)
