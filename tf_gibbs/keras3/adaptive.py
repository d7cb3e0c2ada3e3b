"""Adaptive sparsity loss (Retsinas et al., arXiv 2006.02768) on Keras 3: the wrapper.

The maths is :mod:`tf_gibbs.core.neutral`; the arguments and their checks are the tf_keras
front's (:mod:`tf_gibbs.adaptive`).
"""

import math

import keras
from keras import ops

from tf_gibbs import adaptive as adaptive_front
from tf_gibbs.core import adaptive as adaptive_core
from tf_gibbs.core import neutral
from tf_gibbs.keras3 import wrapper as wrapper_lib
from tf_gibbs.keras3.l0 import _Clip
from tf_gibbs.schedule import AdaptiveSchedule
from tf_gibbs.schedule import KERAS_MATH
from tf_gibbs.schedule import check_bool
from tf_gibbs.schedule import check_number


@keras.saving.register_keras_serializable(package="tf_gibbs")
class AdaptiveThreshold(wrapper_lib.PruningWrapper):
  """Hard-thresholds a Keras 3 layer's kernel at a learned multiple r of its std (methods.md §2).

  Ŵ = W · 1[|W| > b], b = clip(r, 0, 5)·std(W), with the straight-through gradients of the
  reference code; the budget loss λ (Σ c_l d_l / Σ c_l − (1 − s))² of the whole
  ``budget_group`` is added by its first member (by name) in training calls; at ``end_step``
  the thresholds freeze (rescaled by one common factor with ``exact_budget``) and the weights
  fine-tune under the frozen mask. Same arguments and meaning as :class:`tf_gibbs.AdaptiveThreshold`.
  """

  def __init__(self, layer, pruning_schedule=None, loss_weight=10.0, budget="params",
               estimate="measured", r_lr_multiplier=0.01, initial_r=None, budget_group=None,
               exact_budget=True, seed=None, **kwargs):
    if pruning_schedule is None:
      pruning_schedule = AdaptiveSchedule()
    pruning_schedule = wrapper_lib.schedule_from_config(pruning_schedule)
    adaptive_front.check_adaptive_schedule(pruning_schedule, "pruning_schedule")
    self.loss_weight = float(check_number(loss_weight, "loss_weight", 0.0, False))
    self.budget = adaptive_front.check_budget(budget)
    self.estimate = adaptive_front.check_estimate(estimate)
    self.r_lr_multiplier = float(check_number(r_lr_multiplier, "r_lr_multiplier", 0.0, False))
    if initial_r is None:
      initial_r = adaptive_core.initial_r(pruning_schedule.target_sparsity)
    self.initial_r = float(check_number(initial_r, "initial_r", 0.0, True,
                                        adaptive_core.R_MAX, True))
    if budget_group is not None and not isinstance(budget_group, str):
      raise TypeError(f"`budget_group` must be None or a string, got {budget_group!r}.")
    self.budget_group = budget_group
    self.exact_budget = check_bool(exact_budget, "exact_budget")
    super().__init__(layer, pruning_schedule=pruning_schedule, seed=seed, **kwargs)

  def build_method_variables(self, weight):
    self.r_parameter = self.add_weight(
        name="r", shape=(), dtype="float32", trainable=True, autocast=False,
        initializer=keras.initializers.Constant(self.initial_r / self.r_lr_multiplier),
        constraint=_Clip(0.0, adaptive_core.R_MAX / self.r_lr_multiplier))
    params = math.prod(weight.shape)
    shapes = list(self.layer._build_shapes_dict.values())  # pylint: disable=protected-access
    output_shape = self.layer.compute_output_shape(shapes[0])
    spatial = list(output_shape[1:-1])
    if None in spatial and self.budget == "flops":
      raise ValueError(
          f"budget='flops' needs the spatial size of layer {self.layer.name!r}'s output, which "
          f"is not static ({tuple(output_shape)}): give the model a fixed input size, or use "
          "budget='params'.")
    flops = None if None in spatial else params * math.prod(int(d) for d in spatial)
    self.cost = {"params": params, "flops": flops}
    self.kept_fraction = self.add_state("kept_fraction", (), initializer="ones")

  @property
  def r(self):
    return neutral.scaled_parameter(ops.convert_to_tensor(self.r_parameter.value),
                                    self.r_lr_multiplier)

  def clipped_r(self):
    return float(ops.convert_to_numpy(ops.clip(self.r, 0.0, adaptive_core.R_MAX)))

  def live_threshold(self, weight):
    return neutral.threshold(weight, self.r)

  def _budget_loss(self, step, members, kept_fractions):
    r = ops.stack([m.r for m in members])
    if self.estimate == "erf":
      densities = neutral.erf_density(r)
    else:
      densities = neutral.corrected_density(ops.stack(kept_fractions), r)
    loss = self.loss_weight * neutral.budget_error(
        densities, [float(m.cost[self.budget]) for m in members],
        self.pruning_schedule.target_sparsity)
    should_prune, _ = self.pruning_schedule(step, KERAS_MATH)
    active = ops.logical_and(should_prune, ops.logical_not(self.schedule_finished(step)))
    return ops.where(active, loss, ops.zeros_like(loss))

  def freeze_scale(self, freeze, members):
    """The group's common threshold scale at ``end_step`` (1 at every other step):
    :func:`tf_gibbs.core.neutral.common_scale` over the members' |W| / b, so that the measured
    weighted zero fraction is exactly s. It reads every member's weights, so a traced step
    holds one copy, built by the member that runs first and shared by the others: one per
    member would put N² ops into the step (194 s to the first MobileNetV2 step on TensorFlow).
    """
    key = (tuple(id(m) for m in members), self.budget, self.pruning_schedule.target_sparsity)
    # The group's first member (by name) holds it: every member finds the same list.
    return wrapper_lib.once_per_trace(members[0]._group, key, lambda: ops.cond(  # pylint: disable=protected-access
        freeze, lambda: self._common_scale(members), lambda: ops.convert_to_tensor(1.0)))

  def _common_scale(self, members):
    ratios = []
    for m in members:
      weight = m.read_weight()
      ratios.append(neutral.threshold_ratio(weight, m.live_threshold(weight)))
    return neutral.common_scale(ratios, [m.cost[self.budget] for m in members],
                                self.pruning_schedule.target_sparsity)

  def training_weight(self, weight, step):
    schedule = self.pruning_schedule
    should_prune, _ = schedule(step, KERAS_MATH)
    finished = self.schedule_finished(step)
    live = ops.logical_and(should_prune, ops.logical_not(finished))
    freeze = ops.equal(step, schedule.end_step)
    live_b = self.live_threshold(weight)
    members = self.budget_members()
    live_mask = neutral.keep_mask(weight, live_b)
    if self.exact_budget:
      scale = self.freeze_scale(freeze, members)
      freeze_b = scale * ops.maximum(live_b, 1e-12)
      freeze_mask = ops.cast(neutral.threshold_ratio(weight, live_b) > scale, "float32")
    else:
      freeze_b, freeze_mask = live_b, live_mask
    frozen_b = self.read_state(self.threshold)
    frozen_mask = self.read_state(self.mask)
    b = ops.where(finished, ops.where(freeze, freeze_b, frozen_b), sg_(live_b))
    mask = ops.where(finished, ops.where(freeze, freeze_mask, frozen_mask),
                     ops.where(should_prune, live_mask, ops.ones_like(weight)))
    kept = ops.mean(mask)
    self.threshold.assign(b)
    self.mask.assign(mask)
    self.kept_fraction.assign(kept)
    if members[0] is self:
      fractions = [kept if m is self else self.read_state(m.kept_fraction)
                   for m in members]
      self.add_loss(self._budget_loss(step, members, fractions))
    return neutral.masked_straight_through(
        weight, mask, ops.where(live, live_b, sg_(live_b)),
        straight_through_weight=ops.logical_not(finished))

  def deterministic_weight(self, weight, step):
    should_prune, _ = self.pruning_schedule(step, KERAS_MATH)
    live = neutral.keep_mask(weight, self.live_threshold(weight))
    mask = ops.where(self.schedule_finished(step), ops.convert_to_tensor(self.mask.value), live)
    return ops.where(should_prune, weight * mask, weight)

  def get_config(self):
    config = super().get_config()
    config.update({
        "loss_weight": self.loss_weight,
        "budget": self.budget,
        "estimate": self.estimate,
        "r_lr_multiplier": self.r_lr_multiplier,
        "initial_r": self.clipped_r() if self.built else self.initial_r,
        "budget_group": self.budget_group,
        "exact_budget": self.exact_budget,
    })
    return config


sg_ = ops.stop_gradient
