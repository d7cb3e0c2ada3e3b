"""Adaptive sparsity loss (Retsinas et al., arXiv 2006.02768): the Keras wrapper.

The threshold, the straight-through hard threshold and the density estimates live in
:mod:`tf_gibbs.core.adaptive`; this module connects them to a layer, the step counter, the
global budget loss and its group of layers.
"""

import math

import tensorflow as tf

from tf_gibbs import wrapper as wrapper_lib
from tf_gibbs._keras import keras
from tf_gibbs.core import adaptive as adaptive_core
from tf_gibbs.core import l0 as l0_core
from tf_gibbs.schedule import AdaptiveSchedule
from tf_gibbs.schedule import check_bool
from tf_gibbs.schedule import check_choice
from tf_gibbs.schedule import check_number

BUDGETS = ("params", "flops")


def check_budget(budget):
  return check_choice(budget, "budget", BUDGETS)


def check_estimate(estimate):
  return check_choice(estimate, "estimate", adaptive_core.ESTIMATES)


def check_adaptive_schedule(schedule, argument="schedule"):
  if not isinstance(schedule, AdaptiveSchedule):
    raise TypeError(f"`{argument}` of the adaptive sparsity loss must be a "
                    f"tf_gibbs.AdaptiveSchedule, got {type(schedule).__name__}.")
  return schedule


@keras.utils.register_keras_serializable(package="tf_gibbs")
class AdaptiveThreshold(wrapper_lib.PruningWrapper):
  """Hard-thresholds a layer's kernel at a learned multiple of its standard deviation.

  Per-layer r and zero fraction reach the Keras logs through
  :class:`tf_gibbs.UpdatePruningStep` (``r_<layer>``, ``sparsity_<layer>`` at each epoch end)
  and TensorBoard through tfmot's ``PruningSummaries`` (the ``threshold`` and ``mask``
  variables).

  Forward (training and inference): Ŵ = W · 1[|W| > b], b = clip(r, 0, 5) · std(W) (std
  unbiased, ÷(N − 1), as the reference code's ``torch.std``), with the
  straight-through gradients of :func:`tf_gibbs.core.adaptive.masked_straight_through` (all
  weights keep learning; r learns through the pruned weights). At the schedule's ``end_step`` the mask
  freezes (after the ``exact_budget`` correction) and the kept weights fine-tune under it; the
  epoch-end callback then writes W · mask into the kernel (idempotent), so both strip functions
  are exact. The budget loss
  λ (Σ_l c_l d_l / Σ_l c_l − (1 − s))² over the layers of one ``budget_group`` (c_l: parameters
  or multiply-accumulates, d_l: kept fraction by ``estimate``) is added once per group, by its
  member with the smallest name; the members find each other through the model's graph, so a
  loaded model keeps its budget loss. r is stored as r / ``r_lr_multiplier`` and used through
  :func:`tf_gibbs.core.l0.scaled_parameter`, so it learns ``r_lr_multiplier`` times as fast as
  the weights with any optimizer (the paper trains r at lr/100 with its own optimizer group).
  r is projected back into [0, 5] after every optimizer update, and the clip passes its
  gradient straight through, so an r that leaves the range always comes back (with the
  reference's clamp an r below 0 has no gradient and the layer stays dense). r is excluded from
  the optimizer's weight decay (``tf_gibbs.UpdatePruningStep`` does it at the start of ``fit``),
  as in the reference code.
  We threshold |W| without the reference code's in-place re-centring of W to zero mean: a
  wrapper that mutates the weights at every step would break resuming and stripping.

  Args:
    layer: tf_keras Dense, Conv1D, Conv2D or DepthwiseConv2D.
    pruning_schedule: a :class:`tf_gibbs.AdaptiveSchedule` (the budget s and the freeze step).
    loss_weight: λ > 0 (default 10, the paper's).
    budget: ``"params"`` (the paper) or ``"flops"`` (each layer weighted by its
      multiply-accumulates per example).
    estimate: ``"measured"`` (default: the real kept fraction, with the erf gradient) or
      ``"erf"`` (the paper's Gaussian estimate 1 − erf(r/√2)).
    r_lr_multiplier: how fast r learns relative to the weights, > 0 (default 0.01).
    initial_r: starting r; None: √2 · erfinv(0.6 s) (reference code).
    budget_group: name shared by the layers under one budget (``prune_adaptive`` sets it);
      None: this layer alone.
    exact_budget: at ``end_step``, multiply every threshold of the group by one common factor
      (:func:`tf_gibbs.core.adaptive.common_scale`) so that the measured weighted zero fraction
      is exactly s (our correction; False: the thresholds as trained, as in the paper).
    seed: unused by this method (no randomness); kept for the shared wrapper interface.
  """

  def __init__(self, layer, pruning_schedule=None, loss_weight=10.0, budget="params",
               estimate="measured", r_lr_multiplier=0.01, initial_r=None, budget_group=None,
               exact_budget=True, seed=None, **kwargs):
    if pruning_schedule is None:
      pruning_schedule = AdaptiveSchedule()
    check_adaptive_schedule(pruning_schedule, "pruning_schedule")
    self.loss_weight = float(check_number(loss_weight, "loss_weight", 0.0, False))
    self.budget = check_budget(budget)
    self.estimate = check_estimate(estimate)
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

  # --- variables --------------------------------------------------------------------------------

  def build_method_variables(self, weight):
    # Projected back into [0, 5] (in units of r) after every optimizer update.
    high = adaptive_core.R_MAX / self.r_lr_multiplier
    self.r_parameter = self.add_weight(
        "r", shape=[], dtype=tf.float32, trainable=True,
        initializer=keras.initializers.Constant(self.initial_r / self.r_lr_multiplier),
        constraint=lambda value: tf.clip_by_value(value, 0.0, high))
    params = weight.shape.num_elements()
    output_shape = self.layer.compute_output_shape(self.layer._build_input_shape)
    spatial = list(output_shape[1:-1])
    if None in spatial and self.budget == "flops":
      raise ValueError(
          f"budget='flops' needs the spatial size of layer {self.layer.name!r}'s output, which "
          f"is not static ({tuple(output_shape)}): give the model a fixed input size, or use "
          "budget='params'.")
    flops = None if None in spatial else params * math.prod(int(d) for d in spatial)
    self.cost = {"params": params, "flops": flops}
    # Kept fraction of the last training step's live threshold (the measured estimate's value).
    self.kept_fraction = self.add_weight(
        "kept_fraction", shape=[], dtype=tf.float32, initializer="ones", trainable=False,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self.add_loss(self.budget_loss)

  def clipped_r(self):
    """The r in use, clip(r, 0, 5), as a Python float."""
    return float(tf.clip_by_value(self.r, 0.0, adaptive_core.R_MAX))

  @property
  def r(self):
    """The threshold in units of std(W) (a tensor; gradient reaches ``r_parameter``)."""
    return l0_core.scaled_parameter(self.r_parameter, self.r_lr_multiplier)

  # --- the global budget ------------------------------------------------------------------------

  def budget_loss(self):
    """λ (D − (1 − s))² for the whole group, from its first member; 0 from the others and
    before ``begin_step`` / from ``end_step`` on."""
    members = self.budget_members()
    if members[0] is not self:
      return tf.constant(0.0)
    loss = adaptive_core.group_budget_loss[self.estimate](
        tf.stack([m.r_parameter for m in members]),
        tf.constant([m.r_lr_multiplier for m in members], tf.float32),
        tf.stack([m.kept_fraction for m in members]),
        tf.constant([float(m.cost[self.budget]) for m in members], tf.float32),
        tf.constant(self.pruning_schedule.target_sparsity, tf.float32),
        tf.constant(self.loss_weight, tf.float32))
    step = self.pruning_step
    should_prune, _ = self.pruning_schedule(step)
    active = tf.logical_and(should_prune, tf.logical_not(self.schedule_finished(step)))
    return tf.where(active, loss, tf.zeros_like(loss))

  # --- hooks ------------------------------------------------------------------------------------

  def live_threshold(self, weight):
    return adaptive_core.threshold(weight, self.r)

  def freeze_scale(self, freeze):
    """The group's common threshold scale at ``end_step`` (1 at every other step; None without
    ``exact_budget``): :func:`tf_gibbs.core.adaptive.common_scale` over the members'
    |W| / b, so that the measured weighted zero fraction is exactly s.

    It reads every member's weights, so it is built once per traced graph (and replica) and
    shared by the members: per member it would put N copies of the group's ops into the step
    (N² in all), which the executor walks at every step even though they run only once. The
    group's first member (by name) holds it, so it goes with the model.
    """
    if not self.exact_budget:
      return None
    members = self.budget_members()
    key = (tuple(id(m) for m in members), self.budget)
    return members[0]._per_graph.get(key, lambda: tf.cond(  # pylint: disable=protected-access
        freeze, lambda: self._common_scale(members), lambda: tf.constant(1.0)))

  def _common_scale(self, members):
    ratios = [adaptive_core.threshold_ratio(m.read_weight(), m.live_threshold(m.read_weight()))
              for m in members]
    return adaptive_core.common_scale(ratios, [m.cost[self.budget] for m in members],
                                      self.pruning_schedule.target_sparsity)

  def training_weight(self, weight, step):
    should_prune, _ = self.pruning_schedule(step)
    finished = self.schedule_finished(step)
    live = tf.logical_and(should_prune, tf.logical_not(finished))
    freeze = tf.equal(tf.cast(step, tf.int64), self.pruning_schedule.end_step)
    live_b = self.live_threshold(weight)
    scale = self.freeze_scale(freeze)
    # Phases: before begin_step no mask; up to end_step the live threshold's mask; at end_step
    # the (corrected) threshold and its mask freeze; after it the frozen ones. Scalar conds, so
    # a step computes only its phase's mask.
    def frozen():
      return tf.identity(self.threshold), tf.identity(self.mask)

    def freeze_now():
      if scale is None:
        return live_b, adaptive_core.keep_mask(weight, live_b)
      # The ratio common_scale counted, compared with its k (see threshold_ratio).
      keep = adaptive_core.threshold_ratio(weight, live_b) > scale
      return scale * tf.maximum(live_b, 1e-12), tf.cast(keep, tf.float32)

    def thresholded():
      return tf.stop_gradient(live_b), adaptive_core.keep_mask(weight, live_b)

    def unpruned():
      return tf.stop_gradient(live_b), tf.ones_like(weight)

    b, mask = tf.cond(finished, lambda: tf.cond(freeze, freeze_now, frozen),
                      lambda: tf.cond(should_prune, thresholded, unpruned))
    updates = [self.threshold.assign(b), self.mask.assign(mask),
               self.kept_fraction.assign(tf.reduce_mean(mask))]
    with tf.control_dependencies(updates):
      # r learns (through the pruned weights) only while the threshold is live; every weight
      # gets the straight-through gradient until the mask freezes, then only the kept ones.
      return adaptive_core.masked_straight_through(
          weight, mask, tf.where(live, live_b, tf.stop_gradient(live_b)),
          straight_through=tf.logical_not(finished))

  def deterministic_weight(self, weight, step):
    """W · 1[|W| > r·std(W)] before ``end_step``; W · (frozen mask) from then on."""
    should_prune, _ = self.pruning_schedule(step)
    live = adaptive_core.keep_mask(weight, self.live_threshold(weight))
    mask = tf.where(self.schedule_finished(step), tf.identity(self.mask), live)
    return tf.where(should_prune, weight * mask, weight)

  def get_config(self):
    config = super().get_config()
    config.update({
        "loss_weight": self.loss_weight,
        "budget": self.budget,
        "estimate": self.estimate,
        "r_lr_multiplier": self.r_lr_multiplier,
        # Once built, the learned r (a clone from this config starts where this layer is).
        "initial_r": self.clipped_r() if self.built else self.initial_r,
        "budget_group": self.budget_group,
        "exact_budget": self.exact_budget,
    })
    return config
