"""Exact samplers for the kernel-wise and filter-wise Gibbs energies (methods.md §1.2–1.3).

Spins s ∈ {−1, +1} (+1 = keep). Both energies depend on the spins only through linear fields and
group magnetizations, which is what makes exact sampling cheap:

* kernel-wise (one kernel of n = kh·kw weights), reference energy
  H_k(s) = −c Σ_{i≠j} s_i s_j + Σ_i b_i s_i = −c (M² − n) + Σ_i b_i s_i,  b_i = Q − w_i².
  p(M) is computed exactly from elementary symmetric polynomials (log space, O(n²)), then the
  configuration given M by the sequential conditional-Bernoulli rule (n steps). The reference
  code enumerates all 2ⁿ states instead (512 for 3×3; impossible for 5×5 or 7×7).
* filter-wise (one filter; A = first ⌊C_in/2⌋ input channels, B = the rest), reference energy
  H_f(s) = ½ Σ_i b_i s_i − (c/2) S_A S_B.
  Given S_B the spins of A are independent, and given s_A those of B are. We draw S_B from its
  exact marginal (an ESP over B times a product of cosh over A), then s_A | S_B, then s_B | s_A.
  The pair (s_A, s_B) is an exact sample: s_A has its exact marginal because S_B was drawn from
  its marginal, and s_B is drawn from its exact conditional. (Our derivation; the reference code
  runs 50 two-colour Gibbs sweeps instead, available as :func:`sample_filter_chromatic`.)

The log-space magnitudes are float64, so β up to 1e6 (and beyond) neither overflows nor loses
the O(1) differences between configurations whose log-weights are ~1e9; only bounded
quantities (the logaddexp correction in [0, log 2], softmax of max-shifted log-weights,
take-probabilities) are computed in float32, a relative error of ~1e-7 in the probabilities.
Convention: the linear term acts on ±1 spins, so at c = 0 the kernel-wise keep probability is σ(2β(w² − Q)), twice the
β of the unstructured energy — we keep the reference energy as written.
"""

import math

import tensorflow as tf

_NEG = -1e300  # log(0) stand-in that keeps logaddexp finite (−inf − −inf would give NaN)


def _logaddexp(a, b):
  """log(eᵃ + eᵇ) = max(a, b) + log(1 + e^−|a−b|): the max in float64 (it carries the ~βw²
  magnitudes), the correction, in [0, log 2], in float32 (absolute error ~1e-7, i.e. a relative
  error ~1e-7 in the probabilities; float64 transcendentals cost ~1.5× as much on CPU).
  log(1 + y) rather than log1p(y) or softplus: with y = e^−gap ∈ (0, 1] its absolute error is
  as small (≤ ~1.2e-7), and XLA's CPU code for it is ~20 % faster in the kernel sampler."""
  big = tf.maximum(a, b)
  gap = tf.cast(tf.abs(a - b), tf.float32)
  return big + tf.cast(tf.math.log(1.0 + tf.exp(-gap)), big.dtype)


def suffix_log_esp(log_x):
  """S[i, k] = log e_k(x_i, …, x_{n−1}) for i = 0…n, k = 0…n (log elementary symmetric sums).

  Recursion e_k(x_{i:}) = e_k(x_{i+1:}) + x_i e_{k−1}(x_{i+1:}). Row i holds only its n − i + 1
  possible counts (e_0 = 1 and e_{n−i} = Π x need no logaddexp): n(n − 1)/2 logaddexps per
  group instead of n(n + 1) for full-width rows, which cost 1.2× (3×3 kernels) to 1.5× (7×7)
  the CPU time.

  Args:
    log_x: float64 [G, n], log of the positive weights of G independent groups.

  Returns:
    float64 [G, n + 1, n + 1] (index i, then k); S[n, 0] = 0, impossible entries (k > n − i)
    ≈ −1e300.
  """
  n = log_x.shape[-1]
  row = tf.zeros([tf.shape(log_x)[0], 1], tf.float64)  # row n: e_0 of no weights = 1
  rows = [row]
  for i in range(n - 1, -1, -1):
    log_xi = log_x[:, i:i + 1]
    row = tf.concat([row[:, :1], _logaddexp(row[:, 1:], log_xi + row[:, :-1]),
                     log_xi + row[:, -1:]], axis=1)
    rows.append(row)
  return tf.stack([tf.pad(row, [[0, 0], [0, n + 1 - row.shape[1]]], constant_values=_NEG)
                   for row in rows[::-1]], axis=1)


def log_count_distribution(log_x):
  """log P(K = k), k = 0…n, for K = Σ_i Bernoulli(x_i / (1 + x_i)) independent (Poisson-binomial).

  Equals log e_k(x) − Σ_i log(1 + x_i). The O(n²) recursion
  log P_{i+1}(k) = logaddexp(log(1 − p_i) + log P_i(k), log p_i + log P_i(k − 1)) runs in log
  space (float64), so counts that the fields make astronomically improbable keep their exact
  log-probability; the coupling of the filter energy can make exactly those counts likely at
  large β (a probability-space recursion underflows to 0 there). It runs inside a
  ``tf.while_loop``, so large groups (a filter of 3·3·64 weights) do not unroll into thousands
  of ops.

  Args:
    log_x: float64 [G, n].

  Returns:
    float64 [G, n + 1]; ≈ −1e300 for impossible counts.
  """
  n = log_x.shape[-1]
  log_p = tf.math.log_sigmoid(log_x)
  log_not_p = tf.math.log_sigmoid(-log_x)
  groups = tf.shape(log_x)[0]
  impossible = tf.fill([groups, 1], tf.constant(_NEG, tf.float64))
  log_pmf = tf.concat([tf.zeros([groups, 1], tf.float64),
                       tf.fill([groups, n], tf.constant(_NEG, tf.float64))], axis=1)

  def body(i, log_pmf):
    shifted = tf.concat([impossible, log_pmf[:, :-1]], axis=1)
    return i + 1, _logaddexp(tf.gather(log_not_p, i, axis=1)[:, None] + log_pmf,
                             tf.gather(log_p, i, axis=1)[:, None] + shifted)

  _, log_pmf = tf.while_loop(lambda i, _: i < n, body, (tf.constant(0), log_pmf),
                             maximum_iterations=n)
  return log_pmf


def _sample_count(log_weights, uniform):
  """Index k ~ softmax(log_weights) per row, by inverting the CDF with one uniform per row."""
  # Shifted by the row maximum in float64, then float32 (relative error ~1e-7, as _logaddexp).
  shifted = log_weights - tf.reduce_max(log_weights, axis=-1, keepdims=True)
  probs = tf.nn.softmax(tf.cast(shifted, tf.float32), axis=-1)
  cdf = tf.cumsum(probs, axis=-1)
  last = log_weights.shape[-1] - 1
  below = tf.cast(cdf < tf.cast(uniform, tf.float32)[:, None], tf.int32)
  return tf.minimum(tf.reduce_sum(below, axis=-1), last)


def _sample_given_count(log_x, suffix, count, uniforms):
  """Conditional Bernoulli: s ∈ {0,1}ⁿ with Σ s = count, P(s) ∝ Π x_i^{s_i}, exactly.

  Sequentially, P(s_i = 1 | r still to choose) = x_i e_{r−1}(x_{i+1:}) / e_r(x_{i:}).
  """
  n = log_x.shape[-1]
  remaining = count
  picks = []
  for i in range(n):
    take_index = tf.maximum(remaining - 1, 0)
    log_num = log_x[:, i] + tf.gather(suffix[:, i + 1], take_index, batch_dims=1)
    log_den = tf.gather(suffix[:, i], remaining, batch_dims=1)
    p_take = tf.exp(tf.cast(tf.minimum(log_num - log_den, 0.0), tf.float32))
    p_take = tf.where(remaining > 0, p_take, 0.0)
    take = tf.cast(uniforms[:, i] < p_take, tf.int32)
    picks.append(take)
    remaining -= take
  return tf.stack(picks, axis=1)


def sample_kernel_spins(fields, coupling, beta, uniforms):
  """Exact sample of p(s) ∝ exp(−β H_k(s)) for G independent kernels.

  Args:
    fields: float [G, n], b_i = Q − w_i² per kernel.
    coupling: c ≥ 0.
    beta: β > 0.
    uniforms: float [G, n + 1] in (0, 1) (:func:`stateless_open_uniform`): one for the
      magnetization, n for the configuration.

  Returns:
    float32 [G, n] keep mask (1 for s_i = +1).
  """
  n = fields.shape[-1]
  beta = tf.cast(beta, tf.float64)
  h = -beta * tf.cast(fields, tf.float64)  # −βH = βc(M² − n) + Σ h_i s_i
  log_x = 2.0 * h  # weight of flipping s_i from −1 to +1
  suffix = suffix_log_esp(log_x)
  k = tf.range(n + 1, dtype=tf.float64)
  magnetization = 2.0 * k - n
  log_weights = (beta * tf.cast(coupling, tf.float64) * (magnetization**2 - n))[None, :] \
      + suffix[:, 0]  # the common factor exp(−Σh) cancels
  uniforms = tf.cast(uniforms, tf.float32)  # every draw compares them with float32 probabilities
  count = _sample_count(log_weights, uniforms[:, 0])
  return tf.cast(_sample_given_count(log_x, suffix, count, uniforms[:, 1:]), tf.float32)


def _log_2cosh(x):
  a = tf.abs(x)
  return a + tf.math.log1p(tf.exp(-2.0 * a))


def sample_filter_spins(fields_a, fields_b, coupling, beta, uniforms):
  """Exact sample of p(s) ∝ exp(−β H_f(s)) for G independent filters (see module docstring).

  Args:
    fields_a: float [G, n_A], b_i of colour A (n_A may be 0).
    fields_b: float [G, n_B], b_i of colour B (n_B ≥ 1).
    coupling: c ≥ 0.
    beta: β > 0.
    uniforms: float [G, 1 + n_A + n_B] in (0, 1) (:func:`hash_uniform`).

  Returns:
    (keep_a, keep_b): float32 masks [G, n_A] and [G, n_B].
  """
  n_a, n_b = fields_a.shape[-1], fields_b.shape[-1]
  beta = tf.cast(beta, tf.float64)
  half_bc = 0.5 * beta * tf.cast(coupling, tf.float64)
  h_a = -0.5 * beta * tf.cast(fields_a, tf.float64)  # −βH = Σ h_i s_i + (βc/2) S_A S_B
  h_b = -0.5 * beta * tf.cast(fields_b, tf.float64)
  uniforms = tf.cast(uniforms, tf.float64)
  s_b_values = 2.0 * tf.range(n_b + 1, dtype=tf.float64) - n_b  # S_B for k_B = 0…n_B
  # log p(k_B) = log e_{k_B}(exp(2 h_B)) + Σ_{i∈A} log 2cosh(h_i + (βc/2) S_B)   (+ const)
  # (the Poisson-binomial log-pmf differs from log e_k by a constant in k)
  log_weights = log_count_distribution(2.0 * h_b)
  if n_a:
    log_weights += tf.reduce_sum(
        _log_2cosh(h_a[:, None, :] + half_bc * s_b_values[None, :, None]), axis=-1)
  s_b = tf.gather(s_b_values, _sample_count(log_weights, uniforms[:, 0]))
  keep_a = tf.cast(uniforms[:, 1:1 + n_a] < tf.sigmoid(2.0 * (h_a + half_bc * s_b[:, None])),
                   tf.float64)
  s_a = tf.reduce_sum(2.0 * keep_a - 1.0, axis=-1)
  keep_b = tf.cast(uniforms[:, 1 + n_a:] < tf.sigmoid(2.0 * (h_b + half_bc * s_a[:, None])),
                   tf.float64)
  return tf.cast(keep_a, tf.float32), tf.cast(keep_b, tf.float32)


def _mix32(x):
  """A 32-bit integer hash with full avalanche (C. Wellons' "lowbias32")."""
  x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
  x = x * tf.constant(0x7FEB352D, tf.uint32)
  x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
  x = x * tf.constant(0x846CA68B, tf.uint32)
  return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


_HALF_STEP_23 = 2.0**-24  # half of the 2⁻²³ grid of float32 uniforms: exact in float32


def stateless_open_uniform(shape, seed):
  """float32 uniforms in the open interval (0, 1), keyed by ``seed`` (shape [2]).

  ``tf.random.stateless_uniform`` returns k · 2⁻²³ in [0, 1) (23 random bits, the same grid on
  CPU and under XLA), so u = 0 comes up with probability 2⁻²³, and ``u < p`` then accepts an
  event of any probability p > 0 (a state of probability 5.7e-12 was drawn). We return
  (k + ½) · 2⁻²³ ∈ [2⁻²⁴, 1 − 2⁻²⁴], exact in float32: every draw compares as ``u < p``, so an
  event of probability 0 never happens and P(u < p) differs from p by at most 2⁻²⁴.
  """
  return tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32) + _HALF_STEP_23


def hash_uniform(seed, index, shape):
  """Uniforms in the open interval (0, 1) as a counter-based hash of (seed, index, position).

  23 random bits each, returned as (k + ½) · 2⁻²³ (like :func:`stateless_open_uniform`): never
  0 or 1, so a probability-0 event is never drawn, and exact in float32.

  Used by the chromatic sampler instead of ``stateless_uniform``: drawn inside the sweep loop,
  XLA's Philox generator took ~1 ms per sweep on CPU, and drawn up front for all sweeps, XLA
  regenerated the whole tensor at every sweep inside a ``jit_compile=True`` training step.
  """
  seed = tf.cast(seed, tf.int64)
  key = _mix32(tf.cast(tf.bitwise.bitwise_and(seed[0], 0xFFFFFFFF), tf.uint32)
               + _mix32(tf.cast(tf.bitwise.bitwise_and(seed[1], 0xFFFFFFFF), tf.uint32)
                        + _mix32(tf.cast(index, tf.uint32))))
  count = tf.cast(tf.reshape(tf.range(math.prod(shape)), shape), tf.uint32)
  bits = _mix32(_mix32(count + key) ^ key)
  return tf.cast(tf.bitwise.right_shift(bits, 9), tf.float32) * (1.0 / (1 << 23)) + _HALF_STEP_23


def sample_filter_chromatic(fields_a, fields_b, coupling, beta, seed, sweeps, start_a, start_b):
  """The reference two-colour Gibbs sweep: ``sweeps`` sweeps from a start state.

  Each sweep updates colour A given S_B, then colour B given S_A, with
  P(s_i = −1 | S_other) = σ(β (b_i − c S_other)). Follows ``j201/gibbs-pruning``, which starts
  every training step from the deterministic state and returns the last sweep (an MCMC
  approximation, unlike :func:`sample_filter_spins`).

  Args:
    fields_a, fields_b, coupling, beta: as in :func:`sample_filter_spins`.
    seed: int tensor [2]; sweep i's uniforms are :func:`hash_uniform` (seed, i).
    sweeps: the number of sweeps (int or int tensor).
    start_a, start_b: float {0,1} masks [G, n_A], [G, n_B] to start from.

  Returns:
    (keep_a, keep_b) float32 after the last sweep.
  """
  n_a, n_b = fields_a.shape[-1], fields_b.shape[-1]
  beta = tf.cast(beta, tf.float32)
  # β(b_i − c S) = βb_i − βc S with βb_i computed once, and S = 2 Σ keep − n: a third fewer
  # element-wise ops per sweep than the literal formula (same distribution; rounding aside,
  # the same decisions).
  scaled_a = beta * tf.cast(fields_a, tf.float32)
  scaled_b = beta * tf.cast(fields_b, tf.float32)
  beta_c = beta * tf.cast(coupling, tf.float32)

  def sweep(state, u):
    keep_a, keep_b = state
    s_b = 2.0 * tf.reduce_sum(keep_b, axis=-1, keepdims=True) - n_b
    keep_a = tf.cast(u[:, :n_a] >= tf.sigmoid(scaled_a - beta_c * s_b), tf.float32)
    s_a = 2.0 * tf.reduce_sum(keep_a, axis=-1, keepdims=True) - n_a
    keep_b = tf.cast(u[:, n_a:] >= tf.sigmoid(scaled_b - beta_c * s_a), tf.float32)
    return keep_a, keep_b

  shape = [fields_a.shape[0], n_a + n_b]

  def body(i, keep_a, keep_b):
    return (i + 1,) + sweep((keep_a, keep_b), hash_uniform(seed, i, shape))

  _, keep_a, keep_b = tf.while_loop(
      lambda i, *_: i < sweeps, body,
      (tf.constant(0), tf.cast(start_a, tf.float32), tf.cast(start_b, tf.float32)))
  return keep_a, keep_b
