"""Kernel-wise and filter-wise samplers against their exact distributions (brute force)."""

import itertools

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from tf_gibbs.core import structured

from brute_force import empirical_tv
from brute_force import exact
from brute_force import filter_energy
from brute_force import kernel_energy
from brute_force import tv_bound

NUM_SAMPLES = 20000


def _uniforms(shape, seed):
  return tf.random.stateless_uniform(shape, seed=[seed, 0], dtype=tf.float64)


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_suffix_log_esp_matches_brute_force_sums(n):
  rng = np.random.default_rng(n)
  # one ordinary group, one with the log-magnitudes of beta = 1e6 (float64 must keep their O(1)
  # differences)
  log_x = np.stack([rng.normal(size=n), 1e6 * rng.normal(size=n) + rng.normal(size=n)])
  table = structured.suffix_log_esp(tf.constant(log_x)).numpy()
  assert table.shape == (2, n + 1, n + 1)
  for g, i in itertools.product(range(2), range(n + 1)):
    for k in range(n + 1):
      if k > n - i:
        assert table[g, i, k] < -1e299  # impossible count
        continue
      terms = [sum(log_x[g, list(c)]) for c in itertools.combinations(range(i, n), k)]
      np.testing.assert_allclose(table[g, i, k], np.logaddexp.reduce(terms),
                                 rtol=1e-12, atol=1e-6)


@pytest.mark.parametrize("beta,coupling", [(1.0, 0.2), (3.0, 0.5), (2.0, 0.0)])
def test_kernel_sampler_matches_brute_force(beta, coupling):
  fields = np.array([0.3, -0.2, 0.05, -0.4], np.float64)
  tiled = np.tile(fields, (NUM_SAMPLES, 1))
  samples = structured.sample_kernel_spins(tiled, coupling, beta,
                                           _uniforms([NUM_SAMPLES, 5], 1)).numpy()
  configs, probs = exact(kernel_energy(fields, coupling), 4, beta)
  assert empirical_tv(samples, configs, probs) < tv_bound(len(configs), NUM_SAMPLES)


def test_kernel_check_has_power():
  fields = np.array([0.3, -0.2, 0.05, -0.4], np.float64)
  tiled = np.tile(fields, (NUM_SAMPLES, 1))
  samples = structured.sample_kernel_spins(tiled, 0.5, 3.0,
                                           _uniforms([NUM_SAMPLES, 5], 2)).numpy()
  configs, probs = exact(kernel_energy(fields, 0.0), 4, 3.0)  # wrong coupling
  assert empirical_tv(samples, configs, probs) > 2 * tv_bound(len(configs), NUM_SAMPLES)


@pytest.mark.parametrize("n_a,beta,coupling", [(2, 1.0, 0.5), (2, 3.0, 1.0), (0, 2.0, 1.0),
                                               (1, 0.5, 2.0)])
def test_filter_exact_sampler_matches_brute_force(n_a, beta, coupling):
  fields = np.array([0.4, -0.3, 0.1, -0.2, 0.25], np.float64)
  fields_a, fields_b = fields[:n_a], fields[n_a:]
  a, b = structured.sample_filter_spins(
      np.tile(fields_a, (NUM_SAMPLES, 1)).reshape(NUM_SAMPLES, n_a),
      np.tile(fields_b, (NUM_SAMPLES, 1)), coupling, beta, _uniforms([NUM_SAMPLES, 6], 3))
  samples = np.concatenate([a.numpy(), b.numpy()], axis=1)
  configs, probs = exact(filter_energy(fields_a, fields_b, coupling), 5, beta)
  assert empirical_tv(samples, configs, probs) < tv_bound(len(configs), NUM_SAMPLES)


def test_chromatic_sampler_agrees_with_exact_distribution():
  fields_a, fields_b = np.array([0.4, -0.3]), np.array([0.1, -0.2, 0.25])
  beta, coupling, sweeps = 1.0, 0.5, 50
  ones = lambda n: np.ones((NUM_SAMPLES, n))
  a, b = structured.sample_filter_chromatic(
      np.tile(fields_a, (NUM_SAMPLES, 1)), np.tile(fields_b, (NUM_SAMPLES, 1)), coupling, beta,
      tf.constant([4, 0]), sweeps, ones(2), ones(3))
  samples = np.concatenate([a.numpy(), b.numpy()], axis=1)
  configs, probs = exact(filter_energy(fields_a, fields_b, coupling), 5, beta)
  assert empirical_tv(samples, configs, probs) < tv_bound(len(configs), NUM_SAMPLES)


@pytest.mark.parametrize("size", [3, 5, 7])
def test_large_kernels_sample_and_large_beta_is_deterministic(size):
  rng = np.random.RandomState(size)
  n = size * size
  fields = rng.randn(64, n) * 0.1
  for beta in (1.0, 1e6):
    keep = structured.sample_kernel_spins(fields, 0.01, beta, _uniforms([64, n + 1], 5)).numpy()
    assert keep.shape == (64, n) and np.isin(keep, [0, 1]).all()
  # at β = 1e6 the sample is the ground state: for each count k the best configuration keeps
  # the k most negative b_i, and the best k minimizes −c(M² − n) + Σ b_i s_i
  np.testing.assert_array_equal(keep, _kernel_ground_state(fields, 0.01))


def _kernel_ground_state(fields, coupling):
  n = fields.shape[1]
  order = np.argsort(fields, axis=1)
  result = np.zeros_like(fields, dtype=np.float32)
  for g, row in enumerate(fields):
    sorted_b = row[order[g]]
    energies = [-coupling * ((2 * k - n) ** 2 - n) + sorted_b[:k].sum() - sorted_b[k:].sum()
                for k in range(n + 1)]
    best = int(np.argmin(energies))
    result[g, order[g][:best]] = 1.0
  return result


def test_filter_large_beta_is_finite_and_deterministic():
  rng = np.random.RandomState(0)
  fields_a, fields_b = rng.randn(8, 72), rng.randn(8, 72)
  a, b = structured.sample_filter_spins(fields_a, fields_b, 0.0, 1e6, _uniforms([8, 145], 6))
  np.testing.assert_array_equal(a.numpy(), (fields_a < 0).astype(np.float32))
  np.testing.assert_array_equal(b.numpy(), (fields_b < 0).astype(np.float32))


def test_samplers_compile_with_xla():
  fields = np.random.RandomState(1).randn(16, 9)
  fn = tf.function(structured.sample_kernel_spins, jit_compile=True)
  keep = fn(fields, tf.constant(0.01), tf.constant(1e4), _uniforms([16, 10], 7))
  assert np.isin(keep.numpy(), [0, 1]).all()
  fn = tf.function(structured.sample_filter_spins, jit_compile=True)
  a, b = fn(fields[:, :4], fields[:, 4:], tf.constant(1.0), tf.constant(0.1),
            _uniforms([16, 10], 8))
  assert a.shape == (16, 4) and b.shape == (16, 5)


@pytest.mark.parametrize("coupling", [0.5, 2.0])
def test_filter_exact_sampler_at_large_beta_with_coupling_gives_the_ground_state(coupling):
  """At β = 1e6 the sample is the brute-force ground state, also when the coupling favours a
  magnetization of B that the fields alone make astronomically improbable (no underflow)."""
  rng = np.random.RandomState(11)
  n_a, n_b = 2, 3
  for _ in range(20):
    fields = rng.randn(n_a + n_b) * 0.5
    configs, probs = exact(filter_energy(fields[:n_a], fields[n_a:], coupling), 5, 1.0)
    energies = [filter_energy(fields[:n_a], fields[n_a:], coupling)(2.0 * np.array(c) - 1.0)
                for c in configs]
    order = np.argsort(energies)
    if energies[order[1]] - energies[order[0]] < 1e-3:
      continue  # near-degenerate ground state: any of them is right
    a, b = structured.sample_filter_spins(fields[None, :n_a], fields[None, n_a:], coupling, 1e6,
                                          _uniforms([1, 6], 9))
    sample = tuple(np.concatenate([a.numpy()[0], b.numpy()[0]]).astype(int))
    assert sample == configs[order[0]], (fields, coupling)


def test_hash_uniforms_are_uniform_independent_and_keyed_by_seed_and_sweep():
  shape = [64, 500]
  all_draws = [structured.hash_uniform(tf.constant(s, tf.int64), i, shape).numpy()
               for s in ([0, 0], [0, 1], [7, 0]) for i in range(3)]
  for u in all_draws:
    assert u.shape == (64, 500) and u.dtype == np.float32
    assert 0.0 <= u.min() and u.max() < 1.0
    assert scipy.stats.kstest(u.ravel(), "uniform").pvalue > 1e-4
    assert abs(np.corrcoef(u[:, :-1].ravel(), u[:, 1:].ravel())[0, 1]) < 0.02  # neighbours
  for i, a in enumerate(all_draws):  # every (seed, sweep) pair gives its own numbers
    for b in all_draws[i + 1:]:
      assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.02
  np.testing.assert_array_equal(  # and the same numbers again for the same key
      structured.hash_uniform(tf.constant([0, 1], tf.int64), 2, shape).numpy(),
      structured.hash_uniform(tf.constant([0, 1], tf.int64), 2, shape).numpy())


@pytest.mark.parametrize("hamiltonian,kwargs,beta", [
    ("kernel", {"c": 0.3}, 6.0),
    ("filter", {"c": 1.0, "sampler": "exact"}, 6.0),
    # Weak coupling: with c = 1, β = 6 the two modes (all kept, all pruned) each have ½ and
    # 30 sweeps from one of them never reach the other (the reference MCMC's known limit).
    ("filter", {"c": 0.2, "sampler": "chromatic", "mcmc_steps": 30}, 2.0)])
def test_hamiltonian_sample_mask_matches_brute_force_end_to_end(hamiltonian, kwargs, beta):
  """The whole training-step path (Q_p, the hash uniforms, the sampler and the reshapes, as
  one XLA cluster) on NUM_SAMPLES identical groups: the groups' masks are independent draws
  of one group's exact distribution (Q_p is that group's mean w², so fields are Q_p − w²)."""
  from tf_gibbs.core import gibbs  # pylint: disable=g-import-not-at-top
  energy = gibbs.get_hamiltonian(hamiltonian, **kwargs)
  w = np.array([0.5, -0.2, 0.35, 0.1], np.float32)
  if hamiltonian == "kernel":  # [n, C, F]: one kernel of 4 weights per (C, F)
    weights = np.broadcast_to(w[:, None, None], (4, 1, NUM_SAMPLES))
  else:  # one filter of 4 input channels (1×1 kernel) per output channel
    weights = np.broadcast_to(w[None, :, None], (1, 4, NUM_SAMPLES))
  mask, threshold = energy.sample_mask(tf.constant(weights), 0.5, beta, tf.constant([5, 9]))
  fields = float(np.mean(w.astype(np.float64) ** 2)) - w.astype(np.float64) ** 2
  assert float(threshold) == pytest.approx(np.mean(w.astype(np.float64) ** 2), rel=1e-6)
  samples = np.reshape(mask.numpy(), (4, NUM_SAMPLES)).T
  if hamiltonian == "kernel":
    configs, probs = exact(kernel_energy(fields, kwargs["c"]), 4, beta)
  else:
    configs, probs = exact(filter_energy(fields[:2], fields[2:], kwargs["c"]), 4, beta)
  assert empirical_tv(samples, configs, probs) < tv_bound(len(configs), NUM_SAMPLES)
  # And the draws are keyed by the seed: another step draws other masks.
  other, _ = energy.sample_mask(tf.constant(weights), 0.5, beta, tf.constant([5, 10]))
  assert not np.array_equal(other.numpy(), mask.numpy())
