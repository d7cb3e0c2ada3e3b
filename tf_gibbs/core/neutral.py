"""The maths of ``methods.md`` in backend-neutral ``keras.ops``: Keras 3 on TensorFlow, JAX, PyTorch.

This module is the backend-neutral statement of every equation tf_gibbs uses; the Keras 3
wrappers (:mod:`tf_gibbs.keras3`) run it on whichever backend Keras 3 runs. The tf_keras front
keeps the TensorFlow implementations next to it (:mod:`tf_gibbs.core.gibbs`, ``l0``,
``adaptive``, ``ranking``, ``structured``) as its fast path — nested XLA clusters with padded
selections, ``tf.custom_gradient`` — and ``tests/keras3/test_neutral_core.py`` checks that both
give the same results on the same inputs (the same uniforms, weights and parameters). Both
select order statistics by radix select, here from 2¹⁴ values on (a sort below).

Differences from the TensorFlow path, stated where a user of Keras 3 reads them:

* Randomness is one counter-based hash (:func:`hash_uniform`, integer ``keras.ops``) of
  (layer seed, step, draw): the same numbers on every backend, inside and outside ``jit``; the
  TensorFlow path draws its unstructured and kernel uniforms from ``stateless_uniform``.
* Log-space sampler arithmetic runs in float64 where the backend has it (TensorFlow, PyTorch,
  JAX with ``jax_enable_x64``) and in float32 on JAX by default (:func:`wide_float`): the
  kernel and exact filter samplers then lose the O(1) differences between configurations
  whose log-weights exceed ~1e6 (β·n·w² beyond that; at that β the samples are the
  deterministic mask anyway).
* Straight-through and rescaled gradients are written with ``stop_gradient`` algebra
  (v = stop_gradient(f(x)) + (x − stop_gradient(x))·g), which keeps forward values exact, as
  ``keras.ops.custom_gradient`` has no PyTorch implementation.
"""

import math

import numpy as np

import keras
from keras import ops

from tf_gibbs.core.l0 import GAMMA
from tf_gibbs.core.l0 import TEMPERATURE
from tf_gibbs.core.l0 import ZETA
from tf_gibbs.core.adaptive import R_MAX
from tf_gibbs.core.ranking import python_pruned_count

sg = ops.stop_gradient


def wide_float():
  """"float64" where the backend computes in it, else "float32" (JAX without x64)."""
  if keras.backend.backend() == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    return "float64" if jax.config.jax_enable_x64 else "float32"
  return "float64"


def _impossible(dtype):
  """log(0) stand-in that keeps logaddexp finite: −1e300 in float64, −1e30 in float32."""
  return -1e300 if dtype == "float64" else -1e30


def straight_through(value, x, slope=1.0):
  """``value`` forward (exactly), d/dx = ``slope`` backward: sg(value) + (x − sg(x))·slope."""
  x = ops.convert_to_tensor(x)
  return sg(value) + (x - sg(x)) * slope


# --- randomness: a counter-based hash, the same numbers on every backend ------------------------

_MUL_1 = 0x7FEB352D
_MUL_2 = 0x846CA68B - (1 << 32)  # the same 32 bits as a signed int32
_HALF_STEP_23 = 2.0**-24


def _shift_right(x, bits):
  """Logical right shift of int32 bit patterns (the backends shift signed ints arithmetically)."""
  return ops.bitwise_and(ops.right_shift(x, bits), (1 << (32 - bits)) - 1)


def _mix32(x):
  """C. Wellons' "lowbias32" hash on int32 bit patterns (products wrap modulo 2³²)."""
  x = ops.bitwise_xor(x, _shift_right(x, 16))
  x = ops.multiply(x, ops.convert_to_tensor(_MUL_1, "int32"))
  x = ops.bitwise_xor(x, _shift_right(x, 15))
  x = ops.multiply(x, ops.convert_to_tensor(_MUL_2, "int32"))
  return ops.bitwise_xor(x, _shift_right(x, 16))


def hash_uniform(seed, step, index, shape):
  """float32 uniforms in (0, 1) as a hash of (seed, step, index, position): (k + ½)·2⁻²³.

  Bit for bit :func:`tf_gibbs.core.structured.hash_uniform` with seed = (seed, step): 23 random
  bits each, never 0 or 1 (a probability-0 event is never drawn), identical on every backend
  and under ``jit``. ``seed``, ``step``, ``index``: int scalars (Python or tensors) < 2³¹.
  """
  seed = ops.cast(seed, "int32")
  step = ops.cast(step, "int32")
  index = ops.cast(index, "int32")
  key = _mix32(seed + _mix32(step + _mix32(index)))
  count = ops.reshape(ops.arange(math.prod(shape), dtype="int32"), shape)
  bits = _mix32(ops.bitwise_xor(_mix32(count + key), key))
  return ops.cast(_shift_right(bits, 9), "float32") * (1.0 / (1 << 23)) + _HALF_STEP_23


# --- ranking --------------------------------------------------------------------------------------


def _flat(values):
  return ops.reshape(ops.cast(values, "float32"), [-1])


# Radix select: 32-bit keys, three digit passes of 11 + 11 + 10 bits (shift, width), as
# tf_gibbs.core.ranking does on the TensorFlow path.
_RADIX_PASSES = ((21, 11), (10, 11), (0, 10))
_SIGN_BIT = -(1 << 31)  # 0x80000000 as an int32


def _ordered_keys(flat):
  """float32 → int32 bit patterns whose unsigned order is the floats' order (negatives
  inverted, the sign bit set on the others)."""
  bits = ops.view(flat, "int32")
  return ops.where(bits < 0, ops.bitwise_invert(bits),
                   ops.bitwise_or(bits, ops.convert_to_tensor(_SIGN_BIT, "int32")))


def _key_to_float(key):
  bits = ops.where(key < 0, ops.bitwise_and(key, (1 << 31) - 1), ops.bitwise_invert(key))
  return ops.view(bits, "float32")


def _histogram(digits, size):
  """Counts of the int32 ``digits`` in [0, size), length ``size`` known when traced (also
  under XLA): ``keras.ops.bincount`` sizes its output by the data on TensorFlow and cannot be
  traced on JAX, so each backend's own bincount with a fixed length."""
  backend = keras.backend.backend()
  if backend == "tensorflow":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.raw_ops.DenseBincount(input=digits, size=tf.constant(size),
                                    weights=tf.zeros([0], tf.int32))
  if backend == "jax":
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    return jnp.bincount(digits, length=size)
  return ops.cast(ops.bincount(digits, minlength=size), "int32")


# Selections use a radix select from this many values on; below, a sort is cheaper to compile
# and about as fast to run. MobileNetV2's 53 kernels, first call / steady step: all sorted
# 0.6 s / 234 ms on JAX, all by radix 5.4 s / 11 ms, split here 1.9 s / 20 ms; on TensorFlow
# 0.6 s / 90 ms, 5.2 s / 32 ms, 2.0 s / 28 ms.
RADIX_SELECT_FROM = 1 << 14


def _radix_select(flat, rank):
  """The rank-th smallest of the float32 vector ``flat`` (rank an int32 scalar in [0, n)): each
  of three passes counts one digit of the keys that share the prefix found so far, and the
  cumulative counts give the digit holding the rank."""
  keys = _ordered_keys(flat)
  prefix = ops.convert_to_tensor(0, "int32")
  for shift, width in _RADIX_PASSES:
    top = shift + width
    digit = ops.bitwise_and(_shift_right(keys, shift) if shift else keys, (1 << width) - 1)
    if top < 32:  # keys outside the prefix go to an overflow bin that is dropped
      digit = ops.where(ops.equal(_shift_right(keys, top), prefix), digit, 1 << width)
    counts = _histogram(digit, (1 << width) + 1)[:1 << width]
    cumulative = ops.cumsum(counts)
    chosen = ops.sum(ops.cast(cumulative <= rank, "int32"))
    rank = rank - (ops.take(cumulative, chosen) - ops.take(counts, chosen))
    prefix = ops.bitwise_or(ops.left_shift(prefix, width), chosen)
  return _key_to_float(prefix)


def kth_smallest(values, k):
  """The k-th smallest value (0-based rank k, clipped to [0, n − 1]) of ``values``, exactly.

  From 2¹⁴ values on by radix select on order-preserving 32-bit keys (O(n) per pass, static
  shapes), below that by a sort. On MobileNetV2's 53 kernels (2.2M weights) the quantiles take
  20 ms on JAX against 234 ms with sorts only, 28 against 90 ms on TensorFlow (CPU).
  """
  flat = _flat(values)
  n = flat.shape[0]
  rank = ops.clip(ops.cast(k, "int32"), 0, n - 1)
  if n < RADIX_SELECT_FROM:
    return ops.take(ops.sort(flat), rank)
  return _radix_select(flat, rank)


def quantile(values, q):
  """Q_q = v_(lo) + (pos − lo)(v_(lo+1) − v_(lo)), pos = q·(n − 1): numpy's linear quantile.

  The order statistics come from a sort below 2¹⁴ values, else from :func:`kth_smallest`:
  v_(lo+1) is v_(lo) again when v_(lo) repeats beyond rank lo, else the smallest larger value.
  """
  flat = _flat(values)
  n = flat.shape[0]
  pos = ops.cast(q, wide_float()) * float(n - 1)
  lo = ops.clip(ops.cast(ops.floor(pos), "int32"), 0, n - 1)
  frac = ops.cast(pos - ops.cast(lo, pos.dtype), "float32")
  if n < RADIX_SELECT_FROM:
    ordered = ops.sort(flat)
    v_lo = ops.take(ordered, lo)
    v_hi = ops.take(ordered, ops.minimum(lo + 1, n - 1))
  else:
    v_lo = _radix_select(flat, lo)
    repeated = ops.sum(ops.cast(flat <= v_lo, "int32")) >= lo + 2
    larger = ops.min(ops.where(flat > v_lo, flat, float("inf")))
    v_hi = ops.where(ops.logical_or(repeated, lo + 1 >= n), v_lo, larger)
  return v_lo + frac * (v_hi - v_lo)


def pruned_count(n, sparsity, exact=None):
  """min(round(p·n), n − 1) as int32 (half to even; never all n groups).

  ``exact``: the Python target p*, whose count is computed in Python and used whenever
  ``sparsity`` equals it (float32 backends: p = 0.35 in float32 times 10 is 3.4999998, which
  would round to 3 where Python's round(0.35·10) gives 4).
  """
  sparsity = ops.convert_to_tensor(sparsity)
  count = ops.cast(ops.clip(ops.round(ops.cast(sparsity, wide_float()) * float(n)), 0.0,
                            float(max(n - 1, 0))), "int32")
  if exact is not None:
    exact_count, _ = python_pruned_count(n, exact)
    count = ops.where(ops.equal(sparsity, ops.cast(exact, sparsity.dtype)), exact_count, count)
  return count


def exact_count_keep_mask(scores, sparsity, exact=None):
  """1 except for the k = :func:`pruned_count` smallest scores (ties: lower position first)."""
  flat = _flat(scores)
  n = flat.shape[0]
  k = pruned_count(n, sparsity, exact)
  cut = kth_smallest(flat, ops.maximum(k - 1, 0))
  below = ops.less(flat, cut)
  ties = ops.cast(ops.equal(flat, cut), "int32")
  ties_to_prune = k - ops.sum(ops.cast(below, "int32"))
  tie_position = ops.cumsum(ties) - ties
  pruned = ops.logical_and(
      ops.logical_or(below, ops.logical_and(ties > 0, tie_position < ties_to_prune)), k > 0)
  return ops.reshape(1.0 - ops.cast(pruned, "float32"), ops.shape(scores))


# --- Gibbs pruning (methods.md §1) -----------------------------------------------------------------


def no_pruning_if_zero(mask, sparsity):
  return ops.maximum(mask, ops.cast(ops.less_equal(ops.cast(sparsity, "float32"), 0.0),
                                    "float32"))


def unstructured_sample(weights, sparsity, beta, uniforms, exact=None):
  """x_i ~ Bernoulli(σ(β (w_i² − Q_p))), Q_p = quantile(w², p); (mask, Q_p)."""
  del exact
  squared = ops.square(ops.cast(weights, "float32"))
  threshold = quantile(squared, sparsity)
  keep = ops.sigmoid(ops.cast(beta, "float32") * (squared - threshold))
  return no_pruning_if_zero(ops.cast(ops.less(uniforms, keep), "float32"), sparsity), threshold


def _logaddexp(a, b):
  # A select, not ops.maximum: Keras' PyTorch ops.maximum/minimum return float32 for float64.
  big = ops.where(a > b, a, b)
  gap = ops.cast(ops.abs(a - b), "float32")
  return big + ops.cast(ops.log(1.0 + ops.exp(-gap)), big.dtype)


def suffix_log_esp(log_x):
  """S[:, i, k] = log e_k(x_i, …, x_{n−1}) (log elementary symmetric sums), [G, n+1, n+1]."""
  n = log_x.shape[-1]
  dtype = log_x.dtype
  row = ops.zeros([ops.shape(log_x)[0], 1], dtype)
  rows = [row]
  for i in range(n - 1, -1, -1):
    log_xi = log_x[:, i:i + 1]
    row = ops.concatenate([row[:, :1], _logaddexp(row[:, 1:], log_xi + row[:, :-1]),
                           log_xi + row[:, -1:]], axis=1)
    rows.append(row)
  impossible = _impossible(str(dtype).replace("torch.", ""))
  return ops.stack([ops.pad(r, [[0, 0], [0, n + 1 - r.shape[1]]], constant_values=impossible)
                    for r in rows[::-1]], axis=1)


def _sample_count(log_weights, uniform):
  shifted = log_weights - ops.max(log_weights, axis=-1, keepdims=True)
  cdf = ops.cumsum(ops.softmax(ops.cast(shifted, "float32"), axis=-1), axis=-1)
  below = ops.cast(ops.less(cdf, ops.cast(uniform, "float32")[:, None]), "int32")
  return ops.minimum(ops.sum(below, axis=-1), log_weights.shape[-1] - 1)


def _take_rows(matrix, index):
  return ops.take_along_axis(matrix, ops.expand_dims(index, 1), axis=1)[:, 0]


def _sample_given_count(log_x, suffix, count, uniforms):
  n = log_x.shape[-1]
  remaining = count
  picks = []
  for i in range(n):
    log_num = log_x[:, i] + _take_rows(suffix[:, i + 1], ops.maximum(remaining - 1, 0))
    log_den = _take_rows(suffix[:, i], remaining)
    p_take = ops.exp(ops.minimum(ops.cast(log_num - log_den, "float32"), 0.0))
    p_take = ops.where(remaining > 0, p_take, 0.0)
    take = ops.cast(ops.less(uniforms[:, i], p_take), "int32")
    picks.append(take)
    remaining = remaining - take
  return ops.stack(picks, axis=1)


def sample_kernel_spins(fields, coupling, beta, uniforms):
  """Exact sample of p(s) ∝ exp(−β H_k(s)) for G kernels (methods.md §1.2); [G, n] keep mask.

  H_k = −c(M² − n) + Σ b_i s_i: p(M) from elementary symmetric polynomials, then the
  configuration given M by the sequential conditional-Bernoulli rule
  (:mod:`tf_gibbs.core.structured` derives it). ``uniforms`` [G, n + 1] in (0, 1).
  """
  n = fields.shape[-1]
  wide = wide_float()
  beta = ops.cast(beta, wide)
  log_x = 2.0 * (-beta * ops.cast(fields, wide))
  suffix = suffix_log_esp(log_x)
  magnetization = 2.0 * ops.arange(n + 1, dtype=wide) - n
  log_weights = ops.expand_dims(beta * ops.cast(coupling, wide) * (magnetization**2 - n), 0) \
      + suffix[:, 0]
  uniforms = ops.cast(uniforms, "float32")
  count = _sample_count(log_weights, uniforms[:, 0])
  return ops.cast(_sample_given_count(log_x, suffix, count, uniforms[:, 1:]), "float32")


def log_count_distribution(log_x):
  """log P(K = k), k = 0…n, of the Poisson-binomial K = Σ Bernoulli(x_i/(1 + x_i)), [G, n+1]."""
  n = log_x.shape[-1]
  dtype = log_x.dtype
  impossible = _impossible(str(dtype).replace("torch.", ""))
  log_p = ops.log_sigmoid(log_x)
  log_not_p = ops.log_sigmoid(-log_x)
  groups = ops.shape(log_x)[0]
  fill = ops.full([groups, 1], impossible, dtype=dtype)
  log_pmf = ops.concatenate([ops.zeros([groups, 1], dtype),
                             ops.full([groups, n], impossible, dtype=dtype)], axis=1)

  def body(i, log_pmf):
    shifted = ops.concatenate([fill, log_pmf[:, :-1]], axis=1)
    return _logaddexp(ops.expand_dims(ops.take(log_not_p, i, axis=1), 1) + log_pmf,
                      ops.expand_dims(ops.take(log_p, i, axis=1), 1) + shifted)

  return ops.fori_loop(0, n, body, log_pmf)


def _log_2cosh(x):
  a = ops.abs(x)
  return a + ops.log1p(ops.exp(-2.0 * a))


def sample_filter_spins(fields_a, fields_b, coupling, beta, uniforms):
  """Exact sample of p(s) ∝ exp(−β H_f(s)) for G filters (methods.md §1.3): S_B from its exact
  marginal, s_A | S_B, s_B | s_A. ``uniforms`` [G, 1 + n_A + n_B]; (keep_a, keep_b)."""
  n_a, n_b = fields_a.shape[-1], fields_b.shape[-1]
  wide = wide_float()
  beta = ops.cast(beta, wide)
  half_bc = 0.5 * beta * ops.cast(coupling, wide)
  h_a = -0.5 * beta * ops.cast(fields_a, wide)
  h_b = -0.5 * beta * ops.cast(fields_b, wide)
  uniforms = ops.cast(uniforms, wide)
  s_b_values = 2.0 * ops.arange(n_b + 1, dtype=wide) - n_b
  log_weights = log_count_distribution(2.0 * h_b)
  if n_a:
    log_weights = log_weights + ops.sum(
        _log_2cosh(h_a[:, None, :] + half_bc * s_b_values[None, :, None]), axis=-1)
  s_b = ops.take(s_b_values, _sample_count(log_weights, uniforms[:, 0]))
  keep_a = ops.cast(ops.less(uniforms[:, 1:1 + n_a],
                             ops.sigmoid(2.0 * (h_a + half_bc * s_b[:, None]))), wide)
  s_a = ops.sum(2.0 * keep_a - 1.0, axis=-1)
  keep_b = ops.cast(ops.less(uniforms[:, 1 + n_a:],
                             ops.sigmoid(2.0 * (h_b + half_bc * s_a[:, None]))), wide)
  return ops.cast(keep_a, "float32"), ops.cast(keep_b, "float32")


def sample_filter_chromatic(fields_a, fields_b, coupling, beta, seed, step, sweeps, start_a,
                            start_b):
  """The reference two-colour Gibbs sweeps from a start state; sweep i's uniforms are
  :func:`hash_uniform` (seed, step, i) — the TensorFlow path's numbers."""
  n_a, n_b = fields_a.shape[-1], fields_b.shape[-1]
  beta = ops.cast(beta, "float32")
  scaled_a = beta * ops.cast(fields_a, "float32")
  scaled_b = beta * ops.cast(fields_b, "float32")
  beta_c = beta * ops.cast(coupling, "float32")
  shape = [fields_a.shape[0], n_a + n_b]

  def body(i, state):
    keep_a, keep_b = state
    u = hash_uniform(seed, step, i, shape)
    s_b = 2.0 * ops.sum(keep_b, axis=-1, keepdims=True) - n_b
    keep_a = ops.cast(ops.greater_equal(u[:, :n_a], ops.sigmoid(scaled_a - beta_c * s_b)),
                      "float32")
    s_a = 2.0 * ops.sum(keep_a, axis=-1, keepdims=True) - n_a
    keep_b = ops.cast(ops.greater_equal(u[:, n_a:], ops.sigmoid(scaled_b - beta_c * s_a)),
                      "float32")
    return keep_a, keep_b

  return ops.fori_loop(0, sweeps, body,
                       (ops.cast(start_a, "float32"), ops.cast(start_b, "float32")))


def kernel_sample(weights, sparsity, beta, coupling, seed, step):
  """(mask [n, C, F], Q_p) of the kernel energy; Q_p the p-quantile of the kernels' mean w²."""
  n, c_in, filters = weights.shape
  squared = ops.square(ops.cast(weights, "float32"))
  threshold = quantile(ops.mean(squared, axis=0), sparsity)
  fields = ops.reshape(ops.transpose(threshold - squared, [1, 2, 0]), [c_in * filters, n])
  uniforms = hash_uniform(seed, step, 0, [c_in * filters, n + 1])
  keep = sample_kernel_spins(fields, coupling, beta, uniforms)
  mask = ops.transpose(ops.reshape(keep, [c_in, filters, n]), [2, 0, 1])
  return no_pruning_if_zero(mask, sparsity), threshold


def _filter_fields(squared, threshold):
  n, c_in, filters = squared.shape
  half = c_in // 2
  fields = ops.transpose(threshold - squared, [2, 0, 1])
  return (ops.reshape(fields[:, :, :half], [filters, n * half]),
          ops.reshape(fields[:, :, half:], [filters, n * (c_in - half)]))


def _filter_mask(keep_a, keep_b, n):
  filters = keep_a.shape[0]
  keep = ops.concatenate([ops.reshape(keep_a, [filters, n, keep_a.shape[1] // n]),
                          ops.reshape(keep_b, [filters, n, keep_b.shape[1] // n])], axis=2)
  return ops.transpose(keep, [1, 2, 0])


def filter_sample(weights, sparsity, beta, coupling, seed, step, sampler, sweeps):
  """(mask [n, C, F], Q_p) of the filter energy, by the exact or the chromatic sampler."""
  n, c_in, filters = weights.shape
  squared = ops.square(ops.cast(weights, "float32"))
  threshold = quantile(ops.mean(squared, axis=[0, 1]), sparsity)
  fields_a, fields_b = _filter_fields(squared, threshold)
  if sampler == "exact":
    uniforms = hash_uniform(seed, step, 0, [filters, 1 + n * c_in])
    keep_a, keep_b = sample_filter_spins(fields_a, fields_b, coupling, beta, uniforms)
  else:
    start = ops.cast(ops.greater(ops.mean(squared, axis=[0, 1]), threshold), "float32")[:, None]
    keep_a, keep_b = sample_filter_chromatic(
        fields_a, fields_b, coupling, beta, seed, step, sweeps,
        ops.broadcast_to(start, fields_a.shape), ops.broadcast_to(start, fields_b.shape))
  return no_pruning_if_zero(_filter_mask(keep_a, keep_b, n), sparsity), threshold


def deterministic_mask(hamiltonian, weights, sparsity, exact=None):
  """The β → ∞ mask of ``hamiltonian`` on the [n, C, F] view: exactly :func:`pruned_count`
  weights, kernels or filters of smallest Σw² pruned (ties by position)."""
  squared = ops.square(ops.cast(weights, "float32"))
  if hamiltonian == "unstructured":
    return exact_count_keep_mask(squared, sparsity, exact)
  if hamiltonian == "kernel":
    keep = exact_count_keep_mask(ops.sum(squared, axis=0), sparsity, exact)
    return ops.broadcast_to(keep[None], weights.shape)
  keep = exact_count_keep_mask(ops.sum(squared, axis=[0, 1]), sparsity, exact)
  return ops.broadcast_to(keep[None, None], weights.shape)


# --- L0 gates (methods.md §3) ----------------------------------------------------------------------


def _stretch(probability):
  return (ZETA - GAMMA) * probability + GAMMA


def scaled_parameter(parameter, scale):
  """scale·θ forward, gradient reaching θ unscaled (a per-variable learning-rate multiplier)."""
  parameter = ops.convert_to_tensor(parameter)
  return straight_through(scale * parameter, parameter)


def deterministic_gate(log_alpha, straight_through_clip=True):
  """z = clip((ζ − γ) σ(log α) + γ, 0, 1); with ``straight_through_clip`` a clipped gate passes
  the gradient of the unclipped stretch."""
  log_alpha = ops.convert_to_tensor(log_alpha)
  stretched = _stretch(ops.sigmoid(log_alpha))
  clipped = ops.clip(stretched, 0.0, 1.0)
  if not straight_through_clip:
    return clipped
  return straight_through(clipped, stretched)


def hard_concrete(log_alpha, u, temperature=TEMPERATURE):
  """z = clip((ζ−γ) σ((log u − log(1 − u) + log α)/T) + γ, 0, 1)."""
  noisy = (ops.log(u) - ops.log1p(-u) + log_alpha) / temperature
  return ops.clip(_stretch(ops.sigmoid(noisy)), 0.0, 1.0)


def probability_nonzero(log_alpha, temperature=TEMPERATURE):
  """P(z > 0) = σ(log α − T log(−γ/ζ)), the L0 surrogate (Louizos eq. 12)."""
  return ops.sigmoid(log_alpha - temperature * math.log(-GAMMA / ZETA))


def closed_fraction(gates):
  return ops.mean(ops.cast(ops.equal(gates, 0.0), "float32"))


def group_importance(weight_view, gates):
  """Σ (w ⊙ z)² over each gate's group (group shape), no gradient."""
  squared = ops.square(sg(weight_view * gates))
  axes = [i for i, size in enumerate(gates.shape) if size == 1 and weight_view.shape[i] != 1]
  return ops.sum(squared, axis=axes, keepdims=True) if axes else squared


def budget_targets(importance, sparsity, exact=None):
  """1 for the :func:`pruned_count` gates of smallest importance (ties by position)."""
  return 1.0 - exact_count_keep_mask(sg(importance), sparsity, exact)


def budget_fraction(n, sparsity, exact=None):
  return ops.cast(pruned_count(n, sparsity, exact), "float32") / float(n)


# --- adaptive sparsity loss (methods.md §2) ---------------------------------------------------------


def clip_r(r):
  """clip(r, 0, 5) forward, identity gradient."""
  return straight_through(ops.clip(r, 0.0, R_MAX), r)


def unbiased_std(weight):
  weight = ops.convert_to_tensor(weight)
  n = math.prod(weight.shape)
  variance = ops.mean(ops.square(weight - ops.mean(weight)))
  return ops.sqrt(variance * (n / max(n - 1, 1)))


def threshold(weight, r):
  """b = clip(r, 0, 5)·std(W) (unbiased std, no gradient to W)."""
  return clip_r(r) * sg(unbiased_std(weight))


def keep_mask(weight, b):
  return ops.cast(ops.greater(ops.abs(sg(weight)), sg(b)), "float32")


def masked_straight_through(weight, mask, b, straight_through_weight=True):
  """Ŵ = W·m with dŴ/dW = 1 (or m when ``straight_through_weight`` is False) and
  dŴ/db = −W(1 − m)/b (the reference code's straight-through hard shrink)."""
  weight, b = ops.convert_to_tensor(weight), ops.convert_to_tensor(b)
  mask = ops.cast(mask, weight.dtype)
  delta = weight - sg(weight)
  d_weight = ops.where(straight_through_weight, delta, delta * mask)
  d_b = (b - sg(b)) * sg(-(weight * (1.0 - mask)) / ops.maximum(sg(b), 1e-12))
  return sg(weight * mask) + d_weight + d_b


def erf_density(r):
  """d = 1 − erf(clip(r, 0, 5)/√2), the paper's Gaussian estimate of the kept fraction."""
  return 1.0 - ops.erf(clip_r(r) / math.sqrt(2.0))


def corrected_density(kept_fraction, r):
  """The measured kept fraction as value, the erf estimate's slope as gradient."""
  estimate = erf_density(r)
  return estimate + sg(ops.cast(kept_fraction, estimate.dtype) - estimate)


def budget_error(densities, costs, target_sparsity):
  """(D − (1 − s))², D = Σ c_l d_l / Σ c_l."""
  costs = ops.convert_to_tensor(np.asarray(costs, np.float32))
  total = ops.sum(costs * densities) / ops.sum(costs)
  return ops.square(total - (1.0 - target_sparsity))


def threshold_ratio(weight, b):
  return ops.abs(sg(weight)) / ops.maximum(sg(b), 1e-12)


def common_scale(ratios, costs, target_sparsity, iterations=64):
  """The smallest k with Σ_l c_l mean(ratio_l ≤ k)/Σ c_l ≥ s, by bisection (exact budget)."""
  flat = [ops.reshape(ops.cast(r, "float32"), [-1]) for r in ratios]
  shares = np.asarray(costs, np.float32)
  shares = ops.convert_to_tensor(shares / shares.sum())

  def zero_fraction(k):
    return ops.sum(shares * ops.stack(
        [ops.mean(ops.cast(ops.less_equal(r, k), "float32")) for r in flat]))

  def body(i, bounds):
    low, high = bounds
    mid = 0.5 * (low + high)
    enough = ops.greater_equal(zero_fraction(mid), target_sparsity)
    return ops.where(enough, low, mid), ops.where(enough, mid, high)

  high = ops.max(ops.stack([ops.max(r) for r in flat]))
  _, high = ops.fori_loop(0, iterations, body, (ops.zeros_like(high), high))
  return sg(high)


def gate_noise(shape, seed, step):
  """The uniforms of the hard-concrete gate, :func:`hash_uniform` mapped into [1e-6, 1 − 1e-6]
  (the TensorFlow path's range)."""
  return 1e-6 + (1.0 - 2e-6) * hash_uniform(seed, step, 0, shape)


def l0_training_step(weight, mask, parameter, targets, log_factor, step, noise, *, schedule,
                     view, scale, temperature, xp, sparsity=None):
  """One training step of a gated kernel: (training weight, mask, targets, log factor).

  The same phases as :func:`tf_gibbs.core.l0.training_step` (gates live from begin_step to
  end_step, the budget's targets re-ranked on the schedule's steps and its controller
  μ ← clip(μ + gain·(reachable fraction − closed fraction), −20, 20), frozen gates and
  fine-tuning from end_step on), with selects instead of conds. ``sparsity``: the layer's
  budget where it is not the schedule's (a network-wide share).
  """
  should_prune, target = schedule(step, xp)
  exact = schedule.target_sparsity
  if sparsity is not None:
    target, exact = sparsity, None
  finished = step >= schedule.end_step
  live = ops.logical_and(should_prune, ops.logical_not(finished))
  log_alpha = scaled_parameter(parameter, scale)
  deterministic = deterministic_gate(log_alpha, straight_through_clip=noise is None)
  gates = deterministic if noise is None else hard_concrete(log_alpha, noise, temperature)
  shape = weight.shape
  weight_view = ops.reshape(weight, view)

  def full(group_tensor):
    return ops.reshape(ops.broadcast_to(group_tensor, view), shape)

  frozen = mask
  if schedule.has_budget:
    targets = ops.cond(
        schedule.rerank(step, xp),
        lambda: budget_targets(group_importance(weight_view, sg(deterministic)), target, exact),
        lambda: targets)
    reachable = budget_fraction(math.prod(parameter.shape), target, exact)
    factor = ops.clip(
        log_factor + schedule.budget_gain * (reachable - closed_fraction(sg(deterministic))),
        -20.0, 20.0)
    log_factor = ops.where(live, factor, log_factor)
    frozen = ops.where(step == schedule.end_step, mask * (1.0 - full(targets)), mask)
  effective = ops.where(live, ops.reshape(weight_view * gates, shape),
                        ops.where(finished, weight * frozen, weight))
  new_mask = ops.where(live, full(sg(deterministic)),
                       ops.where(finished, frozen, ops.ones_like(mask)))
  return effective, new_mask, targets, log_factor


def l0_penalty(parameter, targets, log_factor, step, coefficient, *, schedule, scale,
               temperature, xp):
  """λ(step) · coefficient · Σ P(z > 0); budget mode: only the open targeted gates count and
  the gradient (not the value) is multiplied by exp(μ). 0 from the end step on."""
  log_alpha = scaled_parameter(parameter, scale)
  nonzero = probability_nonzero(log_alpha, temperature)
  if schedule.has_budget:
    open_gates = ops.cast(_stretch(ops.sigmoid(sg(log_alpha))) > 0.0, "float32")
    nonzero = nonzero * open_gates * targets
  term = ops.sum(nonzero) * coefficient
  if schedule.has_budget:
    term = term + (ops.exp(log_factor) - 1.0) * (term - sg(term))
  value = schedule.strength(step, xp) * term
  return ops.where(step >= schedule.end_step, ops.zeros_like(value), value)
