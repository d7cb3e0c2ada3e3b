"""tf_gibbs.core.quantile against numpy, eagerly and under XLA."""

import numpy as np
import pytest
import tensorflow as tf

from tf_gibbs.core import ranking as q_lib


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 3, 2, 5), (1000,)])
@pytest.mark.parametrize("q", [0.0, 0.1, 0.5, 0.9, 0.95, 0.999, 1.0])
def test_quantile_matches_numpy_linear(shape, q):
  values = np.random.RandomState(1).randn(*shape).astype(np.float32) ** 2
  got = q_lib.quantile(values, q).numpy()
  np.testing.assert_allclose(got, np.quantile(values, q), rtol=1e-6, atol=1e-7)


def test_quantile_with_tensor_q_under_xla():
  values = np.random.RandomState(2).rand(500).astype(np.float32)
  fn = tf.function(q_lib.quantile, jit_compile=True)
  for q in (0.25, 0.9):
    np.testing.assert_allclose(fn(values, tf.constant(q)).numpy(), np.quantile(values, q),
                               rtol=1e-6)


@pytest.mark.parametrize("n,sparsity", [(10, 0.9), (1152, 0.9), (37, 0.5), (5, 0.0),
                                        (1, 0.9), (100, 0.98), (1000, 0.999)])
def test_exact_count_mask_prunes_round_pn_smallest(n, sparsity):
  scores = np.random.RandomState(n).rand(n).astype(np.float32)
  mask = q_lib.exact_count_keep_mask(scores, sparsity).numpy()
  k = min(int(round(sparsity * n)), n - 1)  # a layer keeps at least one entry (n = 1: none pruned)
  assert mask.sum() == n - k
  pruned = np.argsort(scores, kind="stable")[:k]
  assert np.all(mask[pruned] == 0)


def test_exact_count_mask_with_ties_is_exact_and_shaped():
  scores = np.ones((4, 5), np.float32)
  mask = q_lib.exact_count_keep_mask(scores, 0.5).numpy()
  assert mask.shape == (4, 5)
  assert mask.sum() == 10
  # Ties are broken by flat position: the first ten are pruned.
  np.testing.assert_array_equal(mask.reshape(-1), np.r_[np.zeros(10), np.ones(10)])


def test_exact_count_mask_under_xla_with_tensor_sparsity():
  scores = np.random.RandomState(3).rand(3, 3, 4, 8).astype(np.float32)
  fn = tf.function(q_lib.exact_count_keep_mask, jit_compile=True)
  mask = fn(scores, tf.constant(0.9)).numpy()
  assert mask.sum() == scores.size - round(0.9 * scores.size)
  np.testing.assert_array_equal(mask, q_lib.exact_count_keep_mask(scores, 0.9).numpy())


def test_pruned_count_is_exact_for_large_layers():
  # float32 0.9 * 10_000_000 is 8_999_999.76...; the count must still be 9_000_000.
  assert int(q_lib.pruned_count(10_000_000, tf.constant(0.9, tf.float32))) == 9_000_000


@pytest.mark.parametrize("seed", range(6))
def test_kth_smallest_equals_sorted_value_for_any_floats(seed):
  rng = np.random.RandomState(seed)
  n = rng.randint(1, 3000)
  values = (rng.randn(n) * 10.0 ** rng.uniform(-20, 20, n)).astype(np.float32)
  values[rng.rand(n) < 0.2] = values[0]  # duplicates
  values[rng.rand(n) < 0.05] = 0.0
  values[rng.rand(n) < 0.05] = -0.0
  ordered = np.sort(values)
  for k in sorted({0, n - 1, n // 2, rng.randint(n)}):
    assert q_lib.kth_smallest(values, k).numpy() == ordered[k]


def test_exact_count_mask_with_negative_scores_and_signed_zeros():
  scores = np.array([-3.0, 0.0, -0.0, 2.0, -1.0, 0.0, 5.0, -0.0], np.float32)
  mask = q_lib.exact_count_keep_mask(scores, 0.5).numpy()
  # the four smallest: -3, -1, then the first two zeros by position
  np.testing.assert_array_equal(mask, [0, 0, 0, 1, 0, 1, 1, 1])


def _brute_force_keep(scores, sparsity):
  n = scores.size
  k = min(int(round(sparsity * n)), n - 1)
  keep = np.ones(n, np.float32)
  keep[np.argsort(scores.reshape(-1), kind="stable")[:k]] = 0.0  # ties: lower position first
  return keep.reshape(scores.shape)


@pytest.mark.parametrize("n", [2, 3, 255, 256, 257, 300, 1000, 16383, 16384, 20000])
def test_padded_selections_equal_numpy_with_ties_and_huge_values(n):
  # Small layers run on +inf-padded copies (padded_size); the padding must never be counted,
  # ranked or tied: duplicated values, values next to float32's largest, exact positions.
  rng = np.random.RandomState(n)
  values = rng.choice(np.float32([0.0, 1.0, 2.5, 3e38, np.float32(3.4028235e38)]), n)
  values[: n // 2] = rng.rand(n // 2).astype(np.float32)
  assert q_lib.padded_size(n) >= n
  for q in (0.0, 0.5, 0.9, 1.0):
    np.testing.assert_allclose(q_lib.quantile(values, q).numpy(),
                               np.quantile(values.astype(np.float64), q), rtol=1e-6)
  for sparsity in (0.0, 0.5, 0.9, 1.0):
    np.testing.assert_array_equal(q_lib.exact_count_keep_mask(values, sparsity).numpy(),
                                  _brute_force_keep(values, sparsity))


def test_sizes_that_pad_alike_share_one_compilation_and_large_ones_are_not_padded():
  assert [q_lib.padded_size(n) for n in (1, 2, 3, 288, 512, 513, 16383, 16384, 36864)] == [
      2, 2, 4, 512, 512, 1024, 16384, 16384, 36864]
  cluster = q_lib._quantile_cluster  # pylint: disable=protected-access
  traces = cluster.experimental_get_tracing_count()
  for shape in [(3, 3, 32), (16, 24), (1, 1, 2, 200), (500,)]:  # 288, 384, 400, 500 → 512
    values = np.random.RandomState(len(shape)).rand(*shape).astype(np.float32)
    np.testing.assert_allclose(q_lib.quantile(values, 0.9).numpy(), np.quantile(values, 0.9),
                               rtol=1e-6)
  assert cluster.experimental_get_tracing_count() - traces <= 1
