"""Pruning schedules: tfmot ``PruningSchedule`` subclasses that also anneal β."""

import math
import numbers

import numpy as np

import tensorflow as tf
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_schedule

from tf_gibbs._keras import keras


class _TensorFlowMath:
  """The few ops the schedules' formulas use, in TensorFlow (the tf_keras front, tfmot)."""
  int_type = tf.int64
  cast = staticmethod(tf.cast)
  clip = staticmethod(tf.clip_by_value)
  where = staticmethod(tf.where)
  exp = staticmethod(tf.exp)
  pow = staticmethod(tf.pow)
  logical_and = staticmethod(tf.logical_and)
  logical_or = staticmethod(tf.logical_or)
  equal = staticmethod(tf.equal)
  # The network-wide allocation's ops (tf_gibbs.core.allocation).
  square = staticmethod(tf.square)
  sort = staticmethod(tf.sort)
  cumsum = staticmethod(tf.cumsum)
  maximum = staticmethod(tf.maximum)
  minimum = staticmethod(tf.minimum)
  round = staticmethod(tf.round)
  take = staticmethod(tf.gather)
  reshape = staticmethod(tf.reshape)
  segment_sum = staticmethod(tf.math.unsorted_segment_sum)

  @staticmethod
  def sum(x, axis):
    return tf.reduce_sum(x, axis)

  @staticmethod
  def concatenate(tensors):
    return tf.concat(tensors, 0)

  @staticmethod
  def argsort(x):
    return tf.argsort(x, stable=True)

  @staticmethod
  def ones(shape, dtype):
    return tf.ones(shape, dtype)

  @staticmethod
  def wide():
    return tf.float64

  @staticmethod
  def constant(value, dtype):
    return tf.constant(value, dtype)


class _KerasMath:
  """The same ops in ``keras.ops`` (the Keras 3 front, any backend): every schedule formula
  below is written once and evaluated by either. Keras 3 counts steps in int32 and computes in
  float64 where the backend has it (:func:`tf_gibbs.core.neutral.wide_float`)."""
  int_type = "int32"

  def __getattr__(self, name):
    from keras import ops  # pylint: disable=g-import-not-at-top
    names = {"clip": "clip", "where": "where", "exp": "exp", "pow": "power", "cast": "cast",
             "logical_and": "logical_and", "logical_or": "logical_or", "equal": "equal",
             "square": "square", "sort": "sort", "cumsum": "cumsum", "maximum": "maximum",
             "minimum": "minimum", "round": "round", "take": "take", "reshape": "reshape",
             "sum": "sum", "concatenate": "concatenate", "argsort": "argsort", "ones": "ones"}
    return getattr(ops, names[name])

  @staticmethod
  def segment_sum(data, segment_ids, num_segments):
    from keras import ops  # pylint: disable=g-import-not-at-top
    return ops.segment_sum(data, segment_ids, num_segments)

  @staticmethod
  def wide():
    from tf_gibbs.core import neutral  # pylint: disable=g-import-not-at-top
    return neutral.wide_float()

  @staticmethod
  def constant(value, dtype):
    from keras import ops  # pylint: disable=g-import-not-at-top
    return ops.convert_to_tensor(value, dtype)


TF_MATH = _TensorFlowMath()
KERAS_MATH = _KerasMath()


def check_choice(value, argument, accepted):
  """Validates that ``value`` is one of ``accepted``, naming ``argument`` and the choices."""
  if value not in accepted:
    raise ValueError(f"Unknown {argument}={value!r}; accepted values: {list(accepted)}.")
  return value


def check_bool(value, argument):
  """Validates a Python bool, naming ``argument``."""
  if not isinstance(value, bool):
    raise TypeError(f"`{argument}` must be True or False, got {value!r}.")
  return value


def check_number(value, argument, low=None, low_inclusive=True, high=None, high_inclusive=False,
                  integer=False):
  """Validates a Python number, naming ``argument`` and the accepted range in the error."""
  kinds = numbers.Integral if integer else numbers.Real
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, kinds):
    raise TypeError(f"`{argument}` must be {'an integer' if integer else 'a number'}, "
                    f"got {value!r} ({type(value).__name__}).")
  if not math.isfinite(value):
    raise ValueError(f"`{argument}` must be finite, got {value!r}.")
  if not integer:  # the maths runs in float32: the value must survive the cast
    with np.errstate(over="ignore", under="ignore"):
      as_float32 = float(np.float32(value))
    if not math.isfinite(as_float32):
      raise ValueError(f"`{argument}` must be finite in float32 (|x| ≤ 3.4e38), got {value!r}.")
    if value != 0 and as_float32 == 0:
      raise ValueError(f"`{argument}` is 0 in float32 (|x| ≥ 1.2e-38 needed), got {value!r}.")
  lo_ok = low is None or (value >= low if low_inclusive else value > low)
  hi_ok = high is None or (value <= high if high_inclusive else value < high)
  if not (lo_ok and hi_ok):
    lo = "(-inf" if low is None else ("[" if low_inclusive else "(") + str(low)
    hi = "inf)" if high is None else str(high) + ("]" if high_inclusive else ")")
    raise ValueError(f"`{argument}` must be in {lo}, {hi}, got {value!r}.")
  return value


def strip_warning(untrained, unfinished):
  """The warning of ``strip_pruning`` (both Kerases) for wrappers that have taken no training
  step (``untrained``) or whose schedule has not reached its end step (``unfinished``), or
  None."""
  lines = []
  if untrained:
    lines.append(
        f"strip_pruning: nothing has been pruned yet: {untrained} have not taken a training "
        "step. Train the pruned model first (on tf_keras: `fit(..., "
        "callbacks=[tf_gibbs.UpdatePruningStep()])`); the stripped layers keep the masks of "
        "step 0.")
  if unfinished:
    lines.append(f"strip_pruning: the schedule of {unfinished} has not reached its end step; "
                 "their masks use the sparsity of the current step.")
  return "\n".join(lines) or None


class _StepSchedule(pruning_schedule.PruningSchedule):
  """What tf_gibbs' schedules share: tfmot's ``(should_prune, sparsity)`` call from
  ``begin_step`` on, a config made of the attributes named in ``CONFIG_KEYS``, and a repr."""

  CONFIG_KEYS = ()

  def _set_steps(self, begin_step, end_step, allow_equal=False):
    """Validates and sets ``begin_step`` (≥ 0) and ``end_step`` (> it, or ≥ if allowed)."""
    self.begin_step = int(check_number(begin_step, "begin_step", 0, integer=True))
    self.end_step = int(check_number(end_step, "end_step", integer=True))
    if self.end_step < self.begin_step or (self.end_step == self.begin_step and not allow_equal):
      relation = ">=" if allow_equal else ">"
      raise ValueError(f"`end_step` must be {relation} `begin_step` ({self.begin_step}), "
                       f"got {self.end_step}.")

  def sparsity(self, step, xp=TF_MATH):
    raise NotImplementedError

  def __call__(self, step, xp=TF_MATH):
    """(should_prune, sparsity) at ``step``; ``xp`` = ``KERAS_MATH`` evaluates with keras.ops."""
    should_prune = xp.cast(step, xp.int_type) >= self.begin_step
    return should_prune, self.sparsity(step, xp)

  def get_config(self):
    return {"class_name": self.__class__.__name__,
            "config": {key: getattr(self, key) for key in self.CONFIG_KEYS}}

  def __repr__(self):
    args = ", ".join(f"{k}={v!r}" for k, v in self.get_config()["config"].items())
    return f"{type(self).__name__}({args})"


@keras.utils.register_keras_serializable(package="tf_gibbs")
class GibbsSchedule(_StepSchedule):
  """Sparsity and inverse temperature β for Gibbs pruning, as a tfmot ``PruningSchedule``.

  With t = clip((step − begin_step) / (end_step − begin_step), 0, 1):

    β(step) = beta_begin · (beta_end / beta_begin)^t          (geometric ramp, constant outside)
    p(step) = target + (initial − target) · (1 − t)^power     (p = target by default)

  ``__call__(step)`` returns tfmot's ``(should_prune, sparsity)``; should_prune is
  ``step ≥ begin_step`` (before it the layer trains dense). Gibbs pruning samples a new mask at
  every step, so there is no pruning frequency.

  The reference code (``j201/gibbs-pruning``) ramps β per epoch (a staircase) and keeps p fixed
  at the target; we ramp per step (smoother, and independent of epoch length). The optional
  sparsity ramp (``initial_sparsity``, Zhu & Gupta's cubic by default) is our addition for very
  high targets. Reference settings (methods.md §1.4): unstructured and kernel Hamiltonians
  β 1 → 1e4; filter Hamiltonian β 10^−2.5 → 1; ramp over 128 of 200 epochs.

  Args:
    target_sparsity: final pruned fraction p of each layer, in [0, 1).
    beta_begin: β at and before ``begin_step``, > 0.
    beta_end: β at and after ``end_step``, > 0.
    begin_step: first training step that prunes, ≥ 0.
    end_step: step at which the ramps reach their final values, ≥ ``begin_step``.
    initial_sparsity: p at ``begin_step``, in [0, 1); None means ``target_sparsity``.
    power: exponent of the sparsity ramp, > 0.
  """

  def __init__(self, target_sparsity=0.9, beta_begin=1.0, beta_end=1e4, begin_step=0,
               end_step=10000, initial_sparsity=None, power=3):
    self.target_sparsity = float(check_number(target_sparsity, "target_sparsity", 0.0, True, 1.0))
    self.beta_begin = float(check_number(beta_begin, "beta_begin", 0.0, False))
    self.beta_end = float(check_number(beta_end, "beta_end", 0.0, False))
    self._set_steps(begin_step, end_step, allow_equal=True)
    if initial_sparsity is None:
      initial_sparsity = self.target_sparsity
    self.initial_sparsity = float(
        check_number(initial_sparsity, "initial_sparsity", 0.0, True, 1.0))
    self.power = float(check_number(power, "power", 0.0, False))

  # The reference recipe's β ramps per Hamiltonian (methods.md §1.4).
  REFERENCE_BETA = {"unstructured": (1.0, 1e4), "kernel": (1.0, 1e4), "filter": (10**-2.5, 1.0)}
  # The filter energy sampled exactly (sampler="exact"): the same start, but a ramp that reaches
  # the ground state (our choice; see ``reference``).
  EXACT_FILTER_BETA = (10**-2.5, 1e4)

  @classmethod
  def reference(cls, hamiltonian, begin_step, end_step, target_sparsity=0.9,
                sampler="chromatic", **kwargs):
    """The reference recipe's schedule for ``hamiltonian``: β 1 → 1e4 (unstructured, kernel)
    or 10^−2.5 → 1 (filter), p fixed at ``target_sparsity``. The recipe ramps over 128 of 200
    epochs: pass ``end_step = 0.64 × total steps`` for the same shape.

    ``sampler`` is the filter energy's sampler (``"chromatic"`` or ``"exact"``; ignored by the
    other energies). The reference ramp 10^−2.5 → 1 was tuned for 50 chromatic sweeps, which
    start from the deterministic mask and barely leave it at β ≤ 1. The exact sampler draws
    from the distribution itself, which at β ≤ 1 with c = 1 hardly depends on the weights
    (kept fractions of 0.2–0.6 per filter at β = 1), so with the reference ramp its training
    masks never approach the target; on Glorot-initialized 3×3 convolutions of 64 filters its
    samples reach the target within about one filter from β ≈ 1e3 on. For
    ``sampler="exact"`` this returns β 10^−2.5 → 1e4 instead (our choice, not the paper's).
    """
    if hamiltonian not in cls.REFERENCE_BETA:
      raise ValueError(f"Unknown hamiltonian={hamiltonian!r}; accepted values: "
                       f"{sorted(cls.REFERENCE_BETA)}.")
    check_choice(sampler, "sampler", ("chromatic", "exact"))
    beta_begin, beta_end = cls.REFERENCE_BETA[hamiltonian]
    if hamiltonian == "filter" and sampler == "exact":
      beta_begin, beta_end = cls.EXACT_FILTER_BETA
    return cls(target_sparsity, beta_begin=beta_begin, beta_end=beta_end, begin_step=begin_step,
               end_step=end_step, **kwargs)

  def _progress(self, step, xp=TF_MATH):
    """t ∈ [0, 1] as float64; exactly 1 at and after end_step."""
    step = xp.cast(step, xp.wide())
    length = float(max(self.end_step - self.begin_step, 1))
    t = xp.clip((step - float(self.begin_step)) / length, 0.0, 1.0)
    return xp.where(step >= float(self.end_step), xp.constant(1.0, xp.wide()), t)

  def beta(self, step, xp=TF_MATH):
    """Inverse temperature β at ``step`` (float32 scalar tensor)."""
    t = self._progress(step, xp)
    log_beta = math.log(self.beta_begin) + t * (math.log(self.beta_end) - math.log(self.beta_begin))
    return xp.cast(xp.exp(log_beta), "float32")

  def sparsity(self, step, xp=TF_MATH):
    """Target pruned fraction p at ``step`` (float64 scalar tensor: the wrappers prune
    round(p·n) groups of the Python number you gave, e.g. 4 of 10 at p = 0.35, which float32's
    0.34999999 would make 3)."""
    t = self._progress(step, xp)
    ramp = xp.pow(1.0 - t, self.power)
    return self.target_sparsity + (self.initial_sparsity - self.target_sparsity) * ramp

  CONFIG_KEYS = ("target_sparsity", "beta_begin", "beta_end", "begin_step", "end_step",
                 "initial_sparsity", "power")


@keras.utils.register_keras_serializable(package="tf_gibbs")
class L0Schedule(_StepSchedule):
  """Strength of the L0 penalty over training, and the sparsity budget, as a tfmot schedule.

  Penalty strength (before the budget controller's factor):

    λ(step) = l0_strength · clip((step − begin_step) / ramp_steps, 0, 1)   (0 before begin_step;
              l0_strength from begin_step on when ramp_steps = 0)

  Budget mode (``target_sparsity`` = s, our addition to the L0 method): the sparsity each
  layer must reach follows tfmot's polynomial ramp,
  s(step) = s · (1 − (1 − t)^power), t = clip((step − begin_step)/(¾ (end_step − begin_step)),
  0, 1) — it reaches s three quarters of the way to ``end_step``, so that the gates, which move
  a bounded distance per step, have the last quarter to settle before they freeze — and each
  layer multiplies λ by a factor exp(μ) that a controller adapts at every training step,
  μ ← μ + budget_gain · (s(step) − measured zero fraction) — dual ascent on log λ for the
  constraint "zero fraction ≥ s(step)", with a multiplicative step so that it needs no knowledge
  of the loss scale. The gates are trained until ``end_step``; after it they are frozen and the
  weights fine-tune under the final gates.

  ``__call__(step)`` returns tfmot's ``(should_prune, sparsity)``: step ≥ begin_step, and s(step)
  (0 without a budget).

  Args:
    l0_strength: λ, ≥ 0: weight of the model's expected gated density in the loss (the penalty is
      λ · Σ gated weights that are nonzero / Σ gated weights, so one value suits any model size).
      In budget mode it is the controller's starting point.
    target_sparsity: None, or the budget s in [0, 1).
    begin_step: first step at which the gates act, ≥ 0.
    end_step: step at which the gates freeze, > begin_step.
    ramp_steps: steps over which λ ramps up linearly from 0, ≥ 0.
    power: exponent of the budget ramp, > 0.
    budget_gain: step size of the controller, > 0.
    frequency: budget mode: the set of gates the penalty pushes (the s(step)·n of smallest
      gated magnitude) is re-ranked every ``frequency`` steps, ≥ 1 (like tfmot's mask-update
      ``frequency``). Ranking is the budget's one costly step; a gate needs ~100 steps to
      close, so a set ten steps old changes nothing measurable.
  """

  BUDGET_RAMP = 0.75  # fraction of [begin_step, end_step] over which the budget ramps up

  def __init__(self, l0_strength=1.0, target_sparsity=None, begin_step=0, end_step=10000,
               ramp_steps=0, power=3, budget_gain=0.3, frequency=10):
    self.l0_strength = float(check_number(l0_strength, "l0_strength", 0.0))
    if target_sparsity is not None:
      target_sparsity = float(check_number(target_sparsity, "target_sparsity", 0.0, True, 1.0))
    self.target_sparsity = target_sparsity
    self._set_steps(begin_step, end_step)
    self.ramp_steps = int(check_number(ramp_steps, "ramp_steps", 0, integer=True))
    self.power = float(check_number(power, "power", 0.0, False))
    self.budget_gain = float(check_number(budget_gain, "budget_gain", 0.0, False))
    self.frequency = int(check_number(frequency, "frequency", 1, integer=True))

  @property
  def has_budget(self):
    return self.target_sparsity is not None

  def strength(self, step, xp=TF_MATH):
    """λ(step) before the budget factor (float32 scalar tensor)."""
    step = xp.cast(step, xp.wide())
    active = xp.cast(step >= float(self.begin_step), xp.wide())
    if self.ramp_steps:
      active *= xp.clip((step - float(self.begin_step)) / float(self.ramp_steps), 0.0, 1.0)
    return xp.cast(self.l0_strength * active, "float32")

  def sparsity(self, step, xp=TF_MATH):
    """Budget s(step) (float64 scalar tensor, exactly ``target_sparsity`` once the ramp is
    over; 0 without a budget)."""
    if not self.has_budget:
      return xp.constant(0.0, xp.wide())
    step = xp.cast(step, xp.wide())
    length = max(self.BUDGET_RAMP * (self.end_step - self.begin_step), 1.0)
    t = xp.clip((step - float(self.begin_step)) / length, 0.0, 1.0)
    return self.target_sparsity * (1.0 - xp.pow(1.0 - t, self.power))

  CONFIG_KEYS = ("l0_strength", "target_sparsity", "begin_step", "end_step", "ramp_steps",
                 "power", "budget_gain", "frequency")

  def rerank(self, step, xp=TF_MATH):
    """Bool tensor: the budget's target set is re-ranked at ``step`` (every ``frequency``
    steps from ``begin_step``, and at ``end_step``, where the gates freeze; never after)."""
    step = xp.cast(step, xp.int_type)
    periodic = xp.logical_and(
        xp.logical_and(step >= self.begin_step, step < self.end_step),
        xp.equal((step - self.begin_step) % self.frequency, 0))
    return xp.logical_or(periodic, xp.equal(step, self.end_step))


@keras.utils.register_keras_serializable(package="tf_gibbs")
class AdaptiveSchedule(_StepSchedule):
  """Steps of the adaptive sparsity loss (Retsinas et al.), as a tfmot ``PruningSchedule``.

  From ``begin_step`` the layers compute with hard-thresholded weights and the budget loss
  acts; the thresholds train until ``end_step``, where they freeze (the absolute threshold
  b = r · std(W) of that step is kept) and the weights fine-tune under them. Freezing is our
  addition: it makes the final weight idempotent, so that the epoch-end write makes
  ``tfmot.sparsity.keras.strip_pruning`` exact (the reference code thresholds once, after
  training). ``__call__(step)`` returns ``(step >= begin_step, target_sparsity)``.

  Args:
    target_sparsity: the global budget s in [0, 1): the fraction of zero weights over the layers
      that count toward it (parameter- or FLOP-weighted, see ``prune_adaptive``).
    begin_step: first thresholded step, ≥ 0.
    end_step: step at which the thresholds freeze, > begin_step.
  """

  CONFIG_KEYS = ("target_sparsity", "begin_step", "end_step")

  def __init__(self, target_sparsity=0.9, begin_step=0, end_step=10000):
    self.target_sparsity = float(check_number(target_sparsity, "target_sparsity", 0.0, True, 1.0))
    self._set_steps(begin_step, end_step)

  def sparsity(self, step, xp=TF_MATH):
    del step
    return xp.constant(self.target_sparsity, xp.wide())
