"""Adaptive sparsity loss (Retsinas et al., arXiv 2006.02768) in plain TensorFlow.

One trainable scalar r per layer sets the layer's magnitude threshold b = clip(r, 0, 5) · std(W)
(std without gradient, unbiased as in the reference code; the clip passes its gradient straight
through, so r can always come back into range); the forward pass uses the hard-thresholded weight and a budget loss on the
parameter- (or FLOP-) weighted density drives the whole network to a target sparsity.

Nothing here knows about Keras.
"""

import functools
import math

import tensorflow as tf

from tf_gibbs.core import l0

R_MAX = 5.0  # the reference code clamps r to [0, 5]
ESTIMATES = ("measured", "erf")


class PerGraph:
  """Tensors built once per TensorFlow graph being traced (and replica), for layers that share
  them, such as a budget's exact-budget scale; eagerly every call builds its own.

  Only the graph being built is held: a graph's tensors keep it alive, so a cache keyed by
  every graph ever traced would keep them all. A replica context is kept with its tensor so
  that its id is not reused meanwhile.
  """

  def __init__(self):
    self.graph, self.entries = None, {}

  def get(self, key, build):
    if tf.executing_eagerly():
      return build()
    graph = tf.compat.v1.get_default_graph()
    replica = tf.distribute.get_replica_context()
    if self.graph is not graph:
      self.graph, self.entries = graph, {}
    entry = (id(replica), key)
    if entry not in self.entries:
      self.entries[entry] = (replica, build())
    return self.entries[entry][1]


def clip_r(r):
  """clip(r, 0, 5) forward, with a straight-through (identity) gradient.

  Inside [0, 5] this is the reference code's clamp. Outside it, the reference's clamp has a
  zero gradient, so an r pushed below 0 (or above 5) would never come back: the layer would
  stay dense for the rest of training. The wrappers also project r into [0, 5] after every
  optimizer update (a variable constraint); the straight-through gradient is what lets it
  recover where no constraint runs (a hand-written update, r set by the user).
  """
  r = tf.convert_to_tensor(r)
  return r + tf.stop_gradient(tf.clip_by_value(r, 0.0, R_MAX) - r)


def unbiased_std(weight):
  """sqrt(Σ (w − mean)² / (N − 1)): the reference code's ``torch.std`` (Bessel-corrected)."""
  weight = tf.convert_to_tensor(weight)
  n = weight.shape.num_elements()
  variance = tf.reduce_mean(tf.square(weight - tf.reduce_mean(weight)))
  return tf.sqrt(variance * (n / max(n - 1, 1)))


def threshold(weight, r):
  """b = clip(r, 0, 5) · std(W), std the unbiased one (÷(N − 1), as the reference code's
  ``torch.std``); the gradient reaches r (straight through the clip, :func:`clip_r`), not W."""
  weight = tf.convert_to_tensor(weight)
  return clip_r(r) * tf.stop_gradient(unbiased_std(weight))


def masked_straight_through(weight, mask, b, straight_through=True):
  """Ŵ = W · m with the reference code's straight-through gradients (m = 1[|W| > b]).

  The reference writes Ŵ = b · ST(W / b), ST the hard shrink 1[|x| > 1] · x forward and the
  identity backward. Its gradients: dŴ/dW = 1 for every weight (pruned weights keep learning and
  can come back) and dŴ/db = ST(W/b) − W/b, which is 0 for kept weights and −W/b for pruned
  ones: the threshold learns from the task loss through the pruned weights only. We compute
  the exact forward value W · m (b · (W/b) is not W in floating point) and give those gradients
  directly (``tf.custom_gradient``: one multiply forward, a few element-wise ops backward,
  instead of a dozen of stop-gradient algebra).

  Args:
    weight: the kernel W.
    mask: 1[|W| > b] (or any 0/1 mask of W's shape; the b gradient treats 0 as pruned).
    b: the scalar threshold; the gradient −Σ g · W · (1 − m) / b reaches it.
    straight_through: scalar bool; False gives the plain gradient of W · m (g · m to W, as
      when fine-tuning under a frozen mask).
  """
  weight = tf.convert_to_tensor(weight)
  mask = tf.cast(mask, weight.dtype)
  b = tf.cast(b, weight.dtype)
  straight_through = tf.convert_to_tensor(straight_through, tf.bool)

  @tf.custom_gradient
  def forward(w, threshold):
    out = w * mask

    def grad(upstream):
      pruned = w - out  # W · (1 − m)
      d_threshold = -tf.reduce_sum(upstream * pruned) / tf.maximum(threshold, 1e-12)
      d_weight = tf.cond(straight_through, lambda: upstream, lambda: upstream * mask)
      return d_weight, d_threshold

    return out, grad

  return forward(weight, b)


def hard_threshold(weight, b):
  """Ŵ = W · 1[|W| > b] with straight-through gradients (:func:`masked_straight_through`)."""
  weight = tf.convert_to_tensor(weight)
  return masked_straight_through(weight, keep_mask(weight, b), b)


def keep_mask(weight, b):
  """1[|W| > b] as float32 (no gradient)."""
  return tf.cast(tf.abs(tf.stop_gradient(weight)) > tf.stop_gradient(b), tf.float32)


def erf_density(r):
  """The paper's Gaussian estimate of the kept fraction: d = 1 − erf(clip(r, 0, 5) / √2).

  Exact for Gaussian weights; heavier-tailed weights (what training produces) have more weights
  near zero, so at high targets the real zero fraction is below the estimate (methods.md §2).
  """
  return 1.0 - tf.math.erf(clip_r(r) / math.sqrt(2.0))


def corrected_density(kept_fraction, r):
  """d = d_erf(r) + stop_gradient(kept_fraction − d_erf(r)): a measured value, the erf slope.

  Our correction (not the paper's): the budget loss then sees the density that stripping will
  produce, so its minimum is at the real target, while the gradient keeps the erf model's
  smooth, always-negative slope in r (the true count is a step function with no useful
  gradient).
  """
  estimate = erf_density(r)
  return estimate + tf.stop_gradient(tf.cast(kept_fraction, estimate.dtype) - estimate)


def measured_density(weight, r):
  """The real kept fraction mean(1[|W| > b]) as the value, with the erf estimate's gradient."""
  return corrected_density(tf.reduce_mean(keep_mask(weight, threshold(weight, r))), r)


def density(weight, r, estimate="measured"):
  """The kept fraction of one layer by ``estimate``: ``"measured"`` or ``"erf"``."""
  if estimate == "measured":
    return measured_density(weight, r)
  if estimate == "erf":
    return erf_density(r)
  raise ValueError(f"Unknown estimate={estimate!r}; accepted values: {list(ESTIMATES)}.")


def budget_loss(densities, costs, target_sparsity):
  """(D − (1 − s))² with D = Σ_l c_l d_l / Σ_l c_l (Retsinas et al.).

  ``costs`` are the layers' parameter counts (``budget="params"``, the paper) or
  multiply-accumulates (``budget="flops"``). Only the global density is constrained; the
  per-layer split is learned.
  """
  densities = tf.stack([tf.cast(d, tf.float32) for d in densities])
  return _budget_error(densities, tf.constant([float(c) for c in costs], tf.float32),
                       target_sparsity)


def _budget_error(densities, costs, target_sparsity):
  total = tf.reduce_sum(costs * densities) / tf.reduce_sum(costs)
  return tf.square(total - (1.0 - target_sparsity))


def _group_budget_loss(r_parameters, multipliers, kept_fractions, costs, target_sparsity,
                       loss_weight, estimate):
  """λ · :func:`budget_loss` of a whole group from its stacked r parameters (r = m · θ, the
  gradient reaching θ unscaled, as :func:`tf_gibbs.core.l0.scaled_parameter`) and kept
  fractions: one small computation instead of a dozen scalar ops per layer."""
  r = l0.scaled_parameter(r_parameters, multipliers)
  if estimate == "erf":
    densities = erf_density(r)
  else:
    densities = corrected_density(kept_fractions, r)
  return loss_weight * _budget_error(densities, costs, target_sparsity)


group_budget_loss = {
    estimate: functools.partial(_group_budget_loss, estimate=estimate) for estimate in ESTIMATES}


def initial_r(target_sparsity):
  """r₀ = √2 · erfinv(0.6 · s): the reference code's starting threshold (in units of std)."""
  return math.sqrt(2.0) * float(tf.math.erfinv(tf.constant(0.6 * target_sparsity, tf.float64)))


def threshold_ratio(weight, b):
  """|W| / b (b floored at 1e-12), no gradient: what :func:`common_scale` counts and the
  exact-budget freeze compares with its k. One function for both, so that a weight at the
  boundary is counted and masked alike (|W| > k·b can round the other way)."""
  return tf.abs(tf.stop_gradient(weight)) / tf.maximum(tf.stop_gradient(b), 1e-12)


def common_scale(ratios, costs, target_sparsity, iterations=64):
  """The smallest k with Σ_l c_l · mean(ratio_l ≤ k) / Σ_l c_l ≥ s, by bisection.

  ``ratios`` are the layers' |W_l| / b_l (any shapes), ``costs`` their budget weights c_l.
  Pruning |W_l| ≤ k · b_l in every layer then gives a weighted zero fraction of s, exceeded
  only by the weight of values tied at k; each threshold keeps its learned ratio to the others.
  The freeze-step correction of the adaptive sparsity loss (our addition, not the paper's).
  Float32 bisection on [0, max ratio] for a fixed number of steps (graph- and XLA-friendly).
  """
  flat = [tf.reshape(tf.cast(r, tf.float32), [-1]) for r in ratios]
  shares = tf.constant([float(c) for c in costs], tf.float32)
  shares /= tf.reduce_sum(shares)
  target = tf.cast(target_sparsity, tf.float32)

  def zero_fraction(k):
    fractions = tf.stack([tf.reduce_mean(tf.cast(r <= k, tf.float32)) for r in flat])
    return tf.reduce_sum(shares * fractions)

  def step(i, low, high):
    mid = 0.5 * (low + high)
    enough = zero_fraction(mid) >= target
    return i + 1, tf.where(enough, low, mid), tf.where(enough, mid, high)

  high = tf.reduce_max(tf.stack([tf.reduce_max(r) for r in flat]))
  _, _, high = tf.while_loop(lambda i, low, high: i < iterations, step,
                             (tf.constant(0), tf.constant(0.0), high),
                             maximum_iterations=iterations)  # a static bound, for XLA
  return tf.stop_gradient(high)
