"""L0 gates (DiffPrune-style deterministic or Louizos' hard-concrete) on Keras 3: the wrapper.

The maths is :mod:`tf_gibbs.core.neutral`; the arguments and their checks are the tf_keras
front's (:mod:`tf_gibbs.l0`).
"""

import math

import keras
from keras import ops

from tf_gibbs import l0 as l0_front
from tf_gibbs.core import allocation
from tf_gibbs.core import gibbs as gibbs_core
from tf_gibbs.core import l0 as l0_core
from tf_gibbs.core import neutral
from tf_gibbs.keras3 import wrapper as wrapper_lib
from tf_gibbs.schedule import KERAS_MATH
from tf_gibbs.schedule import L0Schedule
from tf_gibbs.schedule import check_number


class _Clip(keras.constraints.Constraint):
  """Projects a variable into [low, high] after each optimizer update."""

  def __init__(self, low, high):
    self.low, self.high = low, high

  def __call__(self, w):
    return ops.clip(w, self.low, self.high)

  def get_config(self):
    return {"low": self.low, "high": self.high}


def _layout_misfit(granularity, layout):
  return l0_core.granularity_misfit(granularity, layout)


@keras.saving.register_keras_serializable(package="tf_gibbs")
class L0Gates(wrapper_lib.PruningWrapper):
  """Multiplies a Keras 3 layer's kernel by trainable gates with exact zeros (methods.md §3).

  z = clip((ζ − γ) σ(log α) + γ, 0, 1) (deterministic) or the hard-concrete sample
  (stochastic); the loss gets λ · Σ P(z > 0) · (weights per gate) / (gated weights of the
  ``prune_l0`` call), through ``add_loss`` in training calls. Same arguments and meaning as
  :class:`tf_gibbs.L0Gates` (tf_keras), including the budget controller and
  ``allocation="network"``. From ``end_step`` on the gates are frozen in ``mask`` and the
  weights fine-tune under them.
  """

  LOG_ALPHA_MARGIN = l0_front.L0Gates.LOG_ALPHA_MARGIN
  GROUP_NAMES = l0_front.L0Gates.GROUP_NAMES

  def __init__(self, layer, pruning_schedule=None, granularity="weight", mode="deterministic",
               temperature=l0_core.TEMPERATURE, gate_lr_multiplier=50.0, initial_log_alpha=3.0,
               penalty_normalizer=None, seed=None, allocation="per_layer", budget_group=None,
               **kwargs):
    if pruning_schedule is None:
      pruning_schedule = L0Schedule()
    pruning_schedule = wrapper_lib.schedule_from_config(pruning_schedule)
    l0_front.check_l0_schedule(pruning_schedule, "pruning_schedule")
    self.allocation = l0_front.check_network_allocation(allocation, pruning_schedule,
                                                        budget_group)
    self.budget_group = budget_group
    l0_front.check_mode(mode)
    l0_core.check_granularity(granularity)
    self.temperature = float(check_number(temperature, "temperature", 0.0, False))
    self.gate_lr_multiplier = float(
        check_number(gate_lr_multiplier, "gate_lr_multiplier", 0.0, False))
    self.initial_log_alpha = float(check_number(initial_log_alpha, "initial_log_alpha"))
    if penalty_normalizer is not None:
      penalty_normalizer = int(
          check_number(penalty_normalizer, "penalty_normalizer", 1, integer=True))
    self.penalty_normalizer = penalty_normalizer
    super().__init__(layer, pruning_schedule=pruning_schedule, seed=seed, **kwargs)
    reason = _layout_misfit(granularity, self.layout)
    if reason is not None:
      raise ValueError(f"granularity={granularity!r} does not fit layer {self.layer.name} "
                       f"({type(self.layer).__name__}): {reason}")
    self.granularity = granularity
    self.mode = mode
    self.penalty_group = l0_front.PenaltyGroup([self])

  def build_method_variables(self, weight):
    self._view = gibbs_core.canonical_shape(weight.shape, self.layout)
    shape = l0_core.group_shape(self._view, self.granularity)
    constraint = None
    if self.mode == "deterministic":
      constraint = _Clip((l0_core.CLOSED_LOG_ALPHA - self.LOG_ALPHA_MARGIN) /
                         self.gate_lr_multiplier,
                         (l0_core.OPEN_LOG_ALPHA + self.LOG_ALPHA_MARGIN) /
                         self.gate_lr_multiplier)
    self.gate_parameter = self.add_weight(
        name="gate_parameter", shape=shape, dtype="float32", trainable=True, autocast=False,
        initializer=keras.initializers.Constant(self.initial_log_alpha / self.gate_lr_multiplier),
        constraint=constraint)
    self.log_penalty_factor = self.add_state("log_penalty_factor", ())
    if self.pruning_schedule.has_budget:
      self.budget_targets = self.add_state("budget_targets", shape)
    if self.allocation == "network":
      self.build_allocation()

  def method_state(self):
    return [self.log_penalty_factor]

  def target_groups(self):
    if not self.pruning_schedule.has_budget or self.allocation == "network":
      return None
    return (math.prod(self.gate_parameter.shape), self.GROUP_NAMES[self.granularity],
            self.pruning_schedule.target_sparsity)

  @property
  def gated_weights(self):
    return math.prod(self._view)

  def normalizer(self):
    if self.penalty_normalizer is not None:
      return self.penalty_normalizer
    members = self.penalty_group.members
    if all(w.built for w in members):
      return sum(w.gated_weights for w in members)
    return self.gated_weights

  @property
  def log_alpha(self):
    return neutral.scaled_parameter(ops.convert_to_tensor(self.gate_parameter.value),
                                    self.gate_lr_multiplier)

  def _targets_and_factor(self):
    targets = (self.read_state(self.budget_targets)
               if self.pruning_schedule.has_budget else ops.zeros(()))
    return targets, self.read_state(self.log_penalty_factor)

  def network_groups(self):
    groups = math.prod(self.gate_parameter.shape)
    return groups, self.gated_weights // groups

  def budget_energies(self):
    """The gated magnitudes the budget ranks (:func:`neutral.group_importance`), flattened."""
    gates = neutral.deterministic_gate(self.log_alpha, straight_through_clip=False)
    return ops.reshape(neutral.group_importance(ops.reshape(self.read_weight(), self._view),
                                                gates), (-1,))

  def _layer_sparsity(self, step):
    """This layer's budget at ``step`` under the network's (None per layer), after updating its
    share at the re-ranking steps."""
    if self.allocation != "network":
      return None
    schedule = self.pruning_schedule
    allocated = self.network_share(schedule.rerank(step, KERAS_MATH))
    self.allocated_sparsity.assign(allocated)
    return allocation.layer_sparsity(allocated, schedule.sparsity(step, KERAS_MATH),
                                     schedule.target_sparsity, KERAS_MATH)

  def training_weight(self, weight, step):
    targets, log_factor = self._targets_and_factor()
    sparsity = self._layer_sparsity(step)
    parameter = ops.convert_to_tensor(self.gate_parameter.value)
    noise = None
    if self.mode != "deterministic":
      noise = neutral.gate_noise(self.gate_parameter.shape, self.seed, step)
    gated, mask, targets, log_factor = neutral.l0_training_step(
        weight, self.read_state(self.mask), parameter, targets, log_factor, step,
        noise, schedule=self.pruning_schedule, view=self._view, scale=self.gate_lr_multiplier,
        temperature=self.temperature, xp=KERAS_MATH, sparsity=sparsity)
    self.mask.assign(mask)
    if self.pruning_schedule.has_budget:
      self.budget_targets.assign(targets)
      self.log_penalty_factor.assign(log_factor)
    group_size = self.gated_weights // math.prod(self.gate_parameter.shape)
    self.add_loss(neutral.l0_penalty(
        parameter, targets, log_factor, step, group_size / self.normalizer(),
        schedule=self.pruning_schedule, scale=self.gate_lr_multiplier,
        temperature=self.temperature, xp=KERAS_MATH))
    return gated

  def deterministic_weight(self, weight, step):
    should_prune, _ = self.pruning_schedule(step, KERAS_MATH)
    gates = neutral.deterministic_gate(self.log_alpha, straight_through_clip=False)
    gated = ops.where(self.schedule_finished(step),
                      weight * ops.convert_to_tensor(self.mask.value),
                      ops.reshape(ops.reshape(weight, self._view) * gates, ops.shape(weight)))
    return ops.where(should_prune, gated, weight)

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
