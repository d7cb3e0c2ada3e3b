"""Gibbs pruning (Labach & Valaee, arXiv 2006.04981) on Keras 3: the wrapper.

The maths is :mod:`tf_gibbs.core.neutral` (backend-neutral); the Hamiltonians' arguments and
checks are the tf_keras front's (:mod:`tf_gibbs.gibbs`), so both take the same arguments.
"""

import functools
import math

import keras
from keras import ops

from tf_gibbs import gibbs as gibbs_front
from tf_gibbs.core import allocation
from tf_gibbs.core import gibbs as gibbs_core
from tf_gibbs.core import neutral
from tf_gibbs.keras3 import wrapper as wrapper_lib
from tf_gibbs.schedule import GibbsSchedule
from tf_gibbs.schedule import KERAS_MATH


def _sample_view(view, sparsity, beta, seed, step, *, hamiltonian, c, sampler, sweeps):
  """(mask, Q_p) of one Gibbs sample on the [n, C, F] view (:mod:`tf_gibbs.core.neutral`)."""
  if hamiltonian == "unstructured":
    return neutral.unstructured_sample(view, sparsity, beta,
                                       neutral.hash_uniform(seed, step, 0, view.shape))
  if hamiltonian == "kernel":
    return neutral.kernel_sample(view, sparsity, beta, c, seed, step)
  return neutral.filter_sample(view, sparsity, beta, c, seed, step, sampler, sweeps)


@functools.lru_cache(maxsize=None)
def _sampler(backend, hamiltonian, c, sampler, sweeps, large=False):
  """:func:`_sample_view` for one energy; on TensorFlow the kernel and filter samplers, and the
  unstructured one on ``large`` kernels, run as one XLA cluster.

  Keras compiles a TensorFlow model without XLA on a machine without GPU (``jit_compile="auto"``),
  and there the structured samplers' dozens of small ops per layer, run one by one, cost 1.2x
  (kernel) and 1.5x (chromatic filter) the dense step of ResNet-20 (benchmarks/keras3_overhead.py);
  fused, 1.13x. The same neutral code runs in the cluster (no second implementation); its hash
  uniforms are integer arithmetic, equal inside and outside XLA. The unstructured sampler is
  fused from :data:`tf_gibbs.core.neutral.RADIX_SELECT_FROM` weights on (``large``), where its
  quantile is a radix select: on MobileNetV2's 53 kernels its samples take 20 ms a step instead
  of 39 ms, and 4.2 s instead of 5.7 s to trace and compile (fusing the small ones too: 26 ms,
  their sorts and launches cost more in XLA). Inside an outer ``jit_compile=True`` step, and
  under a multi-replica strategy, the cluster is called inline
  (:func:`tf_gibbs.core.xla.nested_xla`). Cached: all layers share one function per energy,
  traced once per weight shape.
  """

  def sample(view, sparsity, beta, seed, step):
    return _sample_view(view, sparsity, beta, seed, step, hamiltonian=hamiltonian, c=c,
                        sampler=sampler, sweeps=sweeps)

  if backend != "tensorflow" or (hamiltonian == "unstructured" and not large):
    return sample
  from tf_gibbs.core import xla  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  return xla.nested_xla(sample)


@keras.saving.register_keras_serializable(package="tf_gibbs")
class GibbsPruning(wrapper_lib.PruningWrapper):
  """Prunes a Keras 3 layer's kernel with masks drawn from a Gibbs distribution.

  Training step t: β = schedule.beta(t), p = schedule.sparsity(t), and a fresh mask
  x ~ p(x) ∝ exp(−β H(x; w)) (methods.md §1) is drawn; the layer computes with w ⊙ x (no
  gradient through x). Inference (``test_mode="magnitude"``) and stripping use the exact-count
  mask: min(round(p·n), n − 1) groups of smallest Σw² pruned. Same arguments and meaning as
  :class:`tf_gibbs.GibbsPruning` (tf_keras), including ``allocation="network"`` (one budget
  over a ``budget_group``, split by LAMP scores: :mod:`tf_gibbs.core.allocation`); the uniforms
  are :func:`tf_gibbs.core.neutral.hash_uniform` of (seed, step), identical on every backend.
  """

  def __init__(self, layer, pruning_schedule=None, hamiltonian="unstructured",
               test_mode="magnitude", c=None, sampler=None, mcmc_steps=None, seed=None,
               allocation="per_layer", allocation_frequency=100, budget_group=None, **kwargs):
    if pruning_schedule is None:
      pruning_schedule = GibbsSchedule()
    pruning_schedule = wrapper_lib.schedule_from_config(pruning_schedule)
    gibbs_front.check_gibbs_schedule(pruning_schedule, "pruning_schedule")
    energy = gibbs_front.make_hamiltonian(hamiltonian, c=c, sampler=sampler,
                                          mcmc_steps=mcmc_steps)
    gibbs_front.check_test_mode(test_mode)
    self.allocation_frequency = gibbs_front.check_allocation(allocation, allocation_frequency,
                                                             budget_group)
    self.allocation = allocation
    self.budget_group = budget_group
    super().__init__(layer, pruning_schedule=pruning_schedule, seed=seed, **kwargs)
    reason = energy.check_layout(self.layout)
    if reason is not None:
      raise ValueError(f"hamiltonian={hamiltonian!r} does not fit layer {self.layer.name} "
                       f"({type(self.layer).__name__}): {reason}")
    self.hamiltonian = energy.name
    self.test_mode = test_mode
    self._energy = energy
    if test_mode == "sample":
      self._sample_seeds = keras.random.SeedGenerator(self.seed)

  def build_method_variables(self, weight):
    self._view = gibbs_core.canonical_shape(weight.shape, self.layout)
    if self.allocation == "network":
      self.build_allocation()

  def target_groups(self):
    if self.allocation == "network":
      return None  # the network's budget keeps a group in every layer (core.allocation)
    return gibbs_front.target_groups(self._view, self.layout, self.hamiltonian,
                                     self.pruning_schedule)

  # --- the network-wide budget ------------------------------------------------------------------

  def _refresh(self, step):
    schedule = self.pruning_schedule
    return allocation.refresh(step, schedule.begin_step, schedule.end_step,
                              self.allocation_frequency, KERAS_MATH)

  def network_groups(self):
    return allocation.group_count(self._view, self.hamiltonian)

  def budget_energies(self):
    return allocation.group_energies(ops.reshape(self.read_weight(), self._view),
                                     allocation.group_axes(self.hamiltonian), KERAS_MATH)

  def _exact_target(self):
    """The Python target whose count is computed in Python (:func:`neutral.pruned_count`);
    none for a network share, which is a count over the layer's groups already."""
    return None if self.allocation == "network" else self.pruning_schedule.target_sparsity

  def sparsity(self, step, allocated=None):
    """(should_prune, this layer's pruned fraction at ``step``); ``allocated``: its network
    share if not the stored one."""
    should_prune, sparsity = self.pruning_schedule(step, KERAS_MATH)
    if self.allocation == "network":
      if allocated is None:
        allocated = self.read_state(self.allocated_sparsity)
      sparsity = allocation.layer_sparsity(allocated, sparsity,
                                           self.pruning_schedule.target_sparsity, KERAS_MATH)
    return should_prune, sparsity

  def beta(self, step=None):
    step = self.pruning_step.value if step is None else step
    return self.pruning_schedule.beta(step, KERAS_MATH)

  def _sample(self, weight, step, seed, allocated=None):
    should_prune, sparsity = self.sparsity(step, allocated)
    energy = self._energy
    sample = _sampler(keras.backend.backend(), self.hamiltonian, getattr(energy, "c", None),
                      getattr(energy, "sampler", None), getattr(energy, "mcmc_steps", None),
                      math.prod(self._view) >= neutral.RADIX_SELECT_FROM)
    # Tensors only (a Python number would retrace the fused sampler per value).
    mask, threshold = sample(ops.reshape(weight, self._view),
                             ops.convert_to_tensor(sparsity),
                             ops.convert_to_tensor(self.beta(step), "float32"),
                             ops.convert_to_tensor(seed, "int32"),
                             ops.convert_to_tensor(step, "int32"))
    return self._layer_mask(mask, weight, should_prune), threshold

  @staticmethod
  def _layer_mask(mask, weight, should_prune):
    mask = ops.reshape(mask, ops.shape(weight))
    return ops.maximum(mask, ops.cast(ops.logical_not(should_prune), "float32"))

  def training_weight(self, weight, step):
    allocated = None
    if self.allocation == "network":
      allocated = self.network_share(self._refresh(step))
      self.allocated_sparsity.assign(allocated)
    mask, threshold = self._sample(weight, step, self.seed, allocated)
    mask = ops.stop_gradient(mask)
    self.mask.assign(mask)
    self.threshold.assign(threshold)
    return weight * mask

  def deterministic_mask(self, weight, step):
    """The β → ∞ mask at ``step``: exactly min(round(p·#groups), #groups − 1) pruned."""
    should_prune, sparsity = self.sparsity(step)
    mask = neutral.deterministic_mask(self.hamiltonian, ops.reshape(weight, self._view),
                                      sparsity, exact=self._exact_target())
    return self._layer_mask(mask, weight, should_prune)

  def deterministic_weight(self, weight, step):
    return weight * self.deterministic_mask(weight, step)

  def inference_weight(self, weight, step):
    if self.test_mode == "magnitude":
      return self.deterministic_weight(weight, step)
    seed = keras.random.randint((), 0, 2**31 - 1, seed=self._sample_seeds, dtype="int32")
    mask, _ = self._sample(weight, step, seed)
    return weight * mask

  def get_config(self):
    config = super().get_config()
    config.update({"hamiltonian": self.hamiltonian, "test_mode": self.test_mode,
                   "allocation": self.allocation,
                   "allocation_frequency": self.allocation_frequency,
                   "budget_group": self.budget_group})
    config.update(self._energy.get_config())
    return config
