"""Approximately binary gates with exact zeros (L0 / DiffPrune style) in plain TensorFlow.

The transform (methods.md §3). With γ = −0.1, ζ = 1.1 (Louizos et al., "Learning sparse neural
networks through L0 regularization", 2018) and a real gate parameter log α:

  deterministic:  z = clip((ζ − γ) σ(log α) + γ, 0, 1)
  stochastic:     z = clip((ζ − γ) σ((log u − log(1 − u) + log α) / T) + γ, 0, 1),  u ~ U(0, 1)

Both are exactly 0 or exactly 1 on whole intervals of their argument (the "stretch and clip"),
and differentiable in between. The stochastic gate is Louizos' hard-concrete sample; the
deterministic one is its noise-free version, which is how the DiffPrune abstract describes its
gates (a deterministic, differentiable transform of a real variable that takes exact zeros).
DiffPrune's own formula is not available to us (methods.md §3): this is *our* choice, not the
paper's formula.

The L0 surrogate of a gate is P(z > 0) under the stochastic gate,
σ(log α − T log(−γ/ζ)) (Louizos eq. 12); for deterministic gates we use the same smooth
surrogate of the step function 1[z > 0].

Nothing here knows about Keras.
"""

import math

import numpy as np
import tensorflow as tf

from tf_gibbs.core import ranking

GAMMA = -0.1
ZETA = 1.1
TEMPERATURE = 2.0 / 3.0

# z = 0 exactly iff log α ≤ CLOSED_LOG_ALPHA, z = 1 exactly iff log α ≥ OPEN_LOG_ALPHA.
CLOSED_LOG_ALPHA = math.log(-GAMMA / ZETA)          # = −log 11
OPEN_LOG_ALPHA = math.log((1.0 - GAMMA) / (ZETA - 1.0))  # = +log 11

GRANULARITIES = ("weight", "kernel", "filter", "unit", "input_unit")


def _stretch(probability):
  return (ZETA - GAMMA) * probability + GAMMA


def deterministic_gate(log_alpha, straight_through=True):
  """z = clip((ζ − γ) σ(log α) + γ, 0, 1): exact zeros for log α ≤ −log 11, ones for ≥ log 11.

  With ``straight_through=True`` a clipped gate (z = 0 or z = 1) passes the gradient of the
  unclipped stretch, (ζ − γ) σ'(log α) (a straight-through estimator on the clip; our addition).
  Without it a gate that reaches 0 never receives a task gradient again, so sparsity could only
  grow and a budget could not steer it back, and gates at 1 would carry no signal of their
  importance.
  """
  log_alpha = tf.convert_to_tensor(log_alpha)
  if not straight_through:
    return tf.clip_by_value(_stretch(tf.sigmoid(log_alpha)), 0.0, 1.0)

  @tf.custom_gradient
  def gate(x):
    probability = tf.sigmoid(x)

    def grad(upstream):  # d/dx of the unclipped stretch: (ζ − γ) σ(x)(1 − σ(x))
      return tf.raw_ops.SigmoidGrad(y=probability, dy=(ZETA - GAMMA) * upstream)

    return tf.clip_by_value(_stretch(probability), 0.0, 1.0), grad

  return gate(log_alpha)


def gate_noise(shape, seed):
  """The uniforms u of :func:`stochastic_gate`, in [1e-6, 1 − 1e-6] (stateless, for ``seed``).

  Note: XLA's stateless generators give other numbers than the CPU kernels (also with an
  explicit algorithm), so a model compiled with ``jit_compile=True`` draws other gates than
  the same model without it.
  """
  return tf.random.stateless_uniform(shape, seed=seed, minval=1e-6, maxval=1.0 - 1e-6)


def hard_concrete(log_alpha, u, temperature=TEMPERATURE):
  """z = clip((ζ−γ) σ((logit u + log α)/T) + γ, 0, 1) for given uniforms ``u``."""
  noisy = (tf.math.log(u) - tf.math.log1p(-u) + log_alpha) / temperature
  return tf.clip_by_value(_stretch(tf.sigmoid(noisy)), 0.0, 1.0)


def stochastic_gate(log_alpha, seed, temperature=TEMPERATURE):
  """One hard-concrete sample per gate: z = clip((ζ−γ) σ((logit u + log α)/T) + γ, 0, 1).

  ``seed`` is a shape-[2] integer tensor for ``tf.random.stateless_uniform`` (the wrappers use
  (layer seed, step), so every replica draws the same gates). Exact gradients (Louizos).
  """
  log_alpha = tf.convert_to_tensor(log_alpha)
  return hard_concrete(log_alpha, gate_noise(tf.shape(log_alpha), seed), temperature)


def probability_nonzero(log_alpha, temperature=TEMPERATURE):
  """The L0 surrogate σ(log α − T log(−γ/ζ)) = P(z > 0) of the stochastic gate."""
  return tf.sigmoid(log_alpha - temperature * math.log(-GAMMA / ZETA))


def hard_concrete_cdf(value, log_alpha, temperature=TEMPERATURE):
  """P(z ≤ value) of the stochastic gate, for value in [0, 1) (it is 1 at value = 1).

  z ≤ v ⇔ σ((L + log α)/T) ≤ (v − γ)/(ζ − γ) with L logistic, so
  P(z ≤ v) = σ(T logit((v − γ)/(ζ − γ)) − log α). At v = 0 this is P(z = 0).
  """
  value = tf.convert_to_tensor(value, dtype=tf.float64)
  log_alpha = tf.cast(log_alpha, tf.float64)
  q = (value - GAMMA) / (ZETA - GAMMA)
  return tf.sigmoid(temperature * (tf.math.log(q) - tf.math.log1p(-q)) - log_alpha)


_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(64)


def expected_gate(log_alpha, temperature=TEMPERATURE):
  """E[z] of the stochastic gate: ∫₀¹ P(z > v) dv, by 64-point Gauss–Legendre quadrature.

  The integrand 1 − σ(T logit((v−γ)/(ζ−γ)) − log α) is smooth on [0, 1] (γ < 0 < 1 < ζ keep the
  logit finite), so the quadrature error is far below float32 resolution. Float64 result.
  """
  log_alpha = tf.cast(tf.convert_to_tensor(log_alpha), tf.float64)
  nodes = tf.constant(0.5 * (_NODES + 1.0), tf.float64)
  weights = tf.constant(0.5 * _WEIGHTS, tf.float64)
  survival = 1.0 - hard_concrete_cdf(nodes, log_alpha[..., None], temperature)
  return tf.reduce_sum(survival * weights, axis=-1)


def scaled_parameter(parameter, scale):
  """Returns scale · parameter whose gradient reaches ``parameter`` unscaled.

  A gate or threshold stored as θ and used as scale·θ moves ``scale`` times as fast as the
  weights under Adam-like optimizers (which ignore the gradient's size) and under SGD alike
  (the gradient is not multiplied by ``scale`` a second time): a per-variable learning-rate
  multiplier that needs no special optimizer. ``scale``: a number or a tensor broadcastable to
  ``parameter``'s shape (no gradient reaches it).
  """
  parameter = tf.convert_to_tensor(parameter)
  scale = tf.cast(scale, parameter.dtype)

  @tf.custom_gradient
  def scaled(value):
    return scale * value, lambda upstream: upstream

  return scaled(parameter)


def check_granularity(granularity):
  if granularity not in GRANULARITIES:
    raise ValueError(f"Unknown granularity={granularity!r}; accepted values: "
                     f"{list(GRANULARITIES)}.")
  return granularity


def group_shape(view, granularity):
  """Shape of the gate tensor for a kernel in the canonical [n, C, F] view (broadcastable).

  weight → [n, C, F]; kernel → [1, C, F] (one gate per (input channel, filter) kernel);
  filter / unit → [1, 1, F] (output channels / units); input_unit → [1, C, 1] (Dense inputs,
  as in Louizos et al.).
  """
  n, channels, filters = view
  shapes = {
      "weight": (n, channels, filters),
      "kernel": (1, channels, filters),
      "filter": (1, 1, filters),
      "unit": (1, 1, filters),
      "input_unit": (1, channels, 1),
  }
  return shapes[check_granularity(granularity)]


def granularity_misfit(granularity, layout):
  """None if gates of ``granularity`` apply to a layer of ``layout``, else the reason."""
  check_granularity(granularity)
  if granularity == "kernel" and layout != "conv":
    return ("granularity='kernel' gates the (input channel, filter) kernels of Conv1D/Conv2D "
            "layers; use 'unit'/'input_unit' for Dense and 'filter' for DepthwiseConv2D.")
  if granularity == "filter" and layout == "dense":
    return "granularity='filter' gates convolution output channels; use 'unit' for Dense."
  if granularity in ("unit", "input_unit") and layout != "dense":
    return f"granularity={granularity!r} gates Dense units; use 'filter' for convolutions."
  return None


def closed_fraction(gates):
  """Fraction of gates that are exactly 0. Every gate of a layer covers the same number of
  weights, so this is also the fraction of the layer's weights the gates zero."""
  return tf.reduce_mean(tf.cast(tf.equal(gates, 0.0), tf.float32))


def group_importance(weight_view, gates):
  """Σ (w ⊙ z)² over each gate's group: the gated magnitude that closing that gate removes.

  ``weight_view`` is the kernel in the [n, C, F] view, ``gates`` has the group shape
  (:func:`group_shape`); the result has the group shape too. No gradient.
  """
  gated = tf.stop_gradient(weight_view * gates)
  axes = [i for i, size in enumerate(gates.shape) if size == 1 and weight_view.shape[i] != 1]
  squared = tf.square(gated)
  return tf.reduce_sum(squared, axis=axes, keepdims=True) if axes else squared


def budget_fraction(n, sparsity):
  """The fraction of n gates the budget closes: :func:`tf_gibbs.core.ranking.pruned_count`
  (n, s) / n as float32 — round(s·n) / n, capped at (n − 1)/n so that a layer keeps one gate.
  The controller aims at this reachable fraction, not at s itself."""
  return tf.cast(ranking.pruned_count(n, sparsity), tf.float32) / float(n)


def budget_targets(importance, sparsity):
  """1 for the round(s·n) gates of smallest ``importance`` (ties by position), else 0; never
  all n (the largest stays open, :func:`tf_gibbs.core.ranking.pruned_count`).

  Budget mode penalizes only these gates (a *targeted* L0 penalty, our addition): the gates the
  budget asks to close are pushed towards 0 while the others are left to the task loss. With a
  penalty on every gate, raising its strength until the zero fraction reaches s overshoots —
  gates close with a lag of hundreds of steps, every gate is pushed at once, and many close
  together — as we measured on the digits CNN (a 0.5 budget ended at 0.88, 0.9 at 1.0).

  The wrapper ranks by :func:`group_importance` (the gated magnitude Σ (w z)² of each group),
  re-ranked at every step, so the set follows training. Our choice, measured on the digits CNN
  at a 0.99 budget (one seed, the same settings otherwise): ranking by log α instead picks
  gates by position while all log α are still equal at their initial value — random pruning,
  42 % test accuracy against 72 % when ranked by gated magnitude.
  A gate that closes has importance 0 and stays in the set (no churn); the task gradient can
  still reopen it, since the clip passes a straight-through gradient.
  """
  return 1.0 - ranking.exact_count_keep_mask(tf.stop_gradient(importance), sparsity)


def training_step(weight, mask, parameter, targets, log_factor, step, noise, *, schedule, view,
                  scale, temperature, sparsity=None):
  """One training step of a gated kernel, all of it: (training weight, mask, targets, log factor).

  ``schedule`` (an :class:`tf_gibbs.L0Schedule`, used as pure functions of ``step``) gives
  should_prune, the budget s(step), the end step and the re-ranking steps. log α = scale·θ
  (:func:`scaled_parameter`); the kernel, in its ``view``, is multiplied by the gates z
  (deterministic with a straight-through clip when ``noise`` is None, else the hard-concrete
  sample for the uniforms ``noise``, :func:`gate_noise`). ``mask`` (kernel shape) records 1[ẑ > 0] of the deterministic gates ẑ while the
  schedule prunes and is frozen from the end step on (the weight is then kernel ⊙ mask).
  Budget mode: ``targets`` (group shape) is re-ranked (:func:`budget_targets`) on the
  schedule's re-ranking steps; at the end step the targeted gates still open are closed; the
  controller's log factor μ moves by budget_gain · (s(step) − fraction of ẑ that is 0) while the
  schedule prunes. Without a budget ``targets`` and ``log_factor`` pass through. ``sparsity``:
  the layer's budget at this step where it is not the schedule's s(step) (its share of a
  network-wide budget, :func:`tf_gibbs.core.allocation.layer_sparsity`).

  Gradients reach ``weight`` and ``parameter``. Plain ops (the budget's ranking excepted):
  run as one nested XLA cluster per layer it measured no faster on CPU
  (``benchmarks/overhead.py`` mode ``l0@noxla``).
  """
  step = tf.cast(step, tf.int64)
  should_prune, target = schedule(step)
  if sparsity is not None:
    target = sparsity
  finished = step >= schedule.end_step
  log_alpha = scaled_parameter(parameter, scale)
  deterministic = deterministic_gate(log_alpha, straight_through=noise is None)
  gates = deterministic if noise is None else hard_concrete(log_alpha, noise, temperature)
  shape = weight.shape
  weight_view = tf.reshape(weight, view)

  def full(group_tensor):
    return tf.reshape(tf.broadcast_to(group_tensor, view), shape)

  if schedule.has_budget:
    targets = tf.cond(
        schedule.rerank(step),
        lambda: budget_targets(group_importance(weight_view, tf.stop_gradient(deterministic)),
                               target),
        lambda: targets)
    reachable = budget_fraction(math.prod(parameter.shape), target)
    factor = tf.clip_by_value(
        log_factor + schedule.budget_gain * (reachable - closed_fraction(deterministic)),
        -20.0, 20.0)
    log_factor = tf.where(tf.logical_and(should_prune, tf.logical_not(finished)), factor,
                          log_factor)

  # The phase as three scalar 0/1 factors that blend the three possible multipliers (exactly:
  # one factor is 1, the others 0, and every multiplier is finite), instead of conds: on CPU
  # an executed cond and its gradient cost more than a small layer's gating.
  live = tf.logical_and(should_prune, tf.logical_not(finished))
  is_live = tf.cast(live, gates.dtype)
  is_finished = tf.cast(finished, gates.dtype)
  is_off = (1.0 - is_live) * (1.0 - is_finished)
  frozen = mask
  if schedule.has_budget:  # at the end step the targeted gates still open close
    frozen = mask * (1.0 - full(targets) * tf.cast(step == schedule.end_step, mask.dtype))
  multiplier = (is_live * gates + tf.reshape(is_finished * frozen + is_off, view))
  effective = tf.reshape(weight_view * multiplier, shape)
  new_mask = is_live * full(tf.stop_gradient(deterministic)) + is_finished * frozen + is_off
  return effective, new_mask, targets, log_factor


def penalty(parameter, targets, log_factor, step, coefficient, *, schedule, scale, temperature):
  """λ(step) · coefficient · Σ P(z > 0) (the L0 surrogate); 0 from the schedule's end step on.

  Budget mode: only the still-open gates among ``targets`` count, and the gradient (not the
  value) is multiplied by the controller's exp(``log_factor``). One layer's
  :func:`group_penalty`.
  """
  return group_penalty([parameter], [targets], [log_factor], step, [coefficient],
                       schedule=schedule, scale=scale, temperature=temperature)


def group_penalty(parameters, targets, log_factors, step, coefficients, *, schedule, scale,
                  temperature):
  """Σ_l λ(step) · c_l · Σ_{gates of l} P(z > 0): the :func:`penalty` of several layers that
  share one schedule, in one computation (the schedule's scalars once, the per-layer factors
  as vectors) instead of a dozen scalar ops per layer.

  Args:
    parameters: each layer's θ (log α = ``scale`` · θ, :func:`scaled_parameter`).
    targets: each layer's budget targets (group shape; ignored without a budget).
    log_factors: each layer's controller log factor μ_l (scalars; ignored without a budget):
      layer l's gradient is multiplied by exp(μ_l), its value is not (an e^20 Lagrangian term
      would drown the task loss in the logs).
    step: the training step (scalar); the penalty is 0 from ``schedule.end_step`` on.
    coefficients: c_l, the layer's weights per gate over the group's normalizer (numbers or
      scalars).
  """
  step = tf.cast(step, tf.int64)
  sums = []
  for parameter, target in zip(parameters, targets):
    log_alpha = scaled_parameter(parameter, scale)
    nonzero = probability_nonzero(log_alpha, temperature)
    if schedule.has_budget:
      # z > 0 exactly where the unclipped stretch is > 0 (the same float32 ops as the gate).
      open_gates = tf.cast(_stretch(tf.sigmoid(tf.stop_gradient(log_alpha))) > 0.0, tf.float32)
      nonzero *= open_gates * target
    sums.append(tf.reduce_sum(nonzero))
  terms = tf.stack(sums) * tf.cast(tf.stack(coefficients), tf.float32)
  if schedule.has_budget:
    factors = tf.exp(tf.cast(tf.stack(log_factors), tf.float32)) - 1.0
    terms += factors * (terms - tf.stop_gradient(terms))
  value = schedule.strength(step) * tf.reduce_sum(terms)
  return tf.where(step >= schedule.end_step, tf.zeros_like(value), value)
