"""The unstructured Gibbs sampler against its exact distribution (brute force on small cases)."""

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf

from tf_gibbs.core import gibbs as gibbs_lib
from tf_gibbs.core import ranking as q_lib

from brute_force import empirical_tv
from brute_force import tv_bound


def _sample_masks(weights, sparsity, beta, num_samples, base_seed=7):
  """num_samples independent masks from the stateless sampler, one per seed (seed, i)."""
  seeds = tf.stack([tf.fill([num_samples], tf.constant(base_seed, tf.int64)),
                    tf.range(num_samples, dtype=tf.int64)], axis=1)
  sample = lambda s: gibbs_lib.sample_unstructured_mask(weights, sparsity, beta, s)[0]
  return tf.vectorized_map(sample, seeds, warn=False).numpy()


def _exact_configuration_distribution(weights, sparsity, beta):
  """p(x) ∝ exp(−β H(x)), H(x) = Σ (Q − w²) x, enumerated over all 2ⁿ masks."""
  w2 = np.asarray(weights, np.float64) ** 2
  q = np.quantile(w2, sparsity)
  configs = np.array(list(itertools.product([0, 1], repeat=w2.size)), np.float64)
  energy = configs @ (q - w2)
  logits = -beta * energy
  probs = np.exp(logits - logits.max())
  return configs, probs / probs.sum()


WEIGHTS = np.array([0.05, -0.2, 0.31, -0.4, 0.12], np.float32)


@pytest.mark.parametrize("beta,sparsity", [(1.0, 0.5), (20.0, 0.6), (50.0, 0.9)])
def test_configuration_distribution_matches_brute_force(beta, sparsity):
  num_samples = 20000
  samples = _sample_masks(WEIGHTS, sparsity, beta, num_samples)
  configs, probs = _exact_configuration_distribution(WEIGHTS, sparsity, beta)
  tv = empirical_tv(samples, configs, probs)
  assert tv < tv_bound(len(configs), num_samples), tv


def test_brute_force_check_can_fail():
  """The same statistic rejects a sampler at the wrong temperature (the test has power)."""
  num_samples = 20000
  samples = _sample_masks(WEIGHTS, 0.6, 40.0, num_samples)
  configs, probs = _exact_configuration_distribution(WEIGHTS, 0.6, 20.0)
  assert empirical_tv(samples, configs, probs) > 2 * tv_bound(len(configs), num_samples)


def test_keep_frequency_matches_sigmoid_per_weight():
  """Each weight's keep frequency over M masks is within a Hoeffding + union bound of
  σ(β(w² − Q_p)): P(|f̂ − p| ≥ ε) ≤ 2 exp(−2Mε²), union over n weights, δ = 1e-6."""
  rng = np.random.RandomState(0)
  weights = (rng.randn(4, 6) * 0.3).astype(np.float32)
  beta, sparsity, num_samples = 30.0, 0.7, 8000
  samples = _sample_masks(weights, sparsity, beta, num_samples)
  w2 = weights.astype(np.float64) ** 2
  expected = 1 / (1 + np.exp(-beta * (w2 - np.quantile(w2, sparsity))))
  eps = math.sqrt(math.log(2 * weights.size / 1e-6) / (2 * num_samples))
  np.testing.assert_array_less(np.abs(samples.mean(0) - expected), eps)
  # and the probabilities really spread (not a degenerate all-0/all-1 case)
  assert expected.min() < 0.2 and expected.max() > 0.8


def test_large_beta_gives_magnitude_pruning():
  weights = np.random.RandomState(4).randn(3, 3, 4, 8).astype(np.float32)
  w2 = weights ** 2
  for beta in (1e6, 1e8):
    mask, threshold = gibbs_lib.sample_unstructured_mask(weights, 0.9, beta, [1, 2])
    np.testing.assert_allclose(threshold.numpy(), np.quantile(w2, 0.9), rtol=1e-6)
    np.testing.assert_array_equal(mask.numpy(), (w2 > threshold.numpy()).astype(np.float32))
    assert not np.isnan(mask.numpy()).any()


def test_zero_sparsity_prunes_nothing():
  weights = np.random.RandomState(5).randn(50).astype(np.float32)
  mask, _ = gibbs_lib.sample_unstructured_mask(weights, 0.0, 1.0, [3, 4])
  np.testing.assert_array_equal(mask.numpy(), np.ones(50))


def test_sampler_is_a_function_of_the_seed():
  weights = np.random.RandomState(6).randn(200).astype(np.float32)
  draw = lambda seed: gibbs_lib.sample_unstructured_mask(weights, 0.5, 1.0, seed)[0].numpy()
  np.testing.assert_array_equal(draw([1, 10]), draw([1, 10]))
  assert (draw([1, 10]) != draw([1, 11])).any()


def test_sampler_under_xla():
  weights = np.random.RandomState(7).randn(3, 3, 2, 4).astype(np.float32)
  fn = tf.function(gibbs_lib.sample_unstructured_mask, jit_compile=True)
  mask, threshold = fn(weights, tf.constant(0.8), tf.constant(1e8), tf.constant([1, 2], tf.int64))
  w2 = weights ** 2
  np.testing.assert_array_equal(mask.numpy(), (w2 > threshold.numpy()).astype(np.float32))


def test_unstructured_deterministic_mask_is_exact_count():
  weights = np.random.RandomState(8).randn(1000).astype(np.float32)
  mask = gibbs_lib.UnstructuredHamiltonian().deterministic_mask(weights, 0.9).numpy()
  assert mask.sum() == 100
  assert np.abs(weights[mask == 1]).min() >= np.abs(weights[mask == 0]).max()
  np.testing.assert_array_equal(
      mask, q_lib.exact_count_keep_mask(np.abs(weights), 0.9).numpy())


def test_unknown_hamiltonian_names_accepted_values():
  with pytest.raises(ValueError, match="hamiltonian='spin-glass'.*unstructured"):
    gibbs_lib.get_hamiltonian("spin-glass")
