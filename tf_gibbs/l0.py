"""L0 gates (DiffPrune-style, on Louizos et al.'s hard-concrete gates): the Keras wrapper.

The gate transform, its L0 surrogate and its distribution live in :mod:`tf_gibbs.core.l0`; this
module connects them to a layer, the step counter, the loss and the budget controller.
"""

import math

import tensorflow as tf

from tf_gibbs import wrapper as wrapper_lib
from tf_gibbs._keras import keras
from tf_gibbs.core import allocation
from tf_gibbs.core import gibbs as gibbs_core
from tf_gibbs.core import l0 as l0_core
from tf_gibbs.gibbs import ALLOCATIONS
from tf_gibbs.gibbs import LAYOUT_OF
from tf_gibbs.schedule import L0Schedule
from tf_gibbs.schedule import TF_MATH
from tf_gibbs.schedule import check_choice
from tf_gibbs.schedule import check_number

MODES = ("deterministic", "stochastic")
GATE_ARGUMENTS = ("temperature", "gate_lr_multiplier", "initial_log_alpha")
_ONLY_FIRST = tf.VariableAggregation.ONLY_FIRST_REPLICA


def check_mode(mode):
  return check_choice(mode, "mode", MODES)


def check_l0_schedule(schedule, argument="schedule"):
  if not isinstance(schedule, L0Schedule):
    raise TypeError(f"`{argument}` of L0 gates must be a tf_gibbs.L0Schedule (it sets the "
                    f"penalty strength and budget), got {type(schedule).__name__}.")
  return schedule


def check_network_allocation(allocation_name, schedule, budget_group=None):
  """L0's ``allocation`` (both fronts): ``"network"`` ranks the gates of one budget together,
  so it needs the schedule's budget."""
  check_choice(allocation_name, "allocation", ALLOCATIONS)
  if allocation_name == "network" and not schedule.has_budget:
    raise ValueError("allocation='network' splits a sparsity budget between layers: give "
                     "`target_sparsity` (or an L0Schedule with target_sparsity).")
  if budget_group is not None and not isinstance(budget_group, str):
    raise TypeError(f"`budget_group` must be None or a string, got {budget_group!r}.")
  return allocation_name


def layer_misfit(granularity, layer):
  """None if gates of ``granularity`` apply to ``layer``, else the reason they do not."""
  return l0_core.granularity_misfit(granularity, LAYOUT_OF[type(layer)])


class PenaltyGroup:
  """The wrappers whose L0 penalties share one normalizer (the weights they gate together).

  Deliberately not a list: Keras tracks a list of layers stored on a layer as sublayers, and the
  ``.keras`` saver walks every list attribute, so each wrapper would save (and expect to load)
  the others' variables under its own path.
  """

  def __init__(self, members=None):
    self.members = list(members or [])


@keras.utils.register_keras_serializable(package="tf_gibbs")
class L0Gates(wrapper_lib.PruningWrapper):
  """Multiplies a layer's kernel by trainable, approximately binary gates with exact zeros.

  Effective kernel w ⊙ z, one gate z per weight / kernel / filter / unit (``granularity``), with
  z = clip((ζ − γ) σ(log α) + γ, 0, 1) in deterministic mode or the hard-concrete sample in
  stochastic mode (:mod:`tf_gibbs.core.l0`; DiffPrune's own formula is not available, this
  transform is our documented choice). The loss gets λ · (expected number of nonzero gated
  weights) / (number of gated weights in the model), through ``add_loss``; λ follows the
  :class:`tf_gibbs.L0Schedule`, times a controller factor in budget mode.

  log α is stored as θ = log α / ``gate_lr_multiplier`` and used through
  :func:`tf_gibbs.core.l0.scaled_parameter`, so the gates learn ``gate_lr_multiplier`` times as
  fast as the weights with any optimizer. Inference and stripping use the deterministic gate.
  From the schedule's ``end_step`` on the gates are frozen (their last deterministic values are
  kept in ``mask``) and the weights fine-tune under them; at the next epoch end the callback
  folds them into the kernel (kernel ← kernel ⊙ z, mask ← 1[z > 0]).

  Args:
    layer: tf_keras Dense, Conv1D, Conv2D or DepthwiseConv2D.
    pruning_schedule: a :class:`tf_gibbs.L0Schedule` (default ``L0Schedule()``).
    granularity: ``"weight"``, ``"kernel"`` (Conv1D/Conv2D kernels), ``"filter"`` (conv output
      channels), ``"unit"`` (Dense output units) or ``"input_unit"`` (Dense input units).
    mode: ``"deterministic"`` or ``"stochastic"``.
    temperature: T of the hard-concrete noise and of the L0 surrogate, > 0 (default 2/3).
    gate_lr_multiplier: how much faster than the weights the gates learn, > 0 (default 50: with
      Adam at 1e-3 a gate crosses from open, log α = log 11, to closed, −log 11, in about 100
      steps; at 10 it took ~500 steps, and on the digits CNN the budget then closed 99 % of the
      gates in a rush late in the ramp: 72 % accuracy against 88 % at 50).
    initial_log_alpha: starting log α of every gate (default 3.0: z = 1, the model is
      unchanged when wrapped).
    penalty_normalizer: number of gated weights the penalty is divided by; None = all the
      weights gated by the same ``prune_l0`` call (this layer's own when wrapped alone).
    seed: seed of the stateless noise of stochastic mode (gates of step t depend on (seed, t)).
    allocation: ``"per_layer"`` (default: each layer's budget is round(s·n) of its n gates) or
      ``"network"`` (budget mode only): the budget's ranking runs over all gates of the
      ``budget_group``, round(s·N) of the N gated weights together, split between layers by
      LAMP scores of the gated magnitudes (:mod:`tf_gibbs.core.allocation`) at every re-ranking
      step; ``allocated_sparsity`` holds the layer's share.
    budget_group: name shared by the layers of one network-wide budget (``prune_l0`` sets it).
  """

  def __init__(self, layer, pruning_schedule=None, granularity="weight", mode="deterministic",
               temperature=l0_core.TEMPERATURE, gate_lr_multiplier=50.0, initial_log_alpha=3.0,
               penalty_normalizer=None, seed=None, allocation="per_layer", budget_group=None,
               **kwargs):
    if pruning_schedule is None:
      pruning_schedule = L0Schedule()
    check_l0_schedule(pruning_schedule, "pruning_schedule")
    check_mode(mode)
    l0_core.check_granularity(granularity)
    self.temperature = float(check_number(temperature, "temperature", 0.0, False))
    self.gate_lr_multiplier = float(
        check_number(gate_lr_multiplier, "gate_lr_multiplier", 0.0, False))
    self.initial_log_alpha = float(check_number(initial_log_alpha, "initial_log_alpha"))
    if penalty_normalizer is not None:
      penalty_normalizer = int(
          check_number(penalty_normalizer, "penalty_normalizer", 1, integer=True))
    self.penalty_normalizer = penalty_normalizer
    self.allocation = check_network_allocation(allocation, pruning_schedule, budget_group)
    self.budget_group = budget_group
    super().__init__(layer, pruning_schedule=pruning_schedule, seed=seed, **kwargs)
    reason = layer_misfit(granularity, self.layer)
    if reason is not None:
      raise ValueError(f"granularity={granularity!r} does not fit layer {self.layer.name} "
                       f"({type(self.layer).__name__}): {reason}")
    self.granularity = granularity
    self.mode = mode
    self.layout = LAYOUT_OF[type(self.layer)]
    # Wrappers that share one penalty normalizer (prune_l0 puts all of its wrappers in one).
    self.penalty_group = PenaltyGroup([self])

  # Deterministic mode keeps log α within this margin of the clip points: the straight-through
  # gradient would otherwise let gates drift far beyond them, and a gate far above log 11 takes
  # hundreds of steps to close when the budget asks for it.
  LOG_ALPHA_MARGIN = 1.0

  # --- variables --------------------------------------------------------------------------------

  def build_method_variables(self, weight):
    self._view = gibbs_core.canonical_shape(weight.shape, self.layout)
    shape = l0_core.group_shape(self._view, self.granularity)
    self.gate_parameter = self.add_weight(
        "gate_parameter", shape=shape, dtype=tf.float32, trainable=True,
        initializer=keras.initializers.Constant(self.initial_log_alpha / self.gate_lr_multiplier),
        constraint=self._constraint())
    self.log_penalty_factor = self.add_weight(
        "log_penalty_factor", shape=[], dtype=tf.float32, initializer="zeros", trainable=False,
        aggregation=_ONLY_FIRST)
    if self.pruning_schedule.has_budget:
      # 1 for the gates the budget pushes towards 0 (see _budget_targets), re-ranked every
      # schedule.frequency steps.
      self.budget_targets = self.add_weight(
          "budget_targets", shape=shape, dtype=tf.float32, initializer="zeros",
          trainable=False, aggregation=_ONLY_FIRST)
    if self.allocation == "network":
      self.build_allocation()
    self.add_loss(self.group_penalty)

  def _constraint(self):
    if self.mode != "deterministic":
      return None
    low = (l0_core.CLOSED_LOG_ALPHA - self.LOG_ALPHA_MARGIN) / self.gate_lr_multiplier
    high = (l0_core.OPEN_LOG_ALPHA + self.LOG_ALPHA_MARGIN) / self.gate_lr_multiplier
    return lambda value: tf.clip_by_value(value, low, high)

  def method_state(self):
    return [self.log_penalty_factor]

  GROUP_NAMES = {"weight": "weights", "kernel": "kernels", "filter": "filters", "unit": "units",
                 "input_unit": "input units"}

  def target_groups(self):
    if not self.pruning_schedule.has_budget or self.allocation == "network":
      return None
    return (math.prod(self.gate_parameter.shape), self.GROUP_NAMES[self.granularity],
            self.pruning_schedule.target_sparsity)

  @property
  def gated_weights(self):
    """Number of weights this layer gates (a Python int)."""
    return math.prod(self._view)

  def normalizer(self):
    """The number of gated weights the penalty is divided by (a Python int)."""
    if self.penalty_normalizer is not None:
      return self.penalty_normalizer
    members = self.penalty_group.members
    if all(w.built for w in members):
      return sum(w.gated_weights for w in members)
    return self.gated_weights

  @property
  def log_alpha(self):
    """log α of every gate, shape broadcastable to the [n, C, F] view (a tensor)."""
    return l0_core.scaled_parameter(self.gate_parameter, self.gate_lr_multiplier)

  def gates(self, deterministic=True, seed=None):
    """The gate tensor (group shape): deterministic, or one stochastic sample for ``seed``."""
    if deterministic:
      return l0_core.deterministic_gate(self.log_alpha,
                                        straight_through=self.mode == "deterministic")
    return l0_core.stochastic_gate(self.log_alpha, seed, self.temperature)

  def _budget_targets(self, weight, gates, sparsity):
    """The round(s·#gates) gates of smallest gated magnitude (:func:`l0_core.budget_targets`)."""
    importance = l0_core.group_importance(tf.reshape(weight, self._view), gates)
    return l0_core.budget_targets(importance, sparsity)

  def _apply(self, weight, gates):
    return tf.reshape(tf.reshape(weight, self._view) * gates, tf.shape(weight))

  # --- hooks ------------------------------------------------------------------------------------

  def _targets_and_factor(self):
    budget = self.pruning_schedule.has_budget
    return (tf.convert_to_tensor(self.budget_targets) if budget else tf.zeros([]),
            tf.convert_to_tensor(self.log_penalty_factor))

  # --- the network-wide budget ------------------------------------------------------------------

  def network_groups(self):
    groups = math.prod(self.gate_parameter.shape)
    return groups, self.gated_weights // groups

  def budget_energies(self):
    """The gated magnitudes the budget ranks (:func:`l0_core.group_importance`), flattened."""
    gates = l0_core.deterministic_gate(self.log_alpha, straight_through=False)
    return tf.reshape(l0_core.group_importance(tf.reshape(self.read_weight(), self._view),
                                               gates), [-1])

  def _layer_sparsity(self, step):
    """This layer's budget at ``step`` under the network's (None per layer), after updating its
    share at the re-ranking steps."""
    if self.allocation != "network":
      return None
    schedule = self.pruning_schedule
    allocated = self.allocated_sparsity.assign(self.network_share(schedule.rerank(step)))
    return allocation.layer_sparsity(allocated, schedule.sparsity(step),
                                     schedule.target_sparsity, TF_MATH)

  def training_weight(self, weight, step):
    targets, log_factor = self._targets_and_factor()
    sparsity = self._layer_sparsity(step)
    noise = None
    if self.mode != "deterministic":
      seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
      noise = l0_core.gate_noise(self.gate_parameter.shape, seed)
    gated, mask, targets, log_factor = l0_core.training_step(
        weight, tf.identity(self.mask), tf.convert_to_tensor(self.gate_parameter), targets,
        log_factor, step, noise, schedule=self.pruning_schedule, view=self._view,
        scale=self.gate_lr_multiplier, temperature=self.temperature, sparsity=sparsity)
    updates = [self.mask.assign(mask)]
    if self.pruning_schedule.has_budget:
      updates += [self.budget_targets.assign(targets), self.log_penalty_factor.assign(log_factor)]
    with tf.control_dependencies(updates):
      return tf.identity(gated)

  def deterministic_weight(self, weight, step):
    should_prune, _ = self.pruning_schedule(step)
    gates = l0_core.deterministic_gate(self.log_alpha, straight_through=False)
    gated = tf.where(self.schedule_finished(step), weight * self.mask, self._apply(weight, gates))
    return tf.where(should_prune, gated, weight)

  def _penalty_arguments(self):
    """This layer's part of :func:`tf_gibbs.core.l0.group_penalty`."""
    targets, log_factor = self._targets_and_factor()
    group_size = self.gated_weights // math.prod(self.gate_parameter.shape)
    return (tf.convert_to_tensor(self.gate_parameter), targets, log_factor,
            tf.constant(group_size / self.normalizer(), tf.float32))

  def _penalty_key(self):
    """What members must share to have one penalty computation."""
    return (type(self), self.pruning_schedule.get_config(), self.gate_lr_multiplier,
            self.temperature)

  def penalty(self):
    """This layer's λ(step) · Σ_gates size · P(z > 0) / normalizer; 0 once the gates are frozen.

    Budget mode: only the open gates among ``budget_targets`` (the round(s · n) gates of
    smallest gated magnitude, :func:`tf_gibbs.core.l0.budget_targets`, ranked by the training
    step every ``schedule.frequency`` steps) are penalized, and the gradient is multiplied by
    the controller's exp(μ).
    """
    return self._penalty_of([self])

  def group_penalty(self):
    """The loss term this layer adds: the penalties of its whole penalty group (the wrappers of
    one ``prune_l0`` call, when they share schedule and gate settings), computed by the group's
    first member in one :func:`tf_gibbs.core.l0.group_penalty`; 0 from the other members. A
    member that does not share the settings adds its own :meth:`penalty`."""
    members = [m for m in self.penalty_group.members
               if m.built and m._penalty_key() == self._penalty_key()]  # pylint: disable=protected-access
    if self not in members:
      return self.penalty()
    if members[0] is not self:
      return tf.constant(0.0)
    return self._penalty_of(members)

  def _penalty_of(self, members):
    parameters, targets, log_factors, coefficients = zip(
        *[m._penalty_arguments() for m in members])  # pylint: disable=protected-access
    return l0_core.group_penalty(
        parameters, targets, log_factors, tf.convert_to_tensor(self.pruning_step), coefficients,
        schedule=self.pruning_schedule, scale=self.gate_lr_multiplier,
        temperature=self.temperature)

  def write_final_weight(self):
    """Once the gates are frozen: kernel ← kernel ⊙ z, mask ← 1[z > 0] (idempotent)."""
    finished = self.schedule_finished()
    weight = self.read_weight()
    mask = tf.identity(self.mask)
    variable = self.prunable_weights[0]
    return tf.group(
        variable.assign(tf.cast(tf.where(finished, weight * mask, weight), variable.dtype)),
        self.mask.assign(tf.where(finished, tf.cast(mask != 0.0, tf.float32), mask)))

  def get_config(self):
    config = super().get_config()
    config.update({
        "granularity": self.granularity,
        "mode": self.mode,
        "temperature": self.temperature,
        "gate_lr_multiplier": self.gate_lr_multiplier,
        "initial_log_alpha": self.initial_log_alpha,
        "penalty_normalizer": self.normalizer() if self.built else self.penalty_normalizer,
        "allocation": self.allocation,
        "budget_group": self.budget_group,
    })
    return config
