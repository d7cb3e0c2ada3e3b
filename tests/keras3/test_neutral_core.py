"""The backend-neutral maths (tf_gibbs.core.neutral) on the current Keras 3 backend: samplers
against brute-force enumeration, and the same results as the TensorFlow fast path (the
tf_keras front's core) on the same inputs."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from tf_gibbs.core import adaptive as adaptive_tf
from tf_gibbs.core import l0 as l0_tf
from tf_gibbs.core import neutral
from tf_gibbs.core import ranking as ranking_tf
from tf_gibbs.core import structured as structured_tf

from brute_force import empirical_tv
from brute_force import exact
from brute_force import filter_energy
from brute_force import kernel_energy
from brute_force import tv_bound
from conftest import compiled
from conftest import gradients
from conftest import to_numpy

NUM_SAMPLES = 20000


@pytest.mark.parametrize("seed,step,index", [(7, 3, 0), (7, 3, 2), (2**31 - 2, 10**6, 49),
                                             (0, 0, 0)])
def test_hash_uniform_is_the_tensorflow_hash_bit_for_bit(seed, step, index):
  ours = to_numpy(neutral.hash_uniform(seed, step, index, [5, 7]))
  reference = structured_tf.hash_uniform(tf.constant([seed, step], tf.int64), index,
                                         [5, 7]).numpy()
  np.testing.assert_array_equal(ours, reference)
  assert ours.min() > 0.0 and ours.max() < 1.0


def test_hash_uniform_is_uniform_and_keyed():
  u = to_numpy(neutral.hash_uniform(3, 1, 0, [NUM_SAMPLES]))
  assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
  assert not np.array_equal(u, to_numpy(neutral.hash_uniform(3, 2, 0, [NUM_SAMPLES])))
  assert not np.array_equal(u, to_numpy(neutral.hash_uniform(4, 1, 0, [NUM_SAMPLES])))


@pytest.mark.parametrize("beta,coupling", [(1.0, 0.2), (3.0, 0.5)])
def test_kernel_sampler_matches_brute_force(beta, coupling):
  fields = np.array([0.3, -0.2, 0.05, -0.4], np.float32)
  uniforms = neutral.hash_uniform(11, 1, 0, [NUM_SAMPLES, 5])
  sample = compiled(lambda f, u: neutral.sample_kernel_spins(f, coupling, beta, u))
  samples = to_numpy(sample(np.tile(fields, (NUM_SAMPLES, 1)), uniforms))
  configs, probs = exact(kernel_energy(fields.astype(np.float64), coupling), 4, beta)
  assert empirical_tv(samples, configs, probs) < tv_bound(len(configs), NUM_SAMPLES)
  wrong_configs, wrong = exact(kernel_energy(fields.astype(np.float64), 0.0), 4, beta)
  assert empirical_tv(samples, wrong_configs, wrong) > 2 * tv_bound(len(configs), NUM_SAMPLES)


@pytest.mark.parametrize("n_a,beta,coupling", [(2, 3.0, 1.0), (0, 2.0, 1.0)])
def test_filter_exact_sampler_matches_brute_force(n_a, beta, coupling):
  fields = np.array([0.4, -0.3, 0.1, -0.2, 0.25], np.float32)
  fields_a, fields_b = fields[:n_a], fields[n_a:]
  a, b = neutral.sample_filter_spins(
      np.tile(fields_a, (NUM_SAMPLES, 1)).reshape(NUM_SAMPLES, n_a),
      np.tile(fields_b, (NUM_SAMPLES, 1)), coupling, beta,
      neutral.hash_uniform(5, 1, 0, [NUM_SAMPLES, 6]))
  samples = np.concatenate([to_numpy(a), to_numpy(b)], axis=1)
  configs, probs = exact(filter_energy(fields_a.astype(np.float64),
                                       fields_b.astype(np.float64), coupling), 5, beta)
  assert empirical_tv(samples, configs, probs) < tv_bound(len(configs), NUM_SAMPLES)


def test_chromatic_sampler_matches_brute_force_and_the_tensorflow_path():
  fields_a, fields_b = np.array([0.4, -0.3], np.float32), np.array([0.1, -0.2, 0.25], np.float32)
  beta, coupling, sweeps = 1.0, 0.5, 50
  tiled_a, tiled_b = np.tile(fields_a, (NUM_SAMPLES, 1)), np.tile(fields_b, (NUM_SAMPLES, 1))
  ones = lambda n: np.ones((NUM_SAMPLES, n), np.float32)
  a, b = neutral.sample_filter_chromatic(tiled_a, tiled_b, coupling, beta, 4, 9, sweeps, ones(2),
                                         ones(3))
  samples = np.concatenate([to_numpy(a), to_numpy(b)], axis=1)
  configs, probs = exact(filter_energy(fields_a.astype(np.float64),
                                       fields_b.astype(np.float64), coupling), 5, beta)
  assert empirical_tv(samples, configs, probs) < tv_bound(len(configs), NUM_SAMPLES)
  ref_a, ref_b = structured_tf.sample_filter_chromatic(
      tiled_a, tiled_b, coupling, beta, tf.constant([4, 9], tf.int64), sweeps, ones(2), ones(3))
  reference = np.concatenate([ref_a.numpy(), ref_b.numpy()], axis=1)
  assert np.mean(samples == reference) > 0.999  # same uniforms: the same chains


def test_samplers_equal_the_tensorflow_fast_path_on_the_same_uniforms():
  rng = np.random.default_rng(0)
  fields = rng.normal(scale=0.3, size=(2000, 5)).astype(np.float32)
  uniforms = to_numpy(neutral.hash_uniform(1, 1, 0, [2000, 6]))
  ours = to_numpy(compiled(lambda f, u: neutral.sample_kernel_spins(f, 0.05, 20.0, u))(
      fields, uniforms))
  reference = structured_tf.sample_kernel_spins(fields, 0.05, 20.0, uniforms).numpy()
  assert np.mean(ours == reference) > 0.999
  fields_a, fields_b = fields[:, :2], fields[:, 2:]
  a, b = compiled(lambda fa, fb, u: neutral.sample_filter_spins(fa, fb, 1.0, 5.0, u))(
      fields_a, fields_b, uniforms)
  ref_a, ref_b = structured_tf.sample_filter_spins(fields_a, fields_b, 1.0, 5.0,
                                                   uniforms.astype(np.float64))
  assert np.mean(to_numpy(a) == ref_a.numpy()) > 0.999
  assert np.mean(to_numpy(b) == ref_b.numpy()) > 0.999


def test_quantile_and_exact_count_masks_equal_the_tensorflow_path():
  rng = np.random.default_rng(1)
  values = rng.normal(size=(7, 11)).astype(np.float32)
  values[0, :5] = values[1, 0]  # ties
  for q in [0.0, 0.1, 0.35, 0.5, 0.9, 1.0]:
    np.testing.assert_allclose(to_numpy(neutral.quantile(values, q)),
                               ranking_tf.quantile(values, q).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(to_numpy(neutral.exact_count_keep_mask(values, q, exact=q)),
                                  ranking_tf.exact_count_keep_mask(values, q).numpy())


def _hard_values(rng, n):
  """float32 values a sort-free selection can get wrong: both signs over 60 decades, ±0, ±inf,
  and ties (no subnormals: TensorFlow and JAX compare them as 0 on CPU, a sort included)."""
  values = (rng.normal(size=n) * 10.0**rng.integers(-30, 30, size=n)).astype(np.float32)
  special = np.array([0.0, -0.0, 1e-37, -1e-37, 3e38, -3e38, np.inf, -np.inf], np.float32)
  values[:len(special)] = special[:n]
  values[len(special):len(special) + n // 5] = values[-1]  # ties
  return rng.permutation(values)


@pytest.mark.parametrize("n", [1, 2, 9, 300])
def test_radix_select_equals_the_sorted_order_at_every_rank(n):
  values = _hard_values(np.random.default_rng(n), n)
  ordered = np.sort(values)
  select = compiled(lambda v, k: neutral._radix_select(v, k))  # pylint: disable=protected-access
  got = [float(to_numpy(select(values, np.int32(k)))) for k in range(n)]
  np.testing.assert_array_equal(got, ordered)


def _numpy_quantile(values, q):
  """numpy's linear quantile with the position in :func:`neutral.wide_float` (float32 on JAX
  without x64, as documented) and the interpolation in float32."""
  ordered = np.sort(values)
  n = len(ordered)
  wide = np.dtype(neutral.wide_float()).type
  pos = wide(q) * wide(n - 1)
  lo = min(int(np.floor(pos)), n - 1)
  frac = np.float32(pos - wide(lo))
  v_lo, v_hi = ordered[lo], ordered[min(lo + 1, n - 1)]
  return np.float32(v_lo + frac * np.float32(v_hi - v_lo))


@pytest.mark.parametrize("n", [1, 2, 9, 40, 1000, 20000])  # sorted below 2**14, radix above
def test_kth_smallest_and_quantile_equal_numpy_eager_and_compiled(n):
  rng = np.random.default_rng(n)
  values = _hard_values(rng, n)
  ordered = np.sort(values)
  ranks = sorted({0, n // 3, n // 2, n - 1, max(n - 2, 0)})
  qs = [0.0, 0.1, 0.5, 0.9, 1.0]
  finite = np.where(np.isfinite(values), values, 0.0).astype(np.float32)  # quantile's domain

  def selections(v, f):
    return ([neutral.kth_smallest(v, k) for k in ranks] +
            [neutral.quantile(f, q) for q in qs])

  runs = [selections(values, finite)]
  if keras.backend.backend() == "tensorflow":
    runs.append(tf.function(selections, jit_compile=True)(values, finite))
  runs.append(compiled(selections)(values, finite))  # tf.function / jax.jit / eager torch
  for run in runs:
    got = [float(to_numpy(x)) for x in run]
    np.testing.assert_array_equal(got[:len(ranks)], ordered[ranks])  # -0 == 0
    # float32 interpolation, which XLA may fuse: a few ulps (1e-6 of the value at 1e37).
    np.testing.assert_allclose(got[len(ranks):], [_numpy_quantile(finite, q) for q in qs],
                               rtol=1e-5)


@pytest.mark.parametrize("n,p,expected", [(10, 0.35, 4), (10, 0.25, 2), (8, 0.99, 7),
                                          (1, 0.9, 0), (1000, 0.9, 900)])
def test_exact_count_masks_prune_exactly_the_python_count(n, p, expected):
  scores = np.ones(n, np.float32)  # all tied: positions decide
  keep = to_numpy(neutral.exact_count_keep_mask(scores, np.float32(p), exact=p))
  assert int((keep == 0).sum()) == expected
  np.testing.assert_array_equal(keep[:expected], 0.0)


def test_unstructured_keep_frequencies_within_hoeffding_bounds():
  weights = np.array([0.05, -0.2, 0.31, -0.4, 0.12, 0.0], np.float32)
  sparsity, beta, steps = 0.5, 30.0, 4000
  squared = weights.astype(np.float64)**2
  expected = 1 / (1 + np.exp(-beta * (squared - np.quantile(squared, sparsity))))
  sample = compiled(lambda step: neutral.unstructured_sample(
      weights, sparsity, beta, neutral.hash_uniform(3, step, 0, [weights.size]))[0])
  masks = np.stack([to_numpy(sample(ops.convert_to_tensor(t, "int32")))
                    for t in range(1, steps + 1)])
  bound = math.sqrt(math.log(2 * weights.size / 1e-6) / (2 * steps))
  assert np.all(np.abs(masks.mean(axis=0) - expected) < bound)


def test_hard_concrete_probability_nonzero_matches_monte_carlo():
  log_alpha = np.array([-3.0, -1.0, 0.0, 0.5, 2.0], np.float32)
  samples = 20000
  noise = neutral.gate_noise([samples, log_alpha.size], 8, 1)
  z = to_numpy(neutral.hard_concrete(np.tile(log_alpha, (samples, 1)), noise))
  expected = to_numpy(neutral.probability_nonzero(log_alpha))
  bound = math.sqrt(math.log(2 * log_alpha.size / 1e-6) / (2 * samples))
  assert np.all(np.abs((z > 0).mean(axis=0) - expected) < bound)
  assert np.all((z == 0).mean(axis=0)[:2] > 0.3)  # exact zeros
  np.testing.assert_allclose(
      z.mean(axis=0), l0_tf.expected_gate(log_alpha.astype(np.float64)).numpy(),
      atol=3 * bound)


def test_gate_and_threshold_values_equal_the_tensorflow_path():
  log_alpha = np.linspace(-4, 4, 17).astype(np.float32)
  u = np.linspace(0.01, 0.99, 17).astype(np.float32)
  gates = to_numpy(neutral.deterministic_gate(log_alpha))
  reference = l0_tf.deterministic_gate(log_alpha).numpy()
  np.testing.assert_allclose(gates, reference, atol=1e-6)  # sigmoid may differ by an ulp
  np.testing.assert_array_equal(gates == 0, reference == 0)
  np.testing.assert_array_equal(gates == 1, reference == 1)
  np.testing.assert_allclose(to_numpy(neutral.hard_concrete(log_alpha, u)),
                             l0_tf.hard_concrete(log_alpha, u).numpy(), atol=1e-6)
  np.testing.assert_allclose(to_numpy(neutral.probability_nonzero(log_alpha)),
                             l0_tf.probability_nonzero(log_alpha).numpy(), atol=1e-7)
  w = np.random.default_rng(2).normal(size=(3, 3, 4, 5)).astype(np.float32)
  np.testing.assert_allclose(to_numpy(neutral.unbiased_std(w)),
                             adaptive_tf.unbiased_std(w).numpy(), rtol=1e-6)
  r = np.array([-0.5, 0.0, 1.3, 6.0], np.float32)
  np.testing.assert_allclose(to_numpy(neutral.erf_density(r)),
                             adaptive_tf.erf_density(r).numpy(), atol=5e-7)  # erf per backend
  ratios = [np.abs(w[..., 0]), np.abs(w[..., 1:])]
  np.testing.assert_allclose(
      to_numpy(neutral.common_scale(ratios, [10, 200], 0.6)),
      adaptive_tf.common_scale([tf.constant(x) for x in ratios], [10, 200], 0.6).numpy(),
      rtol=1e-6)


def _tf_gradients(fn, *args):
  xs = [tf.constant(np.asarray(a, np.float32)) for a in args]
  with tf.GradientTape() as tape:
    tape.watch(xs)
    total = tf.reduce_sum(fn(*xs))
  return [g.numpy() for g in tape.gradient(total, xs)]


def test_straight_through_gradients_equal_the_tensorflow_path():
  log_alpha = np.array([-4.0, -1.0, 0.0, 1.0, 4.0], np.float32)
  upstream = np.array([1.0, -2.0, 0.5, 3.0, -1.0], np.float32)
  times = lambda x: ops.multiply(x, ops.convert_to_tensor(upstream))
  ours = gradients(lambda x: times(neutral.deterministic_gate(x)), log_alpha)
  theirs = _tf_gradients(lambda x: l0_tf.deterministic_gate(x) * upstream, log_alpha)
  np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-5, atol=1e-7)
  assert np.all(ours[0] != 0)  # clipped gates still pass a gradient
  ours = gradients(lambda x: times(neutral.scaled_parameter(x, 50.0)), log_alpha)
  np.testing.assert_allclose(ours[0], upstream)
  w = np.array([0.1, -0.5, 0.02, 0.7, -0.03], np.float32)
  for st in (True, False):
    def ours_fn(weight, b, st=st):
      mask = ops.cast(ops.abs(weight) > 0.05, "float32")
      return times(neutral.masked_straight_through(weight, mask, b, st))

    def tf_fn(weight, b, st=st):
      mask = tf.cast(tf.abs(weight) > 0.05, tf.float32)
      return adaptive_tf.masked_straight_through(weight, mask, b, st) * upstream

    for a, b in zip(gradients(ours_fn, w, np.float32(0.05)),
                    _tf_gradients(tf_fn, w, np.float32(0.05))):
      np.testing.assert_allclose(a, b, rtol=1e-5)
  r = np.array([-0.3, 2.0, 7.0], np.float32)
  np.testing.assert_allclose(gradients(lambda x: neutral.clip_r(x), r)[0], 1.0)


def test_forward_values_are_exact_despite_stop_gradient_algebra():
  w = np.random.default_rng(3).normal(size=1000).astype(np.float32)
  mask = (np.abs(w) > 0.5).astype(np.float32)
  out = to_numpy(neutral.masked_straight_through(w, mask, np.float32(0.5)))
  np.testing.assert_array_equal(out, w * mask)
  gates = to_numpy(neutral.deterministic_gate(np.linspace(-5, 5, 1001).astype(np.float32)))
  assert (gates == 0).sum() > 0 and (gates == 1).sum() > 0 and gates.min() == 0.0


def test_samplers_under_jit():
  weights = np.random.default_rng(4).normal(scale=0.2, size=(4, 3, 6)).astype(np.float32)

  def sample(w):
    kernel, _ = neutral.kernel_sample(w, 0.5, 10.0, 0.01, 3, 2)
    exact_filter, _ = neutral.filter_sample(w, 0.5, 10.0, 1.0, 3, 2, "exact", 8)
    chromatic, _ = neutral.filter_sample(w, 0.5, 10.0, 1.0, 3, 2, "chromatic", 8)
    return kernel, exact_filter, chromatic

  eager = [to_numpy(m) for m in sample(weights)]
  backend = keras.backend.backend()
  if backend == "tensorflow":
    compiled = tf.function(sample, jit_compile=True)
  elif backend == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    compiled = jax.jit(sample)
  else:
    pytest.skip("backend-specific: torch: Keras' jit_compile=True means torch.compile, not used by default")
  for a, b in zip(eager, [to_numpy(m) for m in compiled(weights)]):
    assert np.mean(a == b) > 0.99
