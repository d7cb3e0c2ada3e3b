"""Gibbs pruning (Labach & Valaee, arXiv 2006.04981): the Keras wrapper.

The maths (Hamiltonians, samplers, exact-count masks) lives in :mod:`tf_gibbs.core.gibbs`; this
module only connects it to a layer, the step counter and the schedule.
"""

import tensorflow as tf

from tf_gibbs import wrapper as wrapper_lib
from tf_gibbs._keras import keras
from tf_gibbs.core import allocation
from tf_gibbs.core import gibbs as gibbs_lib
from tf_gibbs.schedule import GibbsSchedule
from tf_gibbs.schedule import TF_MATH
from tf_gibbs.schedule import check_choice
from tf_gibbs.schedule import check_number

TEST_MODES = ("magnitude", "sample")
ALLOCATIONS = ("per_layer", "network")


def check_allocation(allocation_name, frequency, budget_group=None):
  """Validates the network-wide budget's arguments (both fronts, Gibbs and L0)."""
  check_choice(allocation_name, "allocation", ALLOCATIONS)
  frequency = int(check_number(frequency, "allocation_frequency", 1, integer=True))
  if budget_group is not None and not isinstance(budget_group, str):
    raise TypeError(f"`budget_group` must be None or a string, got {budget_group!r}.")
  return frequency


def check_test_mode(test_mode):
  if test_mode not in TEST_MODES:
    raise ValueError(f"Unknown test_mode={test_mode!r}; accepted values: {list(TEST_MODES)}.")
  return test_mode


LAYOUT_OF = {
    keras.layers.Dense: "dense",
    keras.layers.Conv1D: "conv",
    keras.layers.Conv2D: "conv",
    keras.layers.DepthwiseConv2D: "depthwise",
}


def layer_misfit(energy, layer):
  """None if the Hamiltonian ``energy`` applies to ``layer``, else the reason it does not."""
  return energy.check_layout(LAYOUT_OF[type(layer)])


def make_hamiltonian(hamiltonian, c=None, sampler=None, mcmc_steps=None):
  """The energy named ``hamiltonian`` with the arguments that were given (None = its default)."""
  given = {k: v for k, v in (("c", c), ("sampler", sampler), ("mcmc_steps", mcmc_steps))
           if v is not None}
  return gibbs_lib.get_hamiltonian(hamiltonian, **given)


def target_groups(view, layout, hamiltonian, schedule):
  """(groups the per-layer target counts, their name, the largest target of ``schedule``) for
  a kernel of canonical ``view`` (n, C, F): both fronts' Gibbs wrappers."""
  n, channels, filters = view
  what = "units" if layout == "dense" else "filters"
  groups = {"unstructured": (n * channels * filters, "weights"),
            "kernel": (channels * filters, "kernels"), "filter": (filters, what)}
  return groups[hamiltonian] + (max(schedule.target_sparsity, schedule.initial_sparsity),)


def check_gibbs_schedule(schedule, argument="schedule"):
  if not isinstance(schedule, GibbsSchedule):
    raise TypeError(f"`{argument}` of Gibbs pruning must be a tf_gibbs.GibbsSchedule (it also "
                    f"anneals β), got {type(schedule).__name__}.")
  return schedule


@keras.utils.register_keras_serializable(package="tf_gibbs")
class GibbsPruning(wrapper_lib.PruningWrapper):
  """Prunes a layer's kernel with masks drawn from a Gibbs distribution.

  Training step t: β = schedule.beta(t), p = schedule.sparsity(t), and a fresh mask
  x ~ p(x) ∝ exp(−β H(x; w)) is drawn for the whole batch; the layer computes with w ⊙ x.
  No gradient flows through x, so the task gradient reaches only the kept weights, while the
  kernel variable stays unmasked and pruned weights can return (reference behaviour).

  Inference: ``test_mode="magnitude"`` keeps the top (1 − p) by magnitude, exactly
  round(p·n) pruned, p the Python number of the schedule rounded once in float64, and never all
  n: a layer keeps at least one group (a warning names the layer when round(p·n) = n had to be
  capped to n − 1). Deterministic; what stripping writes. ``test_mode="sample"`` draws a new
  mask at the current β on every call, like the reference code's 'gibbs' test mode.

  Args:
    layer: tf_keras Dense, Conv1D, Conv2D or DepthwiseConv2D.
    pruning_schedule: a :class:`tf_gibbs.GibbsSchedule` (default: ``GibbsSchedule()``).
    hamiltonian: ``"unstructured"``, ``"kernel"`` (convolutions) or ``"filter"`` (filters of
      convolutions, output units of Dense layers). The kernel energy's linear term acts on ±1
      spins (the reference's energy as written), so at c = 0 it keeps a weight with
      probability σ(2β(w² − Q_p)): the unstructured energy's at twice the β. The chromatic
      filter sampler's magnetization of colour B uses its true size n·(C_in − ⌊C_in/2⌋) (the
      reference code uses ⌊C_in/2⌋·n, which differs for odd C_in).
    test_mode: ``"magnitude"`` or ``"sample"``.
    c: coupling of the kernel (default 0.01) or filter (default 1.0) energy.
    sampler: filter energy only: ``"chromatic"`` (reference MCMC, default) or ``"exact"``
      (give it ``GibbsSchedule.reference("filter", ..., sampler="exact")``: the reference β
      ramp, which ends at β = 1, never reaches the target with exact samples). Its cost grows
      with the filters' fan-in: on MobileNetV2 (32×32, batch 8) a step took 26× tfmot's,
      against 2× with the chromatic sampler (docs/benchmarks.md).
    mcmc_steps: sweeps of the chromatic sampler (default 50).
    seed: seed of the layer's stateless random stream (mask of step t depends on (seed, t)).
    allocation: ``"per_layer"`` (default, the paper: every layer prunes round(p·n) of its n
      groups) or ``"network"``: the wrappers of one ``budget_group`` prune round(p·N) of their
      N weights together, split between layers by LAMP scores (:mod:`tf_gibbs.core.allocation`);
      the layer then samples and masks at its share p_l · p(t) / p_T (``allocated_sparsity``
      holds p_l), recomputed every ``allocation_frequency`` steps and at ``end_step``.
    allocation_frequency: steps between two allocations (default 100), ≥ 1.
    budget_group: name shared by the layers of one network-wide budget (``prune_gibbs`` sets
      it).
  """

  def __init__(self, layer, pruning_schedule=None, hamiltonian="unstructured",
               test_mode="magnitude", c=None, sampler=None, mcmc_steps=None, seed=None,
               allocation="per_layer", allocation_frequency=100, budget_group=None, **kwargs):
    if pruning_schedule is None:
      pruning_schedule = GibbsSchedule()
    check_gibbs_schedule(pruning_schedule, "pruning_schedule")
    energy = make_hamiltonian(hamiltonian, c=c, sampler=sampler, mcmc_steps=mcmc_steps)
    check_test_mode(test_mode)
    self.allocation_frequency = check_allocation(allocation, allocation_frequency, budget_group)
    self.allocation = allocation
    self.budget_group = budget_group
    super().__init__(layer, pruning_schedule=pruning_schedule, seed=seed, **kwargs)
    self.layout = LAYOUT_OF[type(self.layer)]
    reason = layer_misfit(energy, self.layer)
    if reason is not None:
      raise ValueError(f"hamiltonian={hamiltonian!r} does not fit layer {self.layer.name} "
                       f"({type(self.layer).__name__}): {reason}")
    self.hamiltonian = energy.name
    self.test_mode = test_mode
    self._energy = energy

  def build_method_variables(self, weight):
    self._view = gibbs_lib.canonical_shape(weight.shape, self.layout)
    if self.allocation == "network":
      self.build_allocation()

  def target_groups(self):
    if self.allocation == "network":
      return None  # the network's budget keeps a group in every layer (core.allocation)
    return target_groups(self._view, self.layout, self.hamiltonian, self.pruning_schedule)

  # --- the network-wide budget ------------------------------------------------------------------

  def network_groups(self):
    return allocation.group_count(self._view, self.hamiltonian)

  def budget_energies(self):
    return allocation.group_energies(tf.reshape(self.read_weight(), self._view),
                                     allocation.group_axes(self.hamiltonian), TF_MATH)

  def _refresh(self, step):
    schedule = self.pruning_schedule
    return allocation.refresh(step, schedule.begin_step, schedule.end_step,
                              self.allocation_frequency, TF_MATH)

  def update_allocation(self, step):
    """Recomputes this layer's share of the network's budget where the schedule says so."""
    return self.allocated_sparsity.assign(self.network_share(self._refresh(step)))

  def sparsity(self, step):
    """(should_prune, this layer's pruned fraction at ``step``)."""
    should_prune, sparsity = self.pruning_schedule(step)
    if self.allocation == "network":
      sparsity = allocation.layer_sparsity(self.allocated_sparsity, sparsity,
                                           self.pruning_schedule.target_sparsity, TF_MATH)
    return should_prune, sparsity

  def beta(self, step=None):
    """Inverse temperature at ``step`` (default: the layer's current step)."""
    step = self.pruning_step if step is None else step
    return self.pruning_schedule.beta(step)

  @staticmethod
  def _layer_mask(mask, weight, should_prune):
    """The energy's [n, C, F] mask back in the kernel's shape; all ones before begin_step."""
    mask = tf.reshape(mask, tf.shape(weight))
    return tf.maximum(mask, tf.cast(tf.logical_not(should_prune), mask.dtype))  # {0, 1} mask

  def _sample(self, weight, step, seed):
    should_prune, sparsity = self.sparsity(step)
    mask, threshold = self._energy.sample_mask(tf.reshape(weight, self._view), sparsity,
                                               self.beta(step), seed)
    return self._layer_mask(mask, weight, should_prune), threshold

  def training_weight(self, weight, step):
    seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
    if self.allocation == "network":
      with tf.control_dependencies([self.update_allocation(step)]):
        weight = tf.identity(weight)
    mask, threshold = self._sample(weight, step, seed)
    mask = tf.stop_gradient(mask)
    self.mask.assign(mask)
    self.threshold.assign(threshold)
    return weight * mask

  def deterministic_mask(self, weight, step):
    """The β → ∞ mask at ``step``: exactly round(p·#groups) groups pruned (ones before begin)."""
    should_prune, sparsity = self.sparsity(step)
    mask = self._energy.deterministic_mask(tf.reshape(weight, self._view), sparsity)
    return self._layer_mask(mask, weight, should_prune)

  def deterministic_weight(self, weight, step):
    return weight * self.deterministic_mask(weight, step)

  def inference_weight(self, weight, step):
    if self.test_mode == "magnitude":
      return self.deterministic_weight(weight, step)
    seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    mask, _ = self._sample(weight, step, seed)
    return weight * mask

  def write_final_weight(self):
    """Once the schedule is over: kernel ← kernel ⊙ final mask, and the mask variable ← final
    mask (so ``PruningSummaries`` reports the deployed sparsity). Idempotent."""
    finished = self.schedule_finished()
    weight = self.read_weight()
    final_mask = self.deterministic_mask(weight, tf.identity(self.pruning_step))
    variable = self.prunable_weights[0]
    return tf.group(
        variable.assign(tf.cast(tf.where(finished, weight * final_mask, weight), variable.dtype)),
        self.mask.assign(tf.where(finished, final_mask, self.mask)))

  def get_config(self):
    config = super().get_config()
    config.update({"hamiltonian": self.hamiltonian, "test_mode": self.test_mode,
                   "allocation": self.allocation,
                   "allocation_frequency": self.allocation_frequency,
                   "budget_group": self.budget_group})
    config.update(self._energy.get_config())
    return config
