"""Gibbs-distribution pruning masks (Labach & Valaee, arXiv 2006.04981) in plain TensorFlow.

A mask x ∈ {0, 1}ⁿ (1 = keep) is drawn from p(x) ∝ exp(−β H(x; w)) with a Hamiltonian H built
from the weight magnitudes; see ``methods.md`` §1. A :class:`Hamiltonian` bundles what a wrapper
needs of one energy: the exact sampler for training and the deterministic, exact-count mask for
inference and deployment. Nothing here knows about Keras.

Randomness is stateless (:func:`tf_gibbs.core.structured.stateless_open_uniform` for the
unstructured and kernel energies; the filter samplers use :func:`tf_gibbs.core.structured.hash_uniform`, a counter-based
hash that gives the same numbers inside and outside their XLA clusters) and keyed by a ``seed`` tensor of shape [2]: the wrappers pass (layer seed, training step), so a step's mask is a pure function of the
weights and the step. That makes resumed runs reproducible and gives every replica of a
``tf.distribute`` step the same mask, with no random-generator state to checkpoint.
"""

import numbers

import numpy as np
import tensorflow as tf

from tf_gibbs.core import ranking
from tf_gibbs.core import structured
from tf_gibbs.core.xla import nested_xla


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
    seed: int tensor of shape [2] for ``tf.random.stateless_uniform`` (uniforms in (0, 1), so a
      weight whose keep probability is 0 is never kept).

  Returns:
    (mask, threshold): float32 mask of ``weights``' shape, and the float32 scalar Q_p.
  """
  squared = tf.square(tf.cast(weights, tf.float32))
  threshold = ranking.quantile(squared, sparsity)
  keep_probability = unstructured_keep_probability(squared, threshold, beta)
  uniform = structured.stateless_open_uniform(tf.shape(squared), seed)
  mask = tf.cast(uniform < keep_probability, tf.float32)
  return _no_pruning_if_zero(mask, sparsity), threshold


LAYOUTS = ("dense", "conv", "depthwise")


def canonical_shape(shape, layout):
  """(n, C, F): the [spatial, input channel, filter] view every Hamiltonian works on.

  dense (in, out) → (1, in, out); conv (k…, C_in, F) → (Πk, C_in, F); depthwise
  (kh, kw, C, m) → (kh·kw, 1, C·m): each output channel has one kernel over one input channel.
  All three are plain reshapes of the kernel (same memory order).
  """
  shape = [int(d) for d in shape]
  if layout == "dense":
    return 1, shape[0], shape[1]
  if layout == "conv":
    n = 1
    for d in shape[:-2]:
      n *= d
    return n, shape[-2], shape[-1]
  if layout == "depthwise":
    return shape[0] * shape[1], 1, shape[2] * shape[3]
  raise ValueError(f"Unknown layout={layout!r}; accepted values: {list(LAYOUTS)}.")


def _check_coupling(coupling):
  if isinstance(coupling, (bool, np.bool_)) or not isinstance(coupling, numbers.Real) or not (
      0.0 <= coupling < float("inf")) or not np.isfinite(np.float32(coupling)):
    raise ValueError(f"`c` (the coupling) must be a finite number >= 0 (a Python or NumPy "
                     f"number, finite in float32), got {coupling!r}.")
  return float(coupling)


class Hamiltonian:
  """One Gibbs energy: its sampler for training and its deterministic deployment mask.

  Subclasses set ``name`` and implement :meth:`sample_mask` and :meth:`deterministic_mask` on
  weights in the canonical [n, C, F] view (:func:`canonical_shape`); :meth:`check_layout` says
  which layers the energy is defined for; :meth:`get_config` returns the constructor arguments.
  """

  name = None

  def check_layout(self, layout):
    """Returns None if the energy applies to a layer of ``layout``, else a reason string."""
    del layout
    return None

  def sample_mask(self, weights, sparsity, beta, seed):
    """Returns (mask, threshold): one sample of the Gibbs distribution at β (shape of weights)."""
    raise NotImplementedError

  def deterministic_mask(self, weights, sparsity):
    """Returns the β → ∞ mask with exactly round(p · #groups) groups pruned."""
    raise NotImplementedError

  def get_config(self):
    return {}


def _no_pruning_if_zero(mask, sparsity):
  """All ones at sparsity 0. One element-wise max with a scalar (a {0, 1} mask), not a select
  against a materialized tensor of ones: these run for every layer at every step."""
  return tf.maximum(mask, tf.cast(tf.cast(sparsity, tf.float32) <= 0.0, mask.dtype))


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


class KernelHamiltonian(Hamiltonian):
  """Kernel-wise energy (methods.md §1.2), one ferromagnetic system per (input, filter) kernel.

  H_k(s) = −c Σ_{i≠j} s_i s_j + Σ_i (Q_p − w_i²) s_i, Q_p the p-quantile of the kernels' mean
  w². Sampled exactly for any kernel size (:func:`structured.sample_kernel_spins`). Deployment
  keeps the top (1 − p) kernels by Σw², exactly round(p·C·F) kernels pruned. Reference values:
  c = 0.01, β 1 → 1e4.
  """

  name = "kernel"

  def __init__(self, c=0.01):
    self.c = _check_coupling(c)

  def check_layout(self, layout):
    if layout == "dense":
      return ("the kernel Hamiltonian couples the weights of a convolution kernel; a Dense layer "
              "has none (use hamiltonian='filter' for its units, or 'unstructured').")
    return None

  def sample_mask(self, weights, sparsity, beta, seed):
    n, c_in, filters = weights.shape
    squared = tf.square(tf.cast(weights, tf.float32))
    threshold = ranking.quantile(tf.reduce_mean(squared, axis=0), sparsity)
    # The uniforms are drawn outside the XLA cluster: XLA's generators draw other numbers than
    # the CPU kernels, and a multi-replica model runs the sampler without the cluster. (Drawn
    # by structured.hash_uniform inside the cluster, as the filter samplers do, and with Q_p in
    # the same cluster, the sampler measured 5-15 % slower: here the two small clusters and the
    # generator run side by side on the inter-op threads.)
    # float32: the sampler compares them with float32 probabilities (float64 draws cost twice
    # the generator's time for nothing).
    uniforms = structured.stateless_open_uniform([c_in * filters, n + 1], seed)
    mask = _kernel_sample(squared, threshold, tf.constant(self.c, tf.float64),
                          tf.cast(beta, tf.float64), uniforms)
    return _no_pruning_if_zero(mask, sparsity), threshold

  def deterministic_mask(self, weights, sparsity):
    scores = tf.reduce_sum(tf.square(tf.cast(weights, tf.float32)), axis=0)
    keep = ranking.exact_count_keep_mask(scores, sparsity)
    return tf.broadcast_to(keep[None], weights.shape)

  def get_config(self):
    return {"c": self.c}


SAMPLERS = ("exact", "chromatic")


class FilterHamiltonian(Hamiltonian):
  """Filter-wise energy (methods.md §1.3), one two-colour system per filter (output unit).

  H_f(s) = ½ Σ_i (Q_p − w_i²) s_i − (c/2) S_A S_B, A = the first ⌊C_in/2⌋ input channels of the
  filter, B = the rest, Q_p the p-quantile of the filters' mean w². For Dense layers a filter is
  an output unit and its input units are the channels. ``sampler="exact"`` samples the joint
  distribution exactly (:func:`structured.sample_filter_spins`); ``"chromatic"`` (the default)
  runs the reference code's ``mcmc_steps`` two-colour sweeps from the deterministic state. The
  exact sampler costs O(n_A·n_B) per filter per step and measured slower than 50 sweeps on
  ResNet-20 (``benchmarks/overhead.py``), so it is opt-in. Deployment
  keeps the top (1 − p) filters by Σw², exactly round(p·F) pruned. Reference values: c = 1,
  β 10^−2.5 → 1.
  """

  name = "filter"

  def __init__(self, c=1.0, sampler="chromatic", mcmc_steps=50):
    self.c = _check_coupling(c)
    if sampler not in SAMPLERS:
      raise ValueError(f"Unknown sampler={sampler!r}; accepted values: {list(SAMPLERS)}.")
    if isinstance(mcmc_steps, (bool, np.bool_)) or not isinstance(
        mcmc_steps, numbers.Integral) or mcmc_steps < 1:
      raise ValueError(f"`mcmc_steps` must be an integer >= 1 (a Python or NumPy integer), got "
                       f"{mcmc_steps!r}.")
    self.sampler = sampler
    self.mcmc_steps = int(mcmc_steps)

  def sample_mask(self, weights, sparsity, beta, seed):
    weights, sparsity = tf.cast(weights, tf.float32), ranking.as_float64(sparsity)
    seed = tf.cast(seed, tf.int64)
    if self.sampler == "exact":
      return _filter_sample(weights, sparsity, tf.constant(self.c, tf.float64),
                            tf.cast(beta, tf.float64), seed)
    return _chromatic_sample(weights, sparsity, tf.constant(self.c, tf.float32),
                             tf.cast(beta, tf.float32), seed, tf.constant(self.mcmc_steps))

  def deterministic_mask(self, weights, sparsity):
    scores = tf.reduce_sum(tf.square(tf.cast(weights, tf.float32)), axis=[0, 1])
    keep = ranking.exact_count_keep_mask(scores, sparsity)
    return tf.broadcast_to(keep[None, None], weights.shape)

  def get_config(self):
    return {"c": self.c, "sampler": self.sampler, "mcmc_steps": self.mcmc_steps}


# The filter samplers below run as one XLA cluster each (Q_p, the uniforms, the sampler and the
# reshapes: 5-10 % faster than Q_p in a cluster of its own). Their uniforms are
# structured.hash_uniform, integer arithmetic that gives the same numbers inside and outside
# XLA, so a multi-replica model, which runs them without the cluster, draws the same masks as
# one device (tf.random.stateless_uniform drawn inside would not: XLA's generators give other
# numbers than the CPU kernels).


def _kernel_sample_unjitted(squared, threshold, coupling, beta, uniforms):
  """[n, C, F] mask of the kernel energy from w² and Q_p: the kernels as [C·F, n] rows, one
  uniform row of n + 1 per kernel."""
  n, c_in, filters = squared.shape
  fields = tf.reshape(tf.transpose(threshold - squared, [1, 2, 0]), [c_in * filters, n])
  keep = structured.sample_kernel_spins(fields, coupling, beta, uniforms)
  return tf.transpose(tf.reshape(keep, [c_in, filters, n]), [2, 0, 1])


def _filter_fields(squared, threshold):
  """The filter energy's fields b = Q_p − w² of colours A and B, as [F, n·C_A], [F, n·C_B]."""
  n, c_in, filters = squared.shape
  half = c_in // 2
  fields = tf.transpose(threshold - squared, [2, 0, 1])  # [F, n, C]
  return (tf.reshape(fields[:, :, :half], [filters, n * half]),
          tf.reshape(fields[:, :, half:], [filters, n * (c_in - half)]))


def _filter_mask(keep_a, keep_b, n):
  """Colour masks [F, n·C_A], [F, n·C_B] back to the [n, C, F] keep mask."""
  filters = keep_a.shape[0]
  keep = tf.concat([tf.reshape(keep_a, [filters, n, keep_a.shape[1] // n]),
                    tf.reshape(keep_b, [filters, n, keep_b.shape[1] // n])], axis=2)
  return tf.transpose(keep, [1, 2, 0])


def _filter_threshold(weights, sparsity):
  """(w², Q_p = quantile(mean w² per filter, p))."""
  squared = tf.square(weights)
  return squared, ranking.quantile_unjitted(tf.reduce_mean(squared, axis=[0, 1]), sparsity)


def _filter_sample_unjitted(weights, sparsity, coupling, beta, seed):
  """(mask [n, C, F], Q_p) of the filter energy by the exact sampler."""
  n, c_in, filters = weights.shape
  squared, threshold = _filter_threshold(weights, sparsity)
  fields_a, fields_b = _filter_fields(squared, threshold)
  uniforms = tf.cast(structured.hash_uniform(seed, 0, [filters, 1 + n * c_in]), tf.float64)
  keep_a, keep_b = structured.sample_filter_spins(fields_a, fields_b, coupling, beta, uniforms)
  return _no_pruning_if_zero(_filter_mask(keep_a, keep_b, n), sparsity), threshold


def _chromatic_sample_unjitted(weights, sparsity, coupling, beta, seed, sweeps):
  """(mask [n, C, F], Q_p) of the filter energy by the chromatic sampler, started from the
  deterministic state (filters with mean w² > Q_p kept)."""
  squared, threshold = _filter_threshold(weights, sparsity)
  fields_a, fields_b = _filter_fields(squared, threshold)
  start = tf.cast(tf.reduce_mean(squared, axis=[0, 1]) > threshold, tf.float32)[:, None]
  keep_a, keep_b = structured.sample_filter_chromatic(
      fields_a, fields_b, coupling, beta, seed, sweeps,
      tf.broadcast_to(start, fields_a.shape), tf.broadcast_to(start, fields_b.shape))
  mask = _filter_mask(keep_a, keep_b, squared.shape[0])
  return _no_pruning_if_zero(mask, sparsity), threshold


_kernel_sample = nested_xla(_kernel_sample_unjitted)
_filter_sample = nested_xla(_filter_sample_unjitted)
_chromatic_sample = nested_xla(_chromatic_sample_unjitted)

HAMILTONIANS = {
    cls.name: cls for cls in (UnstructuredHamiltonian, KernelHamiltonian, FilterHamiltonian)
}


def get_hamiltonian(name, **kwargs):
  """A new Hamiltonian by name with its own arguments (``c``, ``sampler``, ``mcmc_steps``).

  Raises ValueError naming the accepted values for an unknown name, and for an argument the
  named energy does not take (nothing is silently ignored).
  """
  if not isinstance(name, str) or name not in HAMILTONIANS:
    raise ValueError(
        f"Unknown hamiltonian={name!r}; accepted values: {sorted(HAMILTONIANS)}.")
  cls = HAMILTONIANS[name]
  accepted = set(cls.__init__.__code__.co_varnames[1:cls.__init__.__code__.co_argcount]) \
      if cls.__init__ is not Hamiltonian.__init__ else set()
  unexpected = sorted(set(kwargs) - accepted)
  if unexpected:
    raise ValueError(f"hamiltonian={name!r} takes no argument {unexpected}; it takes "
                     f"{sorted(accepted) or 'no arguments'}.")
  return cls(**kwargs)
