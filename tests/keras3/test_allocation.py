"""The network-wide allocation (tf_gibbs.core.allocation) against a brute-force NumPy statement
of LAMP (Lee et al., ICLR 2021): with keras.ops on every backend, and with TensorFlow (the
tf_keras front's math) where the backend is TensorFlow."""

import numpy as np
import pytest

import keras
from keras import ops

from tf_gibbs.core import allocation
from tf_gibbs.schedule import KERAS_MATH


def _maths():
  maths = [KERAS_MATH]
  if keras.backend.backend() == "tensorflow":
    from tf_gibbs.schedule import TF_MATH  # pylint: disable=g-import-not-at-top
    maths.append(TF_MATH)
  return maths


def _lamp_brute_force(energies):
  """score(u) = e_u / Σ_{v ranked at or above u} e_v, one group at a time (ascending rank by
  energy, ties by position), the layer's top group never pruned (score +inf)."""
  e = np.asarray(energies, np.float64)
  rank = np.argsort(e, kind="stable")
  scores = np.empty_like(e)
  for position, index in enumerate(rank):
    above = e[rank[position:]].sum()
    scores[index] = e[index] / above if above > 0 else 0.0
  scores[rank[-1]] = np.inf
  return scores


def _counts_brute_force(energies, sizes, target):
  """Prune the smallest scores of all layers, one group at a time, while the weights fit."""
  total = sum(len(e) * m for e, m in zip(energies, sizes))
  budget = min(round(target * total), total - sum(sizes))
  entries = sorted((score, layer) for layer, e in enumerate(energies)
                   for score in _lamp_brute_force(e))
  counts, pruned = [0] * len(energies), 0
  for score, layer in entries:
    if pruned + sizes[layer] > budget:
      break
    counts[layer] += 1
    pruned += sizes[layer]
  return counts


def _run(xp, energies, sizes, target):
  tensors = [(ops.convert_to_tensor(e, "float32") if xp is KERAS_MATH
              else __import__("tensorflow").constant(e, "float32")) for e in energies]
  return [int(c) for c in np.asarray(allocation.network_counts(tensors, sizes, target, xp))]


@pytest.mark.parametrize("target", [0.0, 0.5, 0.9, 0.98, 0.999, 1.0])
def test_network_counts_equal_brute_force_lamp(target):
  rng = np.random.default_rng(7)
  # Layers of different sizes and scales (LAMP is scale-free), single weights.
  energies = [rng.standard_normal(n).astype(np.float32) ** 2 * scale
              for n, scale in [(40, 1.0), (7, 100.0), (300, 1e-3), (3, 5.0)]]
  sizes = [1, 1, 1, 1]
  expected = _counts_brute_force(energies, sizes, target)
  for xp in _maths():
    counts = _run(xp, energies, sizes, target)
    assert counts == expected, (xp, counts, expected)
    assert sum(counts) == min(round(target * 350), 350 - 4)  # the exact global count
    assert all(c <= len(e) - 1 for c, e in zip(counts, energies))  # one group kept per layer


def test_groups_of_different_sizes_fit_the_weight_budget():
  rng = np.random.default_rng(3)
  energies = [rng.random(16).astype(np.float32) * 9.0, rng.random(10).astype(np.float32),
              rng.random(5).astype(np.float32)]
  sizes = [9, 1, 27]  # kernels of 9 weights, single weights, filters of 27
  for target in (0.3, 0.7, 0.95):
    expected = _counts_brute_force(energies, sizes, target)
    for xp in _maths():
      counts = _run(xp, energies, sizes, target)
      assert counts == expected, (target, counts, expected)
      pruned = sum(c * m for c, m in zip(counts, sizes))
      assert pruned <= round(target * (144 + 10 + 135))


def test_scaling_a_layer_changes_nothing_and_zeros_and_ties_keep_the_count_exact():
  rng = np.random.default_rng(11)
  base = [rng.random(20).astype(np.float32), rng.random(6).astype(np.float32)]
  scaled = [base[0] * 1e4, base[1] * 1e-4]
  # An all-zero layer and a layer of equal weights: the count stays exact, both keep a group.
  awkward = [np.zeros(8, np.float32), np.full(12, 0.5, np.float32), rng.random(30).astype(
      np.float32)]
  for xp in _maths():
    assert _run(xp, base, [1, 1], 0.8) == _run(xp, scaled, [1, 1], 0.8)
    counts = _run(xp, awkward, [1, 1, 1], 0.9)
    assert sum(counts) == round(0.9 * 50)
    assert counts[0] == 7 and counts[1] <= 11 and counts[2] <= 29


def test_lamp_scores_are_the_brute_force_ones():
  rng = np.random.default_rng(5)
  energies = rng.random(50).astype(np.float32)
  expected = np.sort(_lamp_brute_force(energies))[::-1]
  for xp in _maths():
    tensor = ops.convert_to_tensor(energies) if xp is KERAS_MATH else __import__(
        "tensorflow").constant(energies)
    scores = np.sort(np.asarray(allocation.lamp_scores(tensor, xp)))[::-1]
    assert scores[0] == allocation.KEPT
    np.testing.assert_allclose(scores[1:], expected[1:], rtol=1e-6)
