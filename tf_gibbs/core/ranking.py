"""Order statistics, quantiles and exact-count masks in plain TensorFlow, by radix select.

No Keras, no tensorflow-probability, no sort: ``tf.sort`` is slow on CPU and slower under XLA.
Everything here has static shapes, so it runs eagerly, inside ``tf.function`` and under
``jit_compile=True`` with a sparsity that is a tensor (for example one that a schedule ramps).
"""

import tensorflow as tf

from tf_gibbs.core.xla import nested_xla
from tf_gibbs.core.xla import nested_xla_allowed


def _flat_float32(values):
  return tf.reshape(tf.cast(values, tf.float32), [-1])


def _static_size(flat):
  n = flat.shape.num_elements()
  if n is None:
    raise ValueError(f"values must have a fully defined shape, got {flat.shape}.")
  if n == 0:
    raise ValueError("values must not be empty.")
  return n


def as_float64(x):
  """Python numbers go straight to float64 (tf.cast would round them through float32)."""
  return tf.cast(x, tf.float64) if tf.is_tensor(x) else tf.constant(x, tf.float64)


# Radix select: 32-bit keys, three digit passes of 11 + 11 + 10 bits (shift, width).
_RADIX_PASSES = ((21, 11), (10, 11), (0, 10))
_SIGN_BIT = 0x80000000


def _ordered_keys(flat):
  """float32 → uint32 keys with the same order (negatives flipped, positives get the sign bit)."""
  bits = tf.bitcast(flat, tf.uint32)
  negative = tf.bitwise.right_shift(bits, tf.constant(31, tf.uint32)) > 0
  return tf.where(negative, tf.bitwise.invert(bits),
                  tf.bitwise.bitwise_or(bits, tf.constant(_SIGN_BIT, tf.uint32)))


def _key_to_float(key):
  bits = tf.where(key >= tf.constant(_SIGN_BIT, tf.uint32),
                  tf.bitwise.bitwise_and(key, tf.constant(_SIGN_BIT - 1, tf.uint32)),
                  tf.bitwise.invert(key))
  return tf.bitcast(bits, tf.float32)


def kth_smallest(values, k):
  """The k-th smallest value (0-based rank k) of ``values``, exactly, without sorting.

  Radix select on the order-preserving 32-bit keys of the float32 values: each of three passes
  histograms one digit of the keys that share the prefix found so far (``DenseBincount``), and
  the cumulative counts give the digit holding rank k. Cost
  O(n) per pass with static shapes, so it runs under XLA; on CPU it is several times faster
  than ``tf.sort`` (which the reference code's percentile needs).

  Args:
    values: tensor of any fully defined shape (flattened).
    k: int scalar in [0, n − 1].

  Returns:
    float32 scalar.
  """
  flat = _flat_float32(values)
  n = _static_size(flat)
  keys = _ordered_keys(flat)
  rank = tf.clip_by_value(tf.cast(k, tf.int32), 0, n - 1)
  prefix = tf.constant(0, tf.uint32)
  for shift, width in _RADIX_PASSES:
    top = shift + width
    digit = tf.bitwise.bitwise_and(tf.bitwise.right_shift(keys, tf.constant(shift, tf.uint32)),
                                   tf.constant((1 << width) - 1, tf.uint32))
    digit = tf.cast(digit, tf.int32)
    if top < 32:  # keys outside the prefix go to an overflow bin that is dropped
      in_prefix = tf.equal(tf.bitwise.right_shift(keys, tf.constant(top, tf.uint32)), prefix)
      digit = tf.where(in_prefix, digit, 1 << width)
    # bincount: an order of magnitude faster on CPU than unsorted_segment_sum
    counts = tf.raw_ops.DenseBincount(input=digit, size=tf.constant((1 << width) + 1),
                                      weights=tf.zeros([0], tf.int32))[:1 << width]
    cumulative = tf.cumsum(counts)
    chosen = tf.reduce_sum(tf.cast(cumulative <= rank, tf.int32))
    rank -= tf.gather(cumulative, chosen) - tf.gather(counts, chosen)
    prefix = tf.bitwise.bitwise_or(
        tf.bitwise.left_shift(prefix, tf.constant(width, tf.uint32)), tf.cast(chosen, tf.uint32))
  return _key_to_float(prefix)


def _quantile(values, q, n=None):
  """The q-quantile of ``values`` with linear interpolation (numpy's default method).

  Q_q = v_(lo) + (pos − lo)·(v_(lo+1) − v_(lo)),  pos = q·(n − 1),  lo = ⌊pos⌋,

  where v_(0) ≤ … ≤ v_(n−1) are the sorted values. This is the threshold Q_p of Gibbs pruning
  (Labach & Valaee, §1 of ``methods.md``), which the reference code takes from
  ``tfp.stats.percentile(..., interpolation='linear')``. The order statistics come from
  :func:`kth_smallest` (no sort).

  Args:
    values: a tensor of any shape with a fully defined number of elements.
    q: scalar in [0, 1] (Python number or tensor).
    n: None, or an int32 scalar: the quantile of the first n values, the others being +inf
      padding (see :func:`padded_size`).

  Returns:
    A float32 scalar.
  """
  flat = _flat_float32(values)
  size = _static_size(flat)
  count = size if n is None else n
  pos = as_float64(q) * tf.cast(count - 1, tf.float64)  # float64: exact positions for large n
  lo = tf.clip_by_value(tf.cast(tf.floor(pos), tf.int32), 0, count - 1)
  frac = tf.cast(pos - tf.cast(lo, tf.float64), tf.float32)
  v_lo = kth_smallest(flat, lo)  # +inf padding sorts after every rank below n
  # v_(lo+1) is v_lo again if v_lo is repeated beyond rank lo, else the next larger value.
  at_most = flat <= v_lo
  if n is not None:
    at_most &= tf.range(size) < n
  repeated = tf.reduce_sum(tf.cast(at_most, tf.int32)) >= lo + 2
  larger = tf.reduce_min(tf.where(flat > v_lo, flat, tf.fill(tf.shape(flat), float("inf"))))
  v_hi = tf.where(repeated | (lo + 1 >= count), v_lo, larger)
  return v_lo + frac * (v_hi - v_lo)


def pruned_count(n, sparsity):
  """min(round(sparsity · n), n − 1) as an int32 tensor: the groups a per-layer target prunes.

  round(p·n) is computed in float64 (half to even, like Python's ``round``), so large n do not
  drift, and it is capped at n − 1: a per-layer target never prunes the last group (weight,
  kernel, filter or unit) of a layer, so no layer is pruned away entirely. The cap only acts
  when round(p·n) = n, i.e. p ≥ 1 − 1/(2n) (p = 0.99 on fewer than 50 groups, 0.95 on 8).
  :func:`python_pruned_count` is the same count for Python numbers.
  """
  if tf.is_tensor(n):
    n = tf.cast(n, tf.float64)
    most = tf.maximum(n - 1.0, 0.0)
  else:
    n, most = float(n), float(max(n - 1, 0))
  count = tf.round(as_float64(sparsity) * n)
  return tf.cast(tf.clip_by_value(count, 0.0, most), tf.int32)


def python_pruned_count(n, sparsity):
  """(count, capped): :func:`pruned_count` for a Python ``sparsity``, and whether round(p·n)
  had to be capped at n − 1 to keep one group."""
  requested = round(float(sparsity) * n)
  count = min(max(requested, 0), max(n - 1, 0))
  return count, requested > count


def _exact_count_keep_mask(scores, sparsity, n=None):
  """Deterministic mask that prunes exactly k = :func:`pruned_count` (n, sparsity) entries
  with the smallest scores: round(sparsity·n), but never all n (one entry, the largest, stays).

  mask_i = 0  iff  rank(score_i) < k,

  where rank orders the scores ascending and breaks ties by flat position (lower index is
  pruned first), so the count is exact even when scores are all equal. This is the deployment
  mask of all tf_gibbs Hamiltonians: magnitude pruning at exactly the target fraction. (The
  reference code keeps ``score >= quantile``, whose count drifts with ties and interpolation.)
  Computed with one :func:`kth_smallest` and a cumulative count of ties (no sort).

  Args:
    scores: tensor of any fully defined shape; larger means more worth keeping.
    sparsity: scalar in [0, 1].
    n: None, or an int32 scalar: rank the first n scores, the others being +inf padding (kept,
      never tied with a pruned score before them).

  Returns:
    float32 tensor of ``scores``' shape with values in {0, 1}.
  """
  flat = _flat_float32(scores)
  k = pruned_count(_static_size(flat) if n is None else n, sparsity)
  cut = kth_smallest(flat, tf.maximum(k - 1, 0))  # the largest pruned score
  below = flat < cut
  ties = tf.equal(flat, cut)
  ties_to_prune = k - tf.reduce_sum(tf.cast(below, tf.int32))
  tie_position = tf.cumsum(tf.cast(ties, tf.int32), exclusive=True)
  pruned = (below | (ties & (tie_position < ties_to_prune))) & (k > 0)
  return tf.reshape(tf.cast(tf.logical_not(pruned), tf.float32), tf.shape(scores))


# Nested XLA clusters compile once per input shape: ~0.4 s each on a 2-core CPU, and an edge
# model (MobileNetV2: 28 kernel shapes) would compile one per layer shape before its first step.
# Below _PADDED_BELOW values the selections run on the values padded with +inf to the next power
# of two, so all small layers share a few compilations (where the padding is cheap: these
# clusters cost their launch more than their work); larger layers run at their own size, where
# up to 2x the work would show in the step time (ResNet-20's 64-filter layers: 36,864 values).
_PADDED_BELOW = 1 << 14


def padded_size(n):
  """The length the compiled selections run on for n values (n ≥ 1): the next power of two
  (at least 2) below 2¹⁴, n itself from there."""
  return n if n >= _PADDED_BELOW else 1 << max(n - 1, 1).bit_length()


def _pad_with_inf(flat):
  n = _static_size(flat)
  return tf.pad(flat, [[0, padded_size(n) - n]], constant_values=float("inf")), n


# The compiled functions themselves: the callers below already chose the cluster over plain ops.
_quantile_cluster = nested_xla(_quantile).xla_cluster
_exact_count_cluster = nested_xla(_exact_count_keep_mask).xla_cluster


def quantile(values, fraction):
  """:func:`_quantile` (numpy's linear q-quantile) as a nested XLA cluster shared by every size
  that pads to the same :func:`padded_size`; the fraction goes in as a float64 tensor (no
  retracing per value, no float32 rounding)."""
  fraction = as_float64(fraction)
  if not nested_xla_allowed():
    return _quantile(values, fraction)
  padded, n = _pad_with_inf(_flat_float32(values))
  return _quantile_cluster(padded, fraction, tf.constant(n, tf.int32))


def exact_count_keep_mask(scores, fraction):
  """:func:`_exact_count_keep_mask` as a nested XLA cluster shared by every size that pads to
  the same :func:`padded_size` (float64 fraction, as :func:`quantile`)."""
  fraction = as_float64(fraction)
  if not nested_xla_allowed():
    return _exact_count_keep_mask(scores, fraction)
  padded, n = _pad_with_inf(_flat_float32(scores))
  keep = _exact_count_cluster(padded, fraction, tf.constant(n, tf.int32))
  return tf.reshape(keep[:n], tf.shape(scores))


# For callers that build their own XLA cluster around it (a float64 fraction tensor).
quantile_unjitted = _quantile
