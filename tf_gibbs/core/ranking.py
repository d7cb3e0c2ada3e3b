"""Quantiles and exact-count masks in plain TensorFlow (no Keras, no tensorflow-probability).

Everything here has static shapes, so it runs eagerly, inside ``tf.function`` and under
``jit_compile=True`` with a sparsity that is a tensor (for example one that a schedule ramps).
"""

import tensorflow as tf


def _flat_float32(values):
  return tf.reshape(tf.cast(values, tf.float32), [-1])


def _static_size(flat):
  n = flat.shape.num_elements()
  if n is None:
    raise ValueError(f"values must have a fully defined shape, got {flat.shape}.")
  if n == 0:
    raise ValueError("values must not be empty.")
  return n


def _as_float64(x):
  """Python numbers go straight to float64 (tf.cast would round them through float32)."""
  return tf.cast(x, tf.float64) if tf.is_tensor(x) else tf.constant(x, tf.float64)


def quantile(values, q):
  """The q-quantile of ``values`` with linear interpolation (numpy's default method).

  Q_q = v_(lo) + (pos − lo)·(v_(lo+1) − v_(lo)),  pos = q·(n − 1),  lo = ⌊pos⌋,

  where v_(0) ≤ … ≤ v_(n−1) are the sorted values. This is the threshold Q_p of Gibbs pruning
  (Labach & Valaee, §1 of ``methods.md``), which the reference code takes from
  ``tfp.stats.percentile(..., interpolation='linear')``.

  Args:
    values: a tensor of any shape with a fully defined number of elements.
    q: scalar in [0, 1] (Python number or tensor).

  Returns:
    A float32 scalar.
  """
  flat = _flat_float32(values)
  n = _static_size(flat)
  ordered = tf.sort(flat)
  pos = _as_float64(q) * float(n - 1)  # float64: exact positions for large n
  lo = tf.clip_by_value(tf.cast(tf.floor(pos), tf.int32), 0, n - 1)
  hi = tf.minimum(lo + 1, n - 1)
  frac = tf.cast(pos - tf.cast(lo, tf.float64), tf.float32)
  v_lo = tf.gather(ordered, lo)
  v_hi = tf.gather(ordered, hi)
  return v_lo + frac * (v_hi - v_lo)


def pruned_count(n, sparsity):
  """round(sparsity · n) as an int32 tensor, computed in float64 so large n do not drift."""
  count = tf.round(_as_float64(sparsity) * float(n))
  return tf.cast(tf.clip_by_value(count, 0.0, float(n)), tf.int32)


def exact_count_keep_mask(scores, sparsity):
  """Deterministic mask that prunes exactly round(sparsity·n) entries with the smallest scores.

  mask_i = 0  iff  rank(score_i) < round(sparsity · n),

  where rank orders the scores ascending and breaks ties by flat position (lower index is
  pruned first), so the count is exact even when scores are all equal. This is the deployment
  mask of all tf_gibbs Hamiltonians: magnitude pruning at exactly the target fraction. (The
  reference code keeps ``score >= quantile``, whose count drifts with ties and interpolation.)

  Args:
    scores: tensor of any fully defined shape; larger means more worth keeping.
    sparsity: scalar in [0, 1].

  Returns:
    float32 tensor of ``scores``' shape with values in {0, 1}.
  """
  flat = _flat_float32(scores)
  n = _static_size(flat)
  order = tf.argsort(flat, stable=True)
  ranks = tf.scatter_nd(order[:, None], tf.range(n, dtype=tf.int32), [n])
  keep = ranks >= pruned_count(n, sparsity)
  return tf.reshape(tf.cast(keep, tf.float32), tf.shape(scores))
