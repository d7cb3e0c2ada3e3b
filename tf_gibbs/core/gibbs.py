"""Gibbs-distribution pruning masks (Labach & Valaee, arXiv 2006.04981) in plain TensorFlow.

A mask x ∈ {0, 1}ⁿ (1 = keep) is drawn from p(x) ∝ exp(−β H(x; w)) with a Hamiltonian H built
from the weight magnitudes; see ``methods.md`` §1. A :class:`Hamiltonian` bundles what a wrapper
needs of one energy: the exact sampler for training and the deterministic, exact-count mask for
inference and deployment. Nothing here knows about Keras.

Randomness is stateless (``tf.random.stateless_uniform``) and keyed by a ``seed`` tensor of shape
[2]: the wrappers pass (layer seed, training step), so a step's mask is a pure function of the
weights and the step. That makes resumed runs reproducible and gives every replica of a
``tf.distribute`` step the same mask, with no random-generator state to checkpoint.
"""

import tensorflow as tf

from tf_gibbs.core import ranking


def unstructured_keep_probability(squared_weights, threshold, beta):
  """P(keep w_i) = σ(β (w_i² − Q_p)) — the unstructured Gibbs marginal (methods.md §1.1).

  The energy H(x) = Σ_i (Q_p − w_i²) x_i has independent sites, so this is the exact
  distribution of each x_i, not an approximation. ``tf.sigmoid`` saturates cleanly to 0 or 1,
  so β up to 1e8 neither overflows nor produces NaN.
  """
  z = tf.cast(beta, tf.float32) * (tf.cast(squared_weights, tf.float32) - threshold)
  return tf.sigmoid(z)


def sample_unstructured_mask(weights, sparsity, beta, seed):
  """Draws x_i ~ Bernoulli(σ(β (w_i² − Q_p))) independently; Q_p = quantile(w², p).

  Follows the reference code (``j201/gibbs-pruning``), which samples exactly (no MCMC) and
  recomputes Q_p from the current weights at every step.

  Args:
    weights: weight tensor of any shape.
    sparsity: target pruned fraction p in [0, 1). At p = 0 nothing is pruned (our choice: the
      reference formula would still drop weights near the minimum with probability ½).
    beta: inverse temperature β > 0.
    seed: int tensor of shape [2] for ``tf.random.stateless_uniform``.

  Returns:
    (mask, threshold): float32 mask of ``weights``' shape, and the float32 scalar Q_p.
  """
  squared = tf.square(tf.cast(weights, tf.float32))
  threshold = ranking.quantile(squared, sparsity)
  keep_probability = unstructured_keep_probability(squared, threshold, beta)
  uniform = tf.random.stateless_uniform(tf.shape(squared), seed=seed, dtype=tf.float32)
  mask = tf.cast(uniform < keep_probability, tf.float32)
  mask = tf.where(tf.cast(sparsity, tf.float32) > 0.0, mask, tf.ones_like(mask))
  return mask, threshold


class Hamiltonian:
  """One Gibbs energy: its exact sampler and its deterministic deployment mask.

  Subclasses set ``name`` and implement :meth:`sample_mask` and :meth:`deterministic_mask`;
  :meth:`check_shape` says which weight tensors the energy is defined for.
  """

  name = None

  def check_shape(self, shape):
    """Returns None if the energy applies to weights of ``shape``, else a reason string."""
    del shape
    return None

  def sample_mask(self, weights, sparsity, beta, seed):
    """Returns (mask, threshold): one exact sample of the Gibbs distribution at β."""
    raise NotImplementedError

  def deterministic_mask(self, weights, sparsity):
    """Returns the β → ∞ mask with exactly round(p · #groups) groups pruned."""
    raise NotImplementedError


class UnstructuredHamiltonian(Hamiltonian):
  """H(x) = Σ_i (Q_p − w_i²) x_i: independent weights (methods.md §1.1).

  As β → ∞ the sample becomes "keep iff w_i² > Q_p"; the deterministic mask prunes exactly
  round(p·n) weights of smallest |w| (ties by position).
  """

  name = "unstructured"

  def sample_mask(self, weights, sparsity, beta, seed):
    return sample_unstructured_mask(weights, sparsity, beta, seed)

  def deterministic_mask(self, weights, sparsity):
    return ranking.exact_count_keep_mask(tf.square(tf.cast(weights, tf.float32)), sparsity)


HAMILTONIANS = {
    UnstructuredHamiltonian.name: UnstructuredHamiltonian,
}


def get_hamiltonian(name):
  """Returns a new Hamiltonian by name; ValueError names the accepted values."""
  if isinstance(name, Hamiltonian):
    return name
  if not isinstance(name, str) or name not in HAMILTONIANS:
    raise ValueError(
        f"Unknown hamiltonian={name!r}; accepted values: {sorted(HAMILTONIANS)}.")
  return HAMILTONIANS[name]()
